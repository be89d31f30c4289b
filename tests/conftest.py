"""Shared fixtures: a tiny random BERT, a real S3 server (moto) and a real local Ray, all on 127.0.0.1. What they
build and start comes from bertclf.dev, which tests and benchmarks share; tests import helpers from there."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

from bertclf.dev.ports import free_port, wait_for_port
from bertclf.dev.servers import s3_env, start_moto
from bertclf.dev.tiny_model import build_tiny_bert

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")  # a deadlock fails in 5 min, not 30
# compiled graphs of the tests' random models go to a cache of this session, not the user's (Ray workers inherit it)
os.environ.setdefault("BERTCLF_COMPILE_CACHE", tempfile.mkdtemp(prefix="bertclf-compiled-"))

TESTS = Path(__file__).resolve().parent  # on the Ray workers' PYTHONPATH: faults.py


@pytest.fixture(autouse=True)
def _process_settings_restored():
    """`bertclf.cli.main` exports --log-level and --progress-seconds to the environment and configures logging for
    the process (as a CLI should); in-process CLI tests must not hand either to the tests after them."""
    import logging

    names = ("BERTCLF_LOG_LEVEL", "BERTCLF_PROGRESS_SECONDS")
    saved_env = {n: os.environ.get(n) for n in names}
    root, ours = logging.getLogger(), logging.getLogger("bertclf")
    saved_logging = (root.level, list(root.handlers), ours.level)
    yield
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    root.setLevel(saved_logging[0])
    root.handlers[:] = saved_logging[1]
    ours.setLevel(saved_logging[2])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1, configured through the standard AWS variables."""
    port = free_port()
    proc = start_moto(port, Path(os.environ.get("TMPDIR", "/tmp")) / f"moto-{port}.log")
    if not wait_for_port(port, 30, proc):
        proc.kill()
        raise RuntimeError("moto server did not start")
    endpoint = f"http://127.0.0.1:{port}"
    env = s3_env(endpoint)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh bucket for one test."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def ray_local(s3_server, tmp_path_factory):
    """A real local Ray (2 CPUs, like this machine) whose workers get the S3 settings and the fault hooks.

    Faults are injected from the test side (tests/faults.py, installed in every worker process by
    runtime_env's worker_process_setup_hook); the yielded directory holds their control files.
    """
    import faults
    import ray

    from bertclf.resources import connect

    control = tmp_path_factory.mktemp("faults")
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                                      "HF_HUB_OFFLINE")}
    env |= {faults.KILL_WORKER: str(control / "kill_worker"), faults.FAIL_UNIT: str(control / "fail_unit"),
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": env, "worker_process_setup_hook": "faults.install"})
    connect()
    yield control
    ray.shutdown()


INTEGRATION_FIXTURES = {"ray_local", "s3_server", "bucket"}


def pytest_collection_modifyitems(config, items):
    """Tests that use a real Ray or S3 server (through a fixture, or marked by their module) are `integration`;
    the rest are unit tests: `pytest -m "not integration"` is the fast loop."""
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
