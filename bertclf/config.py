"""Typed job configs: defaults that run offline, a YAML file, then command-line overrides, validated once.

Each key is declared once, as a dataclass field whose metadata holds its help text; the CLI builds its flags
from these fields (bertclf.cli), YAML files and `--set key=value` reach the same fields.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from bertclf.errors import ConfigError

C = TypeVar("C")

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"
# opt-in base-size model, assembled once from five PyPI packages (bertclf.model.packaged)
PACKAGED_MPNET_MODEL = "packaged:all-mpnet-base-v2"

Task = Literal["auto", "multi_label", "multi_class"]
Precision = Literal["auto", "bf16", "fp32", "int8"]  # int8: CPU inference only (bertclf.model.precision)
CompileSetting = Literal["auto", "on", "off"]
TokenizeStage = Literal["auto", "fused", "separate"]
Method = Literal["full", "lora", "prefix"]
EmptyTextPolicy = Literal["score", "skip", "error"]
LongText = Literal["auto", "truncate", "chunk"]
LongTextOverride = Literal["checkpoint", "truncate", "chunk"]  # at inference: the checkpoint's, or another
Tracking = Literal["none", "mlflow"]
BlendMode = Literal["auto", "on", "off"]
TrainWindows = Literal["first", "sample"]
ReuseMode = Literal["none", "previous"]

__all__ = ["ConfigError", "EvaluateConfig", "PACKAGED_MODEL", "PACKAGED_MPNET_MODEL", "ReportConfig", "ScoreConfig",
           "ServeConfig", "TrainConfig", "load_config", "parse_set_overrides"]


def sample_data(name: str) -> str:
    """Path of a Parquet sample shipped inside the package (a slice of GoEmotions, Apache-2.0)."""
    return str(resources.files("bertclf") / "sample_data" / name)


def key(default: Any = dataclasses.MISSING, *, help: str, factory: Any = dataclasses.MISSING,
        flag: bool = True) -> Any:
    """A config field with its help text; flag=False keeps it off the command line (YAML and --set only)."""
    metadata = {"help": help, "flag": flag}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults train the packaged model on the shipped sample."""

    train: str | list[str] = key(factory=lambda: sample_data("goemotions_train.parquet"),
                                 help="training Parquet: file(s), directory or glob; local or s3://")
    validation: str | list[str] | None = key(factory=lambda: sample_data("goemotions_validation.parquet"),
                                             help="validation Parquet; none: a hash split of --train")
    output: str = key("runs/demo", help="run directory (local or s3://); the best checkpoint lands in <output>/best/")
    model: str = key(PACKAGED_MODEL, help="model directory, s3:// directory or hub id")
    task: Task = key("auto", help="task type; auto: from the label column")
    text_column: str = key("text", help="column holding the text")
    label_column: str | None = key(None, help='label column; default: "labels" (list) if present, else "label"')
    label_columns: list[str] = key(factory=list, help="comma-separated wide 0/1 label columns (multi-label)")
    class_prior: Literal["validation", "train"] = key(
        "validation", help="multi-class: validation: correct the predictions for the validation data's label mix "
                           "where it differs from the training data's (e.g. balanced training data); train: as trained")
    positive_weight: Literal["none", "sqrt_inverse"] = key(
        "sqrt_inverse", help="multi-label: weight each label's positive rows in the loss; sqrt_inverse: "
                     "sqrt(negatives / positives) in the training data, clipped to [1, 30], so rare labels are "
                     "learned instead of always predicted absent (probabilities then lean high: thresholds are tuned "
                     "on validation); none: plain BCE, calibrated probabilities")
    validation_fraction: float = key(0.1, help="share of rows held out when no validation data is given",
                                     flag=False)
    method: Method = key("full", help="full: every weight trains; lora: low-rank adapters (merged into the weights "
                                      "when published); prefix: prefix-tuning (the checkpoint keeps an adapter)")
    lora_rank: int = key(8, help="LoRA rank r")
    lora_alpha: float = key(16.0, help="LoRA scaling alpha (the update is scaled by alpha / r)")
    lora_dropout: float = key(0.1, help="dropout on the LoRA input", flag=False)
    lora_target_modules: list[str] = key(factory=lambda: ["query", "value"],
                                         help="comma-separated names of the linear layers LoRA adapts")
    prefix_length: int = key(20, help="prefix-tuning: virtual tokens prepended to every layer's keys and values")
    adapter_learning_rate: float | None = key(None, help="LoRA / prefix weights' learning rate; none: 1e-3 "
                                                         "for lora, 1e-2 for prefix")
    epochs: int = key(3, help="training epochs")
    num_workers: int = key(2, help="Ray Train workers (GPUs on GPU clusters)")
    batch_size: int = key(32, help="rows per batch, per worker")
    learning_rate: float = key(1e-4, help="encoder learning rate (1e-4 suits the packaged 6-layer model)")
    head_learning_rate: float | None = key(None, help="classifier + pooler learning rate; none: 20 x learning_rate")
    reinit_pooler: bool | None = key(None, help="re-initialize the pooler; auto: for sentence-transformers models, "
                                                "whose pooler was never trained")
    weight_decay: float = key(0.01, help="AdamW weight decay (not on biases and LayerNorm)", flag=False)
    warmup_ratio: float = key(0.1, help="share of steps with linear warmup")
    max_grad_norm: float = key(1.0, help="gradient clipping norm", flag=False)
    max_length: int | Literal["auto"] = key(
        "auto", help="tokens per text, longer texts are truncated; auto: what 99 percent of the training texts need "
                     "(a sample of them), rounded up to 16, at most what the model takes")
    max_tokens_per_batch: int | Literal["auto"] = key(
        "auto", help="padded tokens in one training micro-batch; gradients accumulate over micro-batches so each "
                     "step still sees batch_size rows; auto: planned from the model and the worker's memory share")
    worker_memory_gb: float | None = key(None, help="memory share of one train worker in GiB; none: the node's "
                                                    "memory less a reserve for Ray, split between its workers",
                                         flag=False)
    long_text: LongText = key(
        "auto", help="texts longer than max_length: truncate, or chunk (score every window of max_length tokens, "
                     "overlapping by chunk_stride, and pool them per text); auto: chunk multi-label texts when over "
                     "5 percent of the sampled training texts are longer than max_length, else truncate")
    chunk_stride: int = key(64, help="tokens two neighbouring windows share under long_text chunk", flag=False)
    train_windows: TrainWindows = key(
        "first", help="which max_length window of a longer text trains: first (its start), or sample (one window "
                      "drawn per text and epoch, so every part of long texts is learned at the cost of one window)")
    blend: BlendMode = key(
        "auto", help="mix a TF-IDF + logistic-regression baseline (fitted on the same split, always reported beside "
                     "the transformer) into the checkpoint's probabilities, with the weight chosen on validation; "
                     "auto: only where the blend beats the transformer alone by blend_margin on validation")
    blend_margin: float = key(0.005, help="blend auto: the validation gain (in best_metric, or macro-F1) a blend "
                                          "must bring over the transformer alone", flag=False)
    baseline_max_rows: int = key(200_000, help="training rows the baseline is fitted on (a seeded sample beyond "
                                               "that)", flag=False)
    baseline_max_features: int = key(200_000, help="TF-IDF terms the baseline keeps (the most frequent)",
                                     flag=False)
    seed: int = key(42, help="random seed")
    precision: Precision = key("auto", help="auto: bf16 autocast on GPUs that support it and native-bf16 CPUs")
    checkpoint_every: int = key(1, help="epochs between periodic checkpoints")
    best_metric: str = key("f1_macro", help="validation metric that picks the best checkpoint")
    best_mode: Literal["max", "min"] = key("max", help="whether best_metric is better high or low")
    max_failures: int = key(1, help="worker failures to recover from (resume from the latest checkpoint)")
    cpus_per_worker: float | None = key(None, help="CPUs per train worker; none: planned from the cluster")
    use_gpu: bool | None = key(None, help="train on GPUs; auto: when the cluster has them")
    shuffle_buffer_rows: int = key(10_000, help="rows in each worker's local shuffle buffer", flag=False)
    length_group_batches: int = key(16, help="batches per length-sorted pool (1: random batches)", flag=False)
    ray_address: str | None = key(None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    tracking: Tracking = key("none", help="experiment tracking: mlflow logs the config, data fingerprint, every "
                                          "epoch's metrics and the best checkpoint to an MLflow run (needs "
                                          "bertclf[tracking]); an unreachable server fails the run before training")
    tracking_uri: str | None = key(None, help="MLflow tracking URI (e.g. http://mlflow:5000); none: "
                                              "MLFLOW_TRACKING_URI, else MLflow's default")
    experiment: str = key("bertclf", help="MLflow experiment (created when missing)")
    run_name: str | None = key(None, help="MLflow run name; none: the output directory's name (tune: the parent "
                                          "run's; trials are named by trial id)")

    def validate(self) -> None:
        _check_choices(self)
        _at_least_one(self, "epochs", "num_workers", "batch_size", "checkpoint_every",
                      "length_group_batches", "lora_rank", "prefix_length")
        if self.max_length != "auto":
            _at_least_one(self, "max_length")
        if self.max_tokens_per_batch != "auto":
            _at_least_one(self, "max_tokens_per_batch")
        if self.worker_memory_gb is not None and self.worker_memory_gb <= 0:
            raise ConfigError(f"worker_memory_gb must be > 0, got {self.worker_memory_gb}")
        if self.chunk_stride < 0:
            raise ConfigError(f"chunk_stride must be >= 0, got {self.chunk_stride}")
        if self.train_windows == "sample" and self.long_text == "truncate":
            raise ConfigError("train_windows sample trains on every window of long texts, so validation and scoring "
                              "must pool them: set long_text chunk (or auto), or train_windows first")
        if self.blend_margin < 0:
            raise ConfigError(f"blend_margin must be >= 0, got {self.blend_margin}")
        _at_least_one(self, "baseline_max_rows", "baseline_max_features")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.method == "lora" and not self.lora_target_modules:
            raise ConfigError("lora_target_modules is empty: name the linear layers LoRA adapts (e.g. query,value)")
        for name in ("learning_rate", "head_learning_rate", "adapter_learning_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be between 0 and 1, got {self.validation_fraction}")
        if self.max_failures < 0:
            raise ConfigError(f"max_failures must be >= 0, got {self.max_failures}")


@dataclass(frozen=True)
class TableName:
    """An Iceberg table as CATALOG.NAMESPACE.TABLE: the catalog pyiceberg loads by name, then the table in it."""

    catalog: str
    namespace: str
    table: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        parts = text.split(".")
        if len(parts) != 3 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
            raise ConfigError(f"output_table {text!r} is not CATALOG.NAMESPACE.TABLE (three names of letters, digits "
                              "and _, e.g. local.nightly.scores)")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.catalog}.{self.namespace}.{self.table}"


