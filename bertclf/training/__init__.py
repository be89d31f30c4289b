"""The training pipeline: driver (validate, plan, fit, publish), worker loop, epoch records, data, batching."""

from bertclf.training.driver import TrainResult, run

__all__ = ["TrainResult", "run"]
