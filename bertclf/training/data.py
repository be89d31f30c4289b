"""Training data: validate Parquet inputs before any long work, build the LabelSpace, split, stream to Ray.

Everything a user can get wrong in their data is found here, on the driver, with the file and column named,
before a single worker starts.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.config import TrainConfig
from bertclf.errors import DataError, LabelError
from bertclf.labelled import missing_texts, refuse_missing_texts
from bertclf.labels import LabelFormat, LabelSpace, encode_targets, label_format, labels_in_column, task_for_format
from bertclf.records import DataSummary, WorkUnit
from bertclf.training.lengths import text_sample
from bertclf.units import check_utf8, plan_units, read_parquet_part, read_table, read_unit_table

MAX_POSITIVE_WEIGHT = 30.0


@dataclass
class TrainingData:
    """What the driver learned about the inputs: files, label layout, label space and row counts."""

    train_files: list[str]
    validation_files: list[str] | None  # None: hash split of the train files
    validation_fraction: float
    text_column: str
    label_format: LabelFormat
    label_column: str | None
    label_columns: list[str]
    space: LabelSpace
    n_train: int
    n_validation: int
    fingerprint: str
    label_counts: dict[str, int] = field(default_factory=dict)
    validation_label_counts: dict[str, int] = field(default_factory=dict)

    @property
    def read_columns(self) -> list[str]:
        return [self.text_column, *(self.label_columns or [self.label_column])]

    def summary(self) -> DataSummary:
        """What a checkpoint records about the data that made it."""
        return DataSummary(fingerprint=self.fingerprint, train_files=self.train_files,
                           validation_files=self.validation_files, n_train=self.n_train,
                           n_validation=self.n_validation, label_counts=self.label_counts)


def class_prior_bias(data: TrainingData, class_prior: str) -> list[float]:
    """Multi-class label-shift correction: log(validation share) - log(training share) per class, added to the
    logits, turns the model's posteriors under the training label mix into posteriors under the validation one
    (Bayes' rule; add-one smoothed counts). Empty when not asked for, multi-label, or validation is a hash split of
    train (the same mix by construction)."""
    if class_prior != "validation" or data.space.task != "multi_class" or data.validation_files is None:
        return []
    train = _counts(data.label_counts, data.space.names) + 1.0
    val = _counts(data.validation_label_counts, data.space.names) + 1.0
    return [round(float(b), 6) for b in np.log(val / val.sum()) - np.log(train / train.sum())]


def positive_weights(data: TrainingData, how: str) -> list[float]:
    """Multi-label loss weights for each label's positive rows: sqrt(negatives / positives) in the training data,
    clipped to [1, MAX_POSITIVE_WEIGHT] (both counts add-one smoothed). The square root rather than the full
    ratio: a label in 1% of rows gets about 10, not 99, which lifts its recall without flooding it with false
    positives. Empty when not asked for or multi-class."""
    if how != "sqrt_inverse" or data.space.task != "multi_label":
        return []
    positives = _counts(data.label_counts, data.space.names)
    ratio = (data.n_train - positives + 1.0) / (positives + 1.0)
    return [round(float(w), 4) for w in np.clip(np.sqrt(ratio), 1.0, MAX_POSITIVE_WEIGHT)]


def _counts(label_counts: dict[str, int], names: list[str]) -> np.ndarray:
    """Rows per label in the label space's order (0 for a label never seen)."""
    return np.array([label_counts.get(n, 0) for n in names], dtype=np.float64)


def in_validation_split(texts: list[str], fraction: float) -> np.ndarray:
    """Deterministic split by a hash of the text, so duplicate texts never straddle train and validation."""
    cut = int(fraction * 2**32)
    return np.fromiter((zlib.crc32(t.encode("utf-8")) < cut for t in texts), dtype=bool, count=len(texts))


def _resolve_label_layout(cfg: TrainConfig, first_file: str) -> tuple[str | None, LabelFormat]:
    fs, path = storage.resolve(first_file)
    try:  # a storage failure stays StorageError (exit 1); a damaged file is UnreadableFileError (exit 2)
        schema = read_parquet_part(first_file, lambda: pq.read_schema(path, filesystem=fs))
    except FileNotFoundError as exc:
        raise DataError(f"{first_file} is not a readable Parquet file: {exc}") from None
    label_column = cfg.label_column
    if not cfg.label_columns and label_column is None:
        label_column = "labels" if "labels" in schema.names else "label"
    columns = {f.name: f.type for f in schema}
    try:
        fmt = label_format(columns, label_column, cfg.label_columns)
    except LabelError as exc:
        raise DataError(f"{first_file}: {exc}; columns are {schema.names}") from None
    return (None if cfg.label_columns else label_column), fmt


def _check_texts(table: pa.Table, text_column: str, uri: str) -> None:
    col = table[text_column]
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise DataError(f"{uri}: text column {text_column!r} must hold strings, found type {col.type}")
    check_utf8(col, text_column, uri)
    refuse_missing_texts(uri, text_column, *missing_texts(col), "training")


def check_model(cfg: TrainConfig) -> None:
    """The --model's safetensors files parse and are whole (a truncated copy fails here, naming the file, not on
    every worker after Ray started)."""
    from bertclf.model.checkpoint import check_model_weights
    from bertclf.model.modeling import resolve_model_dir

    check_model_weights(resolve_model_dir(cfg.model), cfg.model)


def _check_labels(table: pa.Table, fmt: LabelFormat, label_column: str | None, label_columns: list[str],
                  uri: str) -> None:
    columns = {f.name: f.type for f in table.schema}
    try:
        file_fmt = label_format(columns, label_column, label_columns)
    except LabelError as exc:
        raise DataError(f"{uri}: {exc}") from None
    if file_fmt != fmt:
        raise DataError(f"{uri}: label column layout is {file_fmt}, but earlier files use {fmt}")
    for col in label_columns or [label_column]:
        if table[col].null_count:
            raise DataError(f"{uri}: label column {col!r} has {table[col].null_count} null row(s)")
        if fmt == "wide":
            bad = pc.sum(pc.invert(pc.is_in(pc.cast(table[col], pa.float64()), pa.array([0.0, 1.0])))).as_py()
            if bad:
                raise DataError(f"{uri}: wide label column {col!r} has {bad} value(s) other than 0/1")


def inspect_training_data(cfg: TrainConfig, length_sample: list[str] | None = None) -> TrainingData:
    """List, read and check every input file once; return the label space and counts. Given `length_sample`,
    a sample of the training texts is appended to it for `max_length: auto` (kept off TrainingData, which every
    worker receives). The model's weight files are checked first (cheap: headers only)."""
    check_model(cfg)
    train_files = storage.list_parquet_files(cfg.train)
    validation_files = storage.list_parquet_files(cfg.validation) if cfg.validation else None
    label_column, fmt = _resolve_label_layout(cfg, train_files[0])
    read = _CheckedReader(cfg, fmt, label_column)

    counts: dict[str, int] = {}
    train_labels: set[str] = set()
    n_train = 0
    val_tables: list[tuple[str, pa.Table]] = []
    for uri in train_files:
        table = read(uri)
        if validation_files is None:
            mask = in_validation_split(table[cfg.text_column].to_pylist(), cfg.validation_fraction)
            val_tables.append((uri, table.filter(pa.array(mask))))
            table = table.filter(pa.array(~mask))
        n_train += table.num_rows
        if length_sample is not None:
            length_sample += text_sample(table[cfg.text_column], len(train_files))
        if fmt != "wide":
            train_labels |= labels_in_column(table[label_column], fmt)
        _count_labels(table, fmt, label_column, cfg.label_columns, counts)
    if n_train == 0:
        raise DataError(f"training data {cfg.train} has no rows")
    task, names = _task_and_labels(cfg, fmt, label_column, train_labels)

    val_tables += [(uri, read(uri)) for uri in validation_files or []]
    val_counts: dict[str, int] = {}
    for _, table in val_tables:
        _count_labels(table, fmt, label_column, cfg.label_columns, val_counts)
    n_val = _check_validation(cfg, val_tables, fmt, label_column, train_labels, validation_files is not None)

    return TrainingData(
        train_files=train_files, validation_files=validation_files, validation_fraction=cfg.validation_fraction,
        text_column=cfg.text_column, label_format=fmt, label_column=label_column,
        label_columns=list(cfg.label_columns), space=LabelSpace(task=task, names=names),
        n_train=n_train, n_validation=n_val, fingerprint=read.digest.hexdigest()[:16], label_counts=counts,
        validation_label_counts=val_counts,
    )


class _CheckedReader:
    """Reads one input file's text and label columns, checks them (naming the file) and adds the file to the data
    fingerprint."""

    def __init__(self, cfg: TrainConfig, fmt: LabelFormat, label_column: str | None):
        self.cfg, self.fmt, self.label_column = cfg, fmt, label_column
        self.columns = [cfg.text_column, *(cfg.label_columns or [label_column])]
        self.digest = hashlib.sha256()

    def __call__(self, uri: str) -> pa.Table:
        table = read_table(uri, self.columns)
        _check_texts(table, self.cfg.text_column, uri)
        _check_labels(table, self.fmt, self.label_column, self.cfg.label_columns, uri)
        self.digest.update(f"{uri}:{table.num_rows}".encode())
        return table


def _task_and_labels(cfg: TrainConfig, fmt: LabelFormat, label_column: str | None,
                     train_labels: set[str]) -> tuple[str, list[str]]:
    """The task (given, or from the label layout) and the label names, checked against each other."""
    names = list(cfg.label_columns) if fmt == "wide" else sorted(train_labels)
    task = task_for_format(fmt) if cfg.task == "auto" else cfg.task
    if task == "multi_class" and fmt != "single":
        raise DataError(f"task multi_class needs a single string label column; "
                        f"{label_column or cfg.label_columns} is {fmt}")
    if task == "multi_label" and fmt == "single":
        raise DataError(f"task multi_label needs a list-of-labels column or label_columns; "
                        f"{label_column!r} holds one label per row")
    if len(names) < 2:
        raise DataError(f"training data has {len(names)} distinct label(s) {names}: a classifier needs at least 2")
    return task, names


def _check_validation(cfg: TrainConfig, val_tables: list[tuple[str, pa.Table]], fmt: LabelFormat,
                      label_column: str | None, train_labels: set[str], separate: bool) -> int:
    """Validation rows: only labels training has seen, and at least one row. Returns the row count."""
    if fmt != "wide":
        for uri, table in val_tables:
            unseen = labels_in_column(table[label_column], fmt) - train_labels
            if unseen:
                raise DataError(f"{uri}: validation label(s) {sorted(unseen)} never appear in the training data")
    n_val = sum(table.num_rows for _, table in val_tables)
    if n_val == 0:
        raise DataError("validation data has no rows" if separate else
                        f"the {cfg.validation_fraction:.0%} hash split of {cfg.train} left no validation rows")
    return n_val


def _count_labels(table: pa.Table, fmt: LabelFormat, label_column: str | None, label_columns: list[str],
                  counts: dict[str, int]) -> None:
    if fmt == "wide":
        for col in label_columns:
            counts[col] = counts.get(col, 0) + int(pc.sum(table[col]).as_py() or 0)
        return
    values = pc.list_flatten(table[label_column]) if fmt == "list" else table[label_column]
    for item in pc.value_counts(values).to_pylist():
        key = str(item["values"])
        counts[key] = counts.get(key, 0) + item["counts"]


def encode_batch(table: pa.Table, data: TrainingData) -> dict[str, np.ndarray]:
    """A batch as the train loop wants it: texts and targets."""
    targets = encode_targets(table, data.space, data.label_format, data.label_column, data.label_columns)
    return {"text": np.asarray(table[data.text_column].to_pylist(), dtype=object), "target": targets}


class _ReadAndEncodeUnits:
    """Ray Data map over work units: read each unit's rows, drop the validation split, encode labels."""

    def __init__(self, data: TrainingData):
        self.data = data

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tables = [read_unit_table(WorkUnit.from_json(u), self.data.read_columns) for u in batch["unit"]]
        table = pa.concat_tables(tables)
        if self.data.validation_files is None:
            mask = in_validation_split(table[self.data.text_column].to_pylist(), self.data.validation_fraction)
            table = table.filter(pa.array(~mask))
        return encode_batch(table, self.data)


def train_dataset(data: TrainingData, seed: int, data_cpus: float, rows_per_unit: int = 50_000):
    """The training rows as a ray.data.Dataset of {text, target}: one read task per unit of row groups."""
    import ray.data

    from bertclf.logs import ray_data_progress

    # off but at DEBUG: the epoch's progress lines say more, and its bars would flood job logs
    ray.data.DataContext.get_current().enable_progress_bars = ray_data_progress()
    units, errors, _ = plan_units(data.train_files, rows_per_unit)
    if errors:
        raise DataError("; ".join(errors.values()))
    rng = random.Random(seed)
    rng.shuffle(units)
    items = [{"unit": u.to_json()} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(_ReadAndEncodeUnits(data), batch_size=1, num_cpus=data_cpus)


def training_rows(data: TrainingData, max_rows: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Up to `max_rows` training rows (texts, targets), a seeded uniform sample beyond that, read one file at a
    time so memory holds the sample and one file, whatever the data's size (the baseline is fitted on them)."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    targets: np.ndarray | None = None
    keys = np.empty(0)
    for uri in data.train_files:
        table = read_table(uri, data.read_columns)
        if data.validation_files is None:
            table = table.filter(pa.array(~in_validation_split(table[data.text_column].to_pylist(),
                                                                data.validation_fraction)))
        batch = encode_batch(table, data)
        texts += batch["text"].tolist()
        targets = batch["target"] if targets is None else np.concatenate([targets, batch["target"]])
        keys = np.concatenate([keys, rng.random(table.num_rows)])
        if len(texts) > max_rows:
            keep = np.sort(np.argpartition(keys, max_rows)[:max_rows])
            texts, targets, keys = [texts[i] for i in keep], targets[keep], keys[keep]
    assert targets is not None
    return texts, targets


def validation_rows(data: TrainingData, rank: int, world: int) -> tuple[list[str], np.ndarray]:
    """This worker's slice (every world-th row) of the validation set, read directly: small and exact."""
    texts: list[str] = []
    targets: list[np.ndarray] = []
    files = data.validation_files if data.validation_files is not None else data.train_files
    for uri in files:
        table = read_table(uri, data.read_columns)
        if data.validation_files is None:
            mask = in_validation_split(table[data.text_column].to_pylist(), data.validation_fraction)
            table = table.filter(pa.array(mask))
        batch = encode_batch(table, data)
        texts.extend(batch["text"].tolist())
        targets.append(batch["target"])
    all_targets = np.concatenate(targets)
    return texts[rank::world], all_targets[rank::world]
