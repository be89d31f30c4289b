"""Two kinds of failure a scheduler must tell apart, each with one base class.

`InputError`: the data, the checkpoint or the config can't be used (the CLI's exit code 2, "don't retry": fix the
file it names). `StorageError`: object storage or the network failed (unreachable, timed out, 5xx after our
retries; exit code 1, "a retry may fix it"). Anything else is a bug or a crash (exit 1).
"""

from __future__ import annotations

import re


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


def _input_error_names() -> set[str]:
    names: set[str] = set()
    todo: list[type] = [InputError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names | {"UnicodeDecodeError"}  # text that is not UTF-8 is the data's fault


def is_input_failure(error: str) -> bool:
    """Whether a failure reported as text ("ClassName: message", as scoring actors report a unit's failure) is
    about the input: the class is an InputError (or a UTF-8 decode error). Storage and unknown errors are not."""
    match = re.match(r"\s*([A-Za-z_][\w.]*)\s*:", error)
    return bool(match) and match.group(1).rsplit(".", 1)[-1] in _input_error_names()


def is_storage_failure_text(error: str) -> bool:
    """Whether a failure reported as text ("ClassName: message", e.g. a scoring unit's) is storage or the network
    giving out after the retries (a StorageError, not about the input): the rest of the run would fail alike."""
    match = re.match(r"\s*([A-Za-z_][\w.]*)\s*:", error)
    return bool(match) and match.group(1).rsplit(".", 1)[-1] == "StorageError"

