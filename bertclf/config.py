"""Typed job configs: defaults that run offline, a YAML file, then command-line overrides, validated once."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"


class ConfigError(ValueError):
    """A config key or value that can't be used; the message names it."""


def sample_data(name: str) -> str:
    """Path of a Parquet sample shipped inside the package (a slice of GoEmotions, Apache-2.0)."""
    return str(resources.files("bertclf") / "sample_data" / name)


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults train the packaged model on the shipped sample."""

    train: str | list[str] = field(default_factory=lambda: sample_data("goemotions_train.parquet"))
    validation: str | list[str] | None = field(default_factory=lambda: sample_data("goemotions_validation.parquet"))
    output: str = "runs/demo"
    model: str = PACKAGED_MODEL
    task: str = "auto"  # auto | multi_label | multi_class
    text_column: str = "text"
    label_column: str | None = None  # None: "labels" (list) if present, else "label"
    label_columns: list[str] = field(default_factory=list)  # wide 0/1 columns (multi-label)
    validation_fraction: float = 0.1  # used only without a validation path
    epochs: int = 3
    num_workers: int = 2
    batch_size: int = 32  # per worker
    learning_rate: float = 5e-5
    head_learning_rate: float | None = None  # classifier + pooler; None: 20 x learning_rate
    reinit_pooler: str = "auto"  # auto: re-initialize for sentence-transformers models, whose pooler is untrained
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 42
    precision: str = "auto"  # auto | bf16 | fp32
    checkpoint_every: int = 1  # epochs between periodic checkpoints
    best_metric: str = "f1_macro"
    best_mode: str = "max"
    max_failures: int = 1
    cpus_per_worker: float | None = None  # None: planned from the cluster
    use_gpu: str = "auto"  # auto | true | false
    shuffle_buffer_rows: int = 10_000
    length_group_batches: int = 16  # batches per length-sorted pool (bertclf.batching); 1 = random batches
    ray_address: str | None = None

    def validate(self) -> None:
        _choice("task", self.task, ("auto", "multi_label", "multi_class"))
        _choice("precision", self.precision, ("auto", "bf16", "fp32"))
        _choice("use_gpu", str(self.use_gpu).lower(), ("auto", "true", "false"))
        _choice("reinit_pooler", str(self.reinit_pooler).lower(), ("auto", "true", "false"))
        _choice("best_mode", self.best_mode, ("max", "min"))
        for name in ("epochs", "num_workers", "batch_size", "max_length", "checkpoint_every", "length_group_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be between 0 and 1, got {self.validation_fraction}")
        if self.max_failures < 0:
            raise ConfigError(f"max_failures must be >= 0, got {self.max_failures}")


@dataclass
class ScoreConfig:
    """Everything a scoring run needs: checkpoint, corpus, output and how to treat empty texts."""

    checkpoint: str = "runs/demo/best"
    input: str | list[str] = field(default_factory=lambda: sample_data("goemotions_validation.parquet"))
    output: str = "runs/demo/scores"
    date: str | None = None  # fills {date} in URIs; default yesterday (UTC)
    text_column: str = "text"
    id_column: str | None = "id"
    passthrough_columns: list[str] = field(default_factory=list)
    empty_text: str = "score"  # score | skip | error: what to do with null or empty texts
    overwrite: bool = False
    num_actors: int | None = None  # None: planned from the cluster
    cpus_per_actor: float | None = None
    precision: str = "auto"  # auto | bf16 | fp32
    max_tokens_per_batch: int = 2048  # measured fastest on CPU (cache-sized batches); raise it for GPUs
    max_batch_rows: int = 64
    rows_per_unit: int = 20_000  # rows per unit of work (and per output part)
    read_batch_rows: int = 2048
    ray_address: str | None = None

    def validate(self) -> None:
        _choice("empty_text", self.empty_text, ("score", "skip", "error"))
        _choice("precision", self.precision, ("auto", "bf16", "fp32"))
        for name in ("max_tokens_per_batch", "max_batch_rows", "rows_per_unit", "read_batch_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults, then the YAML file, then overrides (None values are skipped); unknown keys are errors."""
    values: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown config key(s){where}: {', '.join(unknown)}; known keys: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    config = cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
    config.validate()
    return config


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn YAML/CLI values into the field's type, so `--set epochs=3` and `epochs: 3` mean the same."""
    is_union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    options = typing.get_args(hint) if is_union else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "false", "0", "no"):
                return str(value).lower() in ("true", "1", "yes")
        elif option in (int, float):
            if isinstance(value, bool):
                continue
            try:
                return option(value)
            except (TypeError, ValueError):
                continue
        elif typing.get_origin(option) is list:
            if isinstance(value, list):
                return [str(v) for v in value]
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
        elif option is str:
            if isinstance(value, str):
                return value
            if not isinstance(value, list | dict):
                return str(value)
    raise ConfigError(f"config key {name!r}: {value!r} is not a valid {hint}")


def parse_set_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings from --set, with YAML typing of the value."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
