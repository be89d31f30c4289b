"""Development helpers shared by tests and benchmarks, never imported by the library itself.

One job per module: synthetic labelled rows (synthetic), tiny random models and checkpoints (tiny_model,
tiny_architectures), a scoring output read back (scores), free ports (ports), and the S3 (moto) and MLflow servers
the tests talk to (servers). Their dev-only dependencies run as subprocesses: importing bertclf.dev needs neither
moto nor mlflow. tests/test_layers.py checks that no other bertclf module imports this package.
"""
