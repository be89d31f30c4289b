"""A scoring output is readable by plain Parquet readers (the manifest is `_manifest.json`, which they skip; the old
`manifest.json` is still read), an empty input is refused unless allowed, and inputs whose id or pass-through
column types differ are refused before any scoring."""

from __future__ import annotations

import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertclf.cli import main
from bertclf.config import ScoreConfig
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.errors import DataError, InputError
from bertclf.scoring import run
from bertclf.scoring.driver import EmptyInputError
from bertclf.scoring.manifest import LEGACY_MANIFEST, MANIFEST, SUCCESS, read_manifest


@pytest.fixture(scope="module")
def ckpt(tiny_model, tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_model, "multi_label", [0.5, 0.5, 0.5])


def _cfg(ckpt, inputs, output, **kw) -> ScoreConfig:
    return ScoreConfig(checkpoint=str(ckpt), input=inputs, output=str(output), precision="fp32", **kw)


def test_pandas_and_pyarrow_read_a_scoring_output_and_the_old_manifest_name_is_still_read(ray_local, ckpt, tmp_path):
    rows = [{"id": f"r{i}", "text": r["text"], "source": "a"} for i, r in enumerate(make_rows(90, 1, True))]
    write_rows(tmp_path / "in.parquet", rows, row_group_size=30)
    out = tmp_path / "out"
    run(_cfg(ckpt, str(tmp_path / "in.parquet"), out, passthrough_columns=["source"]))

    assert (out / MANIFEST).is_file() and (out / SUCCESS).is_file() and not (out / LEGACY_MANIFEST).exists()
    frame = pd.read_parquet(out)
    assert len(frame) == 90 and sorted(frame["id"]) == sorted(r["id"] for r in rows)
    assert {"prob_joy", "predicted", "top_label", "source"} <= set(frame.columns)
    assert pq.read_table(out).num_rows == 90
    assert read_manifest(str(out)).rows_out == 90

    old = tmp_path / "old"  # an output written before the rename
    shutil.copytree(out, old)
    (old / MANIFEST).rename(old / LEGACY_MANIFEST)
    assert read_manifest(str(old)).rows_out == 90


def test_an_empty_input_fails_with_exit_2_unless_allowed(ray_local, ckpt, tmp_path):
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    out = tmp_path / "out"
    with pytest.raises(EmptyInputError, match=r"0 rows .*empty\.parquet.*--allow-empty") as info:
        run(_cfg(ckpt, str(tmp_path / "empty.parquet"), out))
    assert isinstance(info.value, InputError) and not out.exists(), "refused before anything is written"
    argv = ["score", "--checkpoint", str(ckpt), "--input", str(tmp_path / "empty.parquet"), "--output", str(out)]
    assert main(argv) == 2

    summary = run(_cfg(ckpt, str(tmp_path / "empty.parquet"), out, allow_empty=True))
    assert summary.rows_in == summary.rows_out == 0 and (out / SUCCESS).is_file()
    assert read_manifest(str(out)).rows_out == 0


@pytest.mark.parametrize("column,other", [("id", pa.int64()), ("source", pa.float64())])
def test_inputs_whose_id_or_passthrough_types_differ_are_refused_before_scoring(ckpt, tmp_path, column, other):
    rows = make_rows(20, 2, True)
    write_rows(tmp_path / "a.parquet", [{"id": f"x{i}", "text": r["text"], "source": "s"} for i, r in enumerate(rows)])
    ids = pa.array(range(20), other) if column == "id" else pa.array([f"y{i}" for i in range(20)])
    sources = pa.array([1.5] * 20, other) if column == "source" else pa.array(["s"] * 20)
    table = pa.table({"id": ids, "text": [r["text"] for r in rows], "source": sources})
    pq.write_table(table, tmp_path / "b.parquet")
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        run(_cfg(ckpt, [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")], out, passthrough_columns=["source"]))
    message = str(info.value)
    assert f"column {column!r}" in message and "a.parquet" in message and "b.parquet" in message
    assert "string" in message and str(other) in message, message
    assert not out.exists(), "refused before anything is written"


def test_string_and_large_string_ids_are_one_type(ckpt, tmp_path):
    from bertclf.scoring.driver import _check_columns

    cfg = _cfg(ckpt, "x", tmp_path / "o")
    schemas = {"a": pa.schema([("id", pa.string()), ("text", pa.string())]),
               "b": pa.schema([("id", pa.large_string()), ("text", pa.large_string())]),
               "c": pa.schema([("id", pa.dictionary(pa.int32(), pa.string())), ("text", pa.string())])}
    assert _check_columns(cfg, schemas) == ("id",)
