"""Hyperparameter search: the search YAML (space) and Ray Tune over Ray Train runs (driver)."""

from bertclf.tuning.driver import TuneResult, run
from bertclf.tuning.space import SearchSpec

__all__ = ["SearchSpec", "TuneResult", "run"]
