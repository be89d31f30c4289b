"""The training pipeline: driver (validate, plan, fit, publish), worker loop, epoch records, data, batching.

`__all__` is its public API: what jobs, benchmarks and users may import (from here, not from the submodules)."""

from bertclf.training.batching import Batch, length_grouped_batches
from bertclf.training.data import encode_batch, inspect_training_data
from bertclf.training.driver import TrainResult, run
from bertclf.training.memory import ModelShape, node_share, plan_memory
from bertclf.training.worker import accumulate_gradients

__all__ = ["Batch", "ModelShape", "TrainResult", "accumulate_gradients", "encode_batch", "inspect_training_data",
           "length_grouped_batches", "node_share", "plan_memory", "run"]
