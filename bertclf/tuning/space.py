"""The search YAML of `bertclf tune`: which training keys to vary and how, the budget, and the scheduler.

    metric: f1_macro          # default: the base config's best_metric (and best_mode)
    num_samples: 8            # trials
    time_budget_s: 7200       # optional: stop every trial after this long
    scheduler: asha           # asha (stop weak trials early) or fifo
    space:
      learning_rate: {loguniform: [3.0e-5, 3.0e-4]}
      method: {choice: [full, lora]}
      batch_size: {grid: [16, 32]}       # every value, num_samples times each
      epochs: {choice: [3, 4]}
      warmup_ratio: {uniform: [0.0, 0.1]}
      lora_rank: {randint: [4, 16]}      # both ends included
      max_length: 64                     # a plain value: fixed for every trial

Everything is checked before any trial starts: unknown keys, empty ranges, values a training config refuses.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from bertclf.config import TrainConfig, coerce, key
from bertclf.errors import ConfigError

# Keys that say where data and results live or which resources a trial gets: set them in the base config.
NOT_SEARCHABLE = {"train", "validation", "output", "ray_address", "num_workers", "cpus_per_worker", "use_gpu",
                  "best_metric", "best_mode", "max_failures", "checkpoint_every", "tracking", "tracking_uri",
                  "experiment", "run_name"}
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")


@dataclass
class SearchSpec:
    """What `bertclf tune --search FILE` reads."""

    space: dict[str, Any] = key(factory=dict, help="training key -> {choice|grid|uniform|loguniform|randint: ...} "
                                                   "or a fixed value")
    metric: str | None = key(None, help="validation metric to optimize; none: the base config's best_metric")
    mode: Literal["max", "min"] | None = key(None, help="none: the base config's best_mode")
    num_samples: int = key(8, help="trials to run (with grid keys: repeats of the whole grid)")
    time_budget_s: float | None = key(None, help="stop the search after this many seconds")
    max_concurrent_trials: int | None = key(None, help="none: as many as fit the cluster (each gets a share)")
    scheduler: Literal["asha", "fifo"] = key("asha", help="asha: stop trials that trail the others early")
    grace_period: int = key(1, help="asha: epochs every trial runs before it may be stopped")
    reduction_factor: int = key(3, help="asha: about 1 in this many trials goes on at each rung")
    seed: int | None = key(0, help="seed of the random search (none: different trials each run)")

    def validate(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1 (the trial budget), got {self.num_samples}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError(f"max_concurrent_trials must be >= 1, got {self.max_concurrent_trials}")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ConfigError("grace_period must be >= 1 and reduction_factor >= 2")
        if not self.space:
            raise ConfigError("the search space is empty: give at least one training key under `space:`")


def check_space(spec: SearchSpec, base: TrainConfig) -> None:
    """Every key a training key that may vary, every range non-empty, every value one training accepts."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    for name, value in spec.space.items():
        if name not in fields:
            raise ConfigError(f"search space key {name!r} is not a training config key; known keys: "
                              f"{', '.join(sorted(fields - NOT_SEARCHABLE))}")
        if name in NOT_SEARCHABLE:
            raise ConfigError(f"search space key {name!r} can't be searched: set it in the base config")
        for candidate in _candidates(name, value):
            try:
                dataclasses.replace(base, **{name: coerce(name, candidate, hints[name])}).validate()
            except ConfigError as exc:
                raise ConfigError(f"search space key {name!r}: {exc}") from None
    if spec.scheduler == "asha" and spec.grace_period > max_epochs(spec, base):
        raise ConfigError(f"grace_period {spec.grace_period} is longer than every trial "
                          f"({spec.space.get('epochs', base.epochs)} epochs)")


def trial_count(spec: SearchSpec) -> int:
    """Trials the search runs: num_samples, times every grid key's number of values (Ray Tune's grid_search)."""
    count = spec.num_samples
    for value in spec.space.values():
        if isinstance(value, dict) and "grid" in value:
            count *= len(value["grid"])
    return count


def max_epochs(spec: SearchSpec, base: TrainConfig) -> int:
    """The longest a trial can train: the largest epochs the space allows (ASHA's max_t)."""
    return max(int(e) for e in _candidates("epochs", spec.space.get("epochs", base.epochs)))


def _candidates(name: str, value: Any) -> list[Any]:
    """The values a distribution can take, for checking: every choice, or both ends of a range."""
    if not isinstance(value, dict):
        return [value]
    if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise ConfigError(f"search space key {name!r}: give one of {', '.join(DISTRIBUTIONS)} (e.g. "
                          f"{{choice: [a, b]}}), got {value!r}")
    kind, args = next(iter(value.items()))
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"search space key {name!r}: {kind} needs a non-empty list, got {args!r}")
        return list(args)
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, int | float) for a in args)):
        raise ConfigError(f"search space key {name!r}: {kind} needs [low, high], got {args!r}")
    low, high = args
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"search space key {name!r}: randint needs whole numbers, got {args!r}")
    if low > high or (kind != "randint" and low == high):
        raise ConfigError(f"search space key {name!r}: the range [{low}, {high}] is empty")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"search space key {name!r}: loguniform needs low > 0, got {low}")
    return [low, high]


def param_space(spec: SearchSpec) -> dict[str, Any]:
    """The space as Ray Tune domains."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, value in spec.space.items():
        if not isinstance(value, dict):
            out[name] = value
            continue
        kind, args = next(iter(value.items()))
        out[name] = {"choice": lambda a: tune.choice(a), "grid": lambda a: tune.grid_search(a),
                     "uniform": lambda a: tune.uniform(*a),
                     "loguniform": lambda a: tune.loguniform(*a),
                     "randint": lambda a: tune.randint(a[0], a[1] + 1)}[kind](args)
    return out


def trial_config(base: TrainConfig, values: dict[str, Any], output: str) -> TrainConfig:
    """The training config of one trial: the base with the trial's values, writing to its own directory."""
    hints = typing.get_type_hints(TrainConfig)
    return dataclasses.replace(base, output=output,
                               **{k: coerce(k, v, hints[k]) for k, v in values.items() if k in hints})
