"""The training pipeline: driver (validate, plan, fit, publish), worker loop, one step, epoch records, data, batching.

`__all__` is its public API: what jobs and users may import (from here, not from the submodules). A benchmark that
times one piece (the memory planner, a worker's plan) imports that submodule's declared interface (its `__all__`)."""

from bertclf.training.batching import Batch, length_grouped_batches
from bertclf.training.data import encode_batch, inspect_training_data
from bertclf.training.driver import TrainResult, run
from bertclf.training.step import StepContext, accumulate_gradients

__all__ = ["Batch", "StepContext", "TrainResult", "accumulate_gradients", "encode_batch", "inspect_training_data",
           "length_grouped_batches", "run"]
