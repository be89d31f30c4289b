"""Bad input gets one base class, so callers (the CLI's exit code 2, "don't retry") can tell it from bugs."""

from __future__ import annotations


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
    """A Parquet file whose footer or pages can't be read."""


class CheckpointError(InputError):
    """A checkpoint URI that doesn't exist or isn't a bertclf checkpoint."""


class ModelError(InputError):
    """A model that can't be found or loaded."""


class RecordError(InputError):
    """A JSON record (checkpoint metadata, manifest, metrics line) that this version of bertclf can't read."""
