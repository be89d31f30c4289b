"""Two kinds of failure a scheduler must tell apart, each with one base class.

`InputError`: the data, the checkpoint or the config can't be used (the CLI's exit code 2, "don't retry": fix the
file it names). `StorageError`: object storage or the network failed (unreachable, timed out, 5xx after our
retries; exit code 1, "a retry may fix it"). Anything else is a bug or a crash (exit 1).
"""

from __future__ import annotations

from typing import Literal


class InputError(ValueError):
    """Input or config that can't be used; the message names the file, column, key or value and the fix.

    Retrying the same command can't help. A ValueError subclass, so code that caught ValueError still works.
    """


class ConfigError(InputError):
    """A config key or value that can't be used."""


class DataError(InputError):
    """Input data (a file, column or value) that can't be used."""


class LabelError(DataError):
    """A label column or value that doesn't fit the label space."""


class UnreadableFileError(DataError):
    """A Parquet file whose footer or pages can't be parsed (corrupt or truncated; not a network failure)."""


class CheckpointError(InputError):
    """A checkpoint URI that doesn't exist, isn't a bertclf checkpoint, or whose files are damaged."""


class ModelError(InputError):
    """A model that can't be found or loaded."""


class RecordError(InputError):
    """A JSON record (checkpoint metadata, manifest, metrics line) that this version of bertclf can't read."""


class TrackingError(InputError):
    """Experiment tracking asked for but unusable when a run starts: no MLflow client, or a tracking server that
    can't be reached (exit 2 before any training: fix tracking_uri or set tracking none; nothing was trained)."""


def unicode_problem(text: str) -> str | None:
    """Why a text can't be tokenized as Unicode (a lone surrogate such as "\\ud800", or the escapes Python makes of
    invalid UTF-8 in argv), or None. The one check of serve's requests and predict's and explain's arguments."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode: {exc.reason} at character {exc.start}"
    return None


class StorageError(RuntimeError):
    """A URI that can't be read or written because storage or the network failed; the message names the URI.

    Exit code 1: a retry of the job may fix it. (`storage.StorageInputError`, a URI that is wrong rather than
    unreachable, is also an InputError: exit 2.)"""


STORAGE_FAILURE = "storage/network failure (a retry may fix it)"


FailureKind = Literal["input", "storage", "other"]


def failure_kind(exc: BaseException) -> FailureKind:
    """What a failure is, decided where it is caught (by type, never from its message): "input" for the data's
    fault (an InputError, or text that is not UTF-8), "storage" for storage or the network giving out after the
    retries, "other" for anything else (a bug or a crash). The exit code and whether a run stops follow it."""
    if isinstance(exc, (InputError, UnicodeDecodeError)):  # before StorageError: a wrong URI is the input's fault
        return "input"
    if isinstance(exc, StorageError):
        return "storage"
    return "other"


class ScoreError(RuntimeError):
    """Scoring that could not finish; the message names the files that failed. No _SUCCESS is written.

    `kinds` holds the failure_kind of each failed file, as decided where it was caught: when every one is the
    input's fault the CLI exits 2 (retrying can't help), else 1."""

    def __init__(self, message: str, kinds: tuple[FailureKind, ...] = ()):
        super().__init__(message)
        self.kinds = kinds

    @property
    def bad_input_only(self) -> bool:
        return bool(self.kinds) and all(kind == "input" for kind in self.kinds)
