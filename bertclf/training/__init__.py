"""The training pipeline: driver (validate, plan, fit, publish), worker loop, one step, epoch records, data, batching.

`__all__` is its public API: what jobs and users may import (from here, not from the submodules). A benchmark that
times one piece (the memory planner, a worker's plan) imports that submodule's declared interface (its `__all__`).

The names are imported on first use (PEP 562): Ray Data's read and map tasks run functions of
`bertclf.training.data` in fresh worker processes, and importing the package whole there (torch, transformers,
scikit-learn, Ray Train) took ~3.6 s of each task's start on 2 cores, before the first batch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bertclf.training.batching import Batch, length_grouped_batches
    from bertclf.training.data import encode_batch, inspect_training_data
    from bertclf.training.driver import TrainResult, run
    from bertclf.training.step import StepContext, accumulate_gradients

_WHERE = {"Batch": "batching", "length_grouped_batches": "batching", "encode_batch": "data",
          "inspect_training_data": "data", "TrainResult": "driver", "run": "driver", "StepContext": "step",
          "accumulate_gradients": "step"}

__all__ = ["Batch", "StepContext", "TrainResult", "accumulate_gradients", "encode_batch", "inspect_training_data",
           "length_grouped_batches", "run"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
