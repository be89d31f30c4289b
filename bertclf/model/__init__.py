"""The model layer: the encoder and its head (modeling, adapters), the checkpoint format (checkpoint), the packaged
default models (packaged), and inference on them (inference, compiled, precision, calibration)."""
