"""The label space: task type, label names, thresholds, and turning label columns into targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertclf.errors import LabelError

TaskType = Literal["multi_label", "multi_class"]
LabelFormat = Literal["list", "single", "wide"]


@dataclass
class LabelSpace:
    """Which labels exist, how they are encoded and, for multi-label, each label's decision threshold; for
    multi-class, an optional per-class logit bias (label-shift correction, bertclf.training.data)."""

    task: TaskType
    names: list[str]
    thresholds: list[float] = field(default_factory=list)
    class_bias: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.thresholds:
            self.thresholds = [0.5] * len(self.names)
        if len(self.thresholds) != len(self.names):
            raise LabelError(f"{len(self.thresholds)} thresholds for {len(self.names)} labels")
        if self.class_bias and len(self.class_bias) != len(self.names):
            raise LabelError(f"{len(self.class_bias)} class biases for {len(self.names)} labels")

    @property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def to_dict(self) -> dict:
        return {"task": self.task, "names": self.names, "thresholds": self.thresholds,
                **({"class_bias": self.class_bias} if self.class_bias else {})}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSpace:
        return cls(task=d["task"], names=list(d["names"]), thresholds=[float(t) for t in d["thresholds"]],
                   class_bias=[float(b) for b in d.get("class_bias", [])])

    def adjusted_logits(self, logits: np.ndarray) -> np.ndarray:
        """The model's logits with the class bias added (unchanged without one)."""
        if not self.class_bias:
            return logits
        return logits + np.asarray(self.class_bias, dtype=logits.dtype)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The model's logits as this space's probabilities: the class bias applied, then sigmoid or softmax."""
        return probabilities(self.task, self.adjusted_logits(logits))

    def predict(self, probs: np.ndarray) -> list[list[str]]:
        """Label names per row: sigmoid >= threshold (multi-label) or argmax (multi-class)."""
        if self.task == "multi_class":
            return [[self.names[i]] for i in probs.argmax(axis=1)]
        hits = probs >= np.asarray(self.thresholds, dtype=probs.dtype)
        names = np.asarray(self.names, dtype=object)
        return [list(names[row]) for row in hits]


def label_format(columns: dict[str, pa.DataType], label_column: str | None, label_columns: list[str]) -> LabelFormat:
    """Which of the three label layouts a schema uses; errors name the missing or mistyped column."""
    if label_columns:
        for col in label_columns:
            if col not in columns:
                raise LabelError(f"label column {col!r} not found")
            t = columns[col]
            if not (pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t)):
                raise LabelError(f"wide label column {col!r} must hold 0/1 values, found type {t}")
        return "wide"
    if label_column is None or label_column not in columns:
        raise LabelError(f"label column {label_column!r} not found")
    t = columns[label_column]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if not (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)):
            raise LabelError(f"label column {label_column!r} must be a list of strings, found type {t}")
        return "list"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t):
        return "single"
    raise LabelError(
        f"label column {label_column!r} has type {t}: use a string (multi-class), "
        "a list of strings (multi-label) or wide 0/1 columns (label_columns)"
    )


def task_for_format(fmt: LabelFormat) -> TaskType:
    return "multi_class" if fmt == "single" else "multi_label"


def labels_in_column(column: pa.ChunkedArray | pa.Array, fmt: LabelFormat) -> set[str]:
    """The distinct label names in one list or single label column."""
    if fmt == "list":
        column = pc.list_flatten(column)
    return {str(v) for v in pc.unique(column.drop_null()).to_pylist()}


def encode_targets(table: pa.Table, space: LabelSpace, fmt: LabelFormat, label_column: str | None,
                   label_columns: list[str]) -> np.ndarray:
    """Targets for a batch: float32 multi-hot rows (multi-label) or int64 class ids (multi-class).

    A label outside the space raises LabelError naming the value.
    """
    index = space.index
    n = table.num_rows
    if fmt == "wide":
        return np.stack([np.asarray(table[c].to_numpy(zero_copy_only=False), dtype=np.float32)
                         for c in label_columns], axis=1).reshape(n, len(label_columns))
    values = table[label_column].to_pylist()
    if fmt == "single":
        try:
            return np.asarray([index[str(v)] for v in values], dtype=np.int64)
        except KeyError as exc:
            raise LabelError(f"label {exc.args[0]!r} in column {label_column!r} is not in the label space") from None
    out = np.zeros((n, len(space.names)), dtype=np.float32)
    for row, labels in enumerate(values):
        for label in labels or ():
            try:
                out[row, index[label]] = 1.0
            except KeyError:
                raise LabelError(f"label {label!r} in column {label_column!r} is not in the label space") from None
    return out


def probabilities(task: str, logits: np.ndarray) -> np.ndarray:
    """Sigmoid (multi-label) or softmax (multi-class) of logits, float32.

    Here rather than in metrics: scoring actors need it without paying scikit-learn's import at start-up."""
    logits = logits.astype(np.float32)
    if task == "multi_label":
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# the interface other modules, jobs and benchmarks use
__all__ = ["LabelFormat", "LabelSpace", "TaskType", "encode_targets", "label_format", "labels_in_column",
           "probabilities", "task_for_format"]