@dataclass
class ScoreConfig:
    """Everything a scoring run needs: checkpoint, corpus, output and how to treat empty texts."""

    checkpoint: str = key("runs/demo/best", help="checkpoint URI (e.g. <train output>/best)")
    input: str | list[str] = key(factory=lambda: sample_data("goemotions_validation.parquet"),
                                 help="Parquet file(s), directory or glob; {date} is filled in")
    output: str = key("runs/demo/scores", help="output URI for scores; {date} is filled in")
    date: str | None = key(None, help="date for {date} placeholders, YYYY-MM-DD (default: yesterday, UTC)")
    text_column: str = key("text", help="column holding the text")
    id_column: str | None = key("id", help="id column copied to the output")
    passthrough_columns: list[str] = key(factory=list, help="comma-separated extra columns copied to the output")
    empty_text: EmptyTextPolicy = key("score", help="null or empty texts: score (as ''), skip, or error")
    long_text: LongTextOverride = key(
        "checkpoint", help="texts longer than the checkpoint's max_length: as the checkpoint says, or truncate / "
                           "chunk instead (e.g. to compare the two on labelled data)")
    overwrite: bool = key(False, help="delete what the output holds (complete or partial) and score every unit "
                                          "again; needed to re-score with another checkpoint or other settings")
    num_actors: int | None = key(None, help="scoring actors; none: planned from the cluster")
    cpus_per_actor: float | None = key(None, help="CPUs per scoring actor; none: 1 on CPU clusters")
    precision: Precision = key("auto", help="auto: bf16 autocast on GPUs that support it and native-bf16 CPUs, "
                                            "int8 on AVX2 CPUs where the checkpoint's recorded gate passed it "
                                            "(bertclf.model.calibration); int8: CPU only")
    compile: CompileSetting = key("auto", help="run the model as a graph compiled once per checkpoint and node "
                                               "(AOTInductor, cached); auto: on CPUs for models of 5M+ parameters")
    tokenize_stage: TokenizeStage = key("auto", help="where texts are tokenized: fused (in each scoring actor), "
                                                     "separate (CPU actors feeding token ids); auto: separate on "
                                                     "GPU clusters, fused on CPU-only ones", flag=False)
    max_tokens_per_batch: int | None = key(None, help="token budget of one micro-batch; none: 2048 on CPU, 65536 on "
                                                      "GPU", flag=False)
    max_batch_rows: int | None = key(None, help="rows in one micro-batch at most; none: 64 on CPU, 1024 on GPU",
                                     flag=False)
    rows_per_unit: int = key(20_000, help="rows per unit of work (and per output part)", flag=False)
    units_by_text: Literal["auto", "off"] = key(
        "auto", help="auto: where rows hold long texts (1,000 text bytes per row or more), cut units by their text "
                     "bytes too, slicing row groups, so long documents spread over every actor; off: whole row "
                     "groups by rows only", flag=False)
    read_batch_rows: int = key(2048, help="rows read from Parquet at a time", flag=False)
    drift_psi_threshold: float = key(0.2, help="alert when a label's probability PSI against the previous "
                                               "partition exceeds this")
    drift_share_threshold: float = key(0.1, help="alert when a label's predicted share moves by more than this "
                                                 "(0.1 = 10 percentage points) against the previous partition")
    drift_fails_job: bool = key(False, help="exit with code 3 after committing the scores when drift is alerted")
    allow_empty: bool = key(False, help="commit an input with 0 rows (default: exit 2, an empty nightly partition "
                                        "is usually an upstream failure)")
    reuse: ReuseMode = key("previous", help="previous: copy the probabilities of texts an earlier committed output "
                                            "scored with the same checkpoint and settings (reuse_from, else the "
                                            "nearest earlier {date} partition of --output) instead of running them "
                                            "again; none: score every text (docs/reuse.md)")
    reuse_from: str | None = key(None, help="the scoring output to reuse (default: the nearest earlier {date} "
                                            "partition of --output, at most reuse_lookback_days back)")
    reuse_lookback_days: int = key(7, help="days back to look for a committed partition to reuse", flag=False)
    reuse_index_max_mb: int = key(2048, help="the most of the previous output's index one shard actor holds; a bigger "
                                             "index is spread over more shard actors (docs/reuse.md)", flag=False)
    dedupe: bool = key(True, help="score each distinct text of a unit once and copy its probabilities to the unit's "
                                  "other rows holding the same text", flag=False)
    ray_address: str | None = key(None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    output_table: str | None = key(None, help="also commit the night as the date partition of this Apache Iceberg "
                                              "table, CATALOG.NAMESPACE.TABLE (pip install bertclf[iceberg]; "
                                              "docs/table.md)")
    table_warehouse: str = key("runs/warehouse", help="where the embedded catalog (used when CATALOG is not "
                                                      "configured in ~/.pyiceberg.yaml or PYICEBERG_CATALOG__*) "
                                                      "keeps tables: a local path or s3:// prefix", flag=False)

    def validate(self) -> None:
        _check_choices(self)
        _at_least_one(self, "rows_per_unit", "read_batch_rows", "reuse_lookback_days", "reuse_index_max_mb")
        if self.output_table is not None:
            TableName.parse(self.output_table)
        if self.reuse_from and self.reuse == "none":
            raise ConfigError(f"reuse_from {self.reuse_from!r} is set but reuse is none: set reuse: previous to reuse "
                              "it, or drop reuse_from")
        _at_least_one(self, *(n for n in ("max_tokens_per_batch", "max_batch_rows") if getattr(self, n) is not None))
        for name in ("drift_psi_threshold", "drift_share_threshold"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass
class LabelledDataConfig:
    """A checkpoint and labelled Parquet to measure it on, scored through the scoring pipeline: what evaluate and
    report share."""

    checkpoint: str = key("runs/demo/best", help="checkpoint URI")
    data: str | list[str] = key(factory=lambda: sample_data("goemotions_validation.parquet"),
                                help="labelled Parquet file(s), directory or glob (e.g. a test split)")
    text_column: str = key("text", help="column holding the text")
    label_column: str | None = key(None, help='label column; default: "labels" (multi-label) or "label"')
    label_columns: list[str] = key(factory=list, help="comma-separated wide 0/1 label columns (multi-label)")
    long_text: LongTextOverride = key(
        "checkpoint", help="texts longer than the checkpoint's max_length: as the checkpoint says, or truncate / "
                           "chunk instead (e.g. to compare the two on labelled data)")
    num_actors: int | None = key(None, help="scoring actors; none: planned from the cluster")
    ray_address: str | None = key(None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")

    def validate(self) -> None:
        _check_choices(self)


@dataclass
class EvaluateConfig(LabelledDataConfig):
    """Metrics of a checkpoint on labelled Parquet, and optionally its report."""

    report: str | None = key(None, help="also write the evaluation report (index.html, report.json, figures/) "
                                        "to this directory")


@dataclass
class ReportConfig(LabelledDataConfig):
    """An evaluation report (a checkpoint on labelled Parquet) or a scoring run's page (--scores)."""

    scores: str | None = key(None, help="a scoring output URI, or a table's night as CATALOG.NAMESPACE.TABLE@DATE: "
                                        "render its page (label distribution, probability histograms, drift, "
                                        "throughput) instead of an evaluation")
    table_warehouse: str = key("runs/warehouse", help="the embedded Iceberg catalog's warehouse, for a --scores "
                                                      "table (as in score)", flag=False)
    output: str = key("runs/demo/report", help="report directory (local or s3://): index.html, report.json, figures/")
    scores_dir: str | None = key(None, help="where the evaluation data's scores are written (default: a temporary "
                                            "local directory; give a shared s3:// URI on a multi-node cluster)")
    max_examples: int = key(20, help="most confident wrong predictions listed")
    explain_errors: int = key(5, help="of those, how many get an Integrated Gradients explanation (0: none)")
    tracking: Literal["auto", "none", "mlflow"] = key(
        "auto", help="log report.json, the figures and the headline metrics to MLflow: auto: to the checkpoint's "
                     "run when its training was tracked (its tracking.json); mlflow: that run, else a new one; none")
    tracking_uri: str | None = key(None, help="MLflow tracking URI; none: the one the checkpoint's run recorded, "
                                              "else MLFLOW_TRACKING_URI")
    experiment: str = key("bertclf", help="MLflow experiment of a new run (a checkpoint without a tracked run)")
    run_name: str | None = key(None, help="MLflow run name of a new run; none: report")

    def validate(self) -> None:
        super().validate()
        _at_least_one(self, "max_examples")


@dataclass
class ServeConfig:
    """An online endpoint for a checkpoint with Ray Serve: replicas, request batching and request limits."""

    checkpoint: str = key("runs/demo/best", help="checkpoint URI (local or s3://)")
    host: str = key("127.0.0.1", help="address the HTTP proxy binds (0.0.0.0 to listen on every interface)")
    port: int = key(8000, help="HTTP port")
    replicas: int = key(1, help="model replicas")
    cpus_per_replica: float = key(1.0, help="CPUs (and torch threads) per replica")
    gpus_per_replica: float = key(0.0, help="GPUs per replica (1 on GPU nodes)")
    precision: Precision = key("auto", help="auto: bf16 autocast on GPUs that support it and native-bf16 CPUs, "
                                            "int8 on AVX2 CPUs where the checkpoint's recorded gate passed it "
                                            "(bertclf.model.calibration); int8: CPU only")
    max_batch_size: int = key(64, help="texts batched into one forward pass at most (across requests)")
    batch_wait_timeout_s: float = key(0.005, help="how long a batch waits to fill before it runs")
    max_texts_per_request: int = key(256, help="texts one request may send; more get 413")
    max_text_chars: int = key(10_000, help="characters one text may have; longer get 413")
    auth_token_env: str | None = key(None, help="name of the environment variable holding a bearer token that "
                                                "requests must send (never the token itself); none: no auth")
    ray_address: str | None = key(None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")

    def validate(self) -> None:
        _check_choices(self)
        _at_least_one(self, "port", "replicas", "max_batch_size", "max_texts_per_request", "max_text_chars")
        if self.cpus_per_replica <= 0 or self.batch_wait_timeout_s < 0 or self.gpus_per_replica < 0:
            raise ConfigError("cpus_per_replica must be > 0, gpus_per_replica and batch_wait_timeout_s >= 0")


def _check_choices(config: Any) -> None:
    """Literal-typed keys hold one of their choices; booleans are booleans (or None where None means auto)."""
    for name, hint in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        choices = literal_choices(hint)
        if choices and value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        if bool in _options(hint) and not (isinstance(value, bool) or (value is None and allows_none(hint))):
            raise ConfigError(f"{name} must be true or false{' or auto' if allows_none(hint) else ''}; got {value!r}")


def _at_least_one(config: Any, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")


def _options(hint: Any) -> tuple[Any, ...]:
    is_union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return typing.get_args(hint) if is_union else (hint,)


def literal_choices(hint: Any) -> tuple[str, ...]:
    """The allowed values of a Literal[...] hint, () for any other type."""
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is Literal else ()


def allows_none(hint: Any) -> bool:
    return type(None) in _options(hint)


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
    config = cls(**{k: coerce(k, v, hints[k]) for k, v in values.items()})
    config.validate()
    return config


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn YAML/CLI values into the field's type, so `--set epochs=3` and `epochs: 3` mean the same.

    For `bool | None` keys, "auto" (or null) is None: the library decides.
    """
    options = _options(hint)
    if type(None) in options and (value is None or (bool in options and str(value).lower() == "auto")):
        return None
    for option in options:
        choices = literal_choices(option)
        if choices:
            if value in choices:
                return value
            if len(options) > 1:
                continue
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
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
        elif typing.get_origin(option) is dict:
            if isinstance(value, dict):
                return value
        elif typing.get_origin(option) is list:
            if isinstance(value, list):
                return [str(v) for v in value]
            if isinstance(value, str) and str not in options:
                return [v.strip() for v in value.split(",") if v.strip()]
        elif option is str:
            if isinstance(value, str):
                return value
            if not isinstance(value, list | dict):
                return str(value)
    raise ConfigError(f"config key {name!r}: {value!r} is not a valid {_describe(hint)}")


def _describe(hint: Any) -> str:
    return " or ".join("null" if o is type(None) else " or ".join(literal_choices(o)) or getattr(o, "__name__", str(o))
                       for o in _options(hint))


def parse_set_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings from --set, with YAML typing of the value."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        name, raw = pair.split("=", 1)
        out[name.strip()] = yaml.safe_load(raw)
    return out


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
