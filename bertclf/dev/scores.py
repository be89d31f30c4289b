"""A scoring output read back, as a test compares it."""

from __future__ import annotations

from pathlib import Path


def read_scores(output: str | Path):
    """A scoring output's parts (local or s3://) as one pyarrow table sorted by id; `_reuse/`, the manifest and the
    success marker are not parts."""
    import pyarrow.dataset as pads

    from bertclf import storage

    fs, path = storage.resolve(str(output))
    files = sorted(f for f in storage.list_names(str(output)) if storage.is_data_file(f))
    return pads.dataset([f"{path}/{f}" for f in files], filesystem=fs, format="parquet").to_table().sort_by("id")


__all__ = ["read_scores"]
