"""Driver-side checks of a scoring run's inputs and checkpoint, before Ray starts and before any actor loads.

What the footers, the checkpoint's files and a small read can show is refused here with exit 2 and the file
named (`InputError`), instead of failing in every actor after the pool started (the actors still check each
batch they read, for what a sample can't see):

- every input file unreadable (nothing could be scored);
- a text column that isn't text (string, large_string, string_view or a dictionary of them), from each file's
  Parquet schema;
- invalid UTF-8 in a sample: the text column of the first row group of up to SAMPLE_FILES files, spread over the
  input, skipping column chunks over SAMPLE_MAX_BYTES compressed (so the driver reads at most a few MB per file);
- checkpoint weights whose sha256 differs from what bertclf.json records (size and safetensors header are
  checked by `checkpoint.load` itself).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from bertclf import storage
from bertclf.config import ScoreConfig
from bertclf.errors import DataError, UnreadableFileError
from bertclf.model.checkpoint import LoadedCheckpoint
from bertclf.records import UnitError
from bertclf.units import check_utf8, is_text_type, read_parquet_part

SAMPLE_FILES = 8
SAMPLE_MAX_BYTES = 16 << 20

log = logging.getLogger(__name__)


def check_before_ray(cfg: ScoreConfig, ckpt: LoadedCheckpoint, footers: dict[str, pq.FileMetaData],
                     unreadable: dict[str, UnitError]) -> None:
    """Refuse, naming the file, what the driver can already see is wrong (module docstring)."""
    if unreadable and not footers:
        listing = "\n".join(f"  {uri}: {err}" for uri, err in sorted(unreadable.items()))
        raise UnreadableFileError(f"no input file can be read as Parquet ({len(unreadable)} file(s)); nothing was "
                                  f"scored. Replace or remove them:\n{listing}")
    check_text_types(cfg.text_column, footers)
    ckpt.verify_weights()
    check_text_sample(cfg.text_column, footers)


def check_text_types(text_column: str, footers: dict[str, pq.FileMetaData]) -> None:
    """The text column of every file holds text, from the footers already read (no data read)."""
    for uri, meta in sorted(footers.items()):
        schema = meta.schema.to_arrow_schema()
        if text_column in schema.names and not is_text_type(schema.field(text_column).type):
            raise DataError(f"{uri}: text column {text_column!r} must hold strings (string, large_string or a "
                            f"dictionary of strings), found type {schema.field(text_column).type}; cast it to "
                            "string or set --text-column")


def sample_files(files: list[str], n: int = SAMPLE_FILES) -> list[str]:
    """Up to n files spread evenly over the (sorted) input."""
    if len(files) <= n:
        return list(files)
    return [files[round(i * (len(files) - 1) / (n - 1))] for i in range(n)]


def check_text_sample(text_column: str, footers: dict[str, pq.FileMetaData]) -> None:
    """UTF-8 validity of the text column's first row group in a few files (the rest is checked by the actors)."""
    def one(uri: str) -> None:
        meta = footers[uri]
        if meta.num_row_groups == 0:
            return
        group = meta.row_group(0)
        names = [group.column(i).path_in_schema for i in range(group.num_columns)]
        if text_column not in names or group.column(names.index(text_column)).total_compressed_size > SAMPLE_MAX_BYTES:
            return
        fs, path = storage.resolve(uri)

        def read():
            with fs.open_input_file(path) as f:
                return pq.ParquetFile(f).read_row_group(0, columns=[text_column])

        table = read_parquet_part(uri, read, " (row group 0)")
        column = table[text_column]
        if pa.types.is_dictionary(column.type):  # check the values
            column = column.cast(column.type.value_type)
        check_utf8(column, text_column, uri)

    chosen = sample_files(sorted(footers))
    with ThreadPoolExecutor(max_workers=max(1, len(chosen))) as pool:
        list(pool.map(one, chosen))
