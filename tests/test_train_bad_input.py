"""Every bad training input fails before any training starts, with a message naming the file, column or value."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertclf import training
from bertclf.config import TrainConfig
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.errors import DataError, InputError
from bertclf.model.modeling import ModelError
from bertclf.storage import StorageError
from bertclf.training.data import in_validation_split, inspect_training_data


@pytest.fixture
def good(tmp_path, tiny_model):
    write_rows(tmp_path / "train.parquet", make_rows(50, seed=1, multi_label=True))
    write_rows(tmp_path / "val.parquet", make_rows(20, seed=2, multi_label=True))
    return dict(train=str(tmp_path / "train.parquet"), validation=str(tmp_path / "val.parquet"),
                output=str(tmp_path / "out"), model=str(tiny_model))


def _fails(match: str, exc=DataError, **cfg):
    """train.run must raise before Ray is touched (no ray_local fixture here: Ray is never started)."""
    import ray

    with pytest.raises(exc, match=match):
        training.run(TrainConfig(**cfg))
    assert not ray.is_initialized(), "validation must happen before Ray starts"


def test_good_input_passes_validation(good):
    data = inspect_training_data(TrainConfig(**good))
    assert data.space.names == ["anger", "fear", "joy"] and data.n_train == 50 and data.n_validation == 20


def test_missing_text_column(good, tmp_path):
    rows = [{"body": r["text"], "labels": r["labels"]} for r in make_rows(10, 1, True)]
    write_rows(tmp_path / "notext.parquet", rows)
    _fails(r"notext\.parquet.*'text' not found", **{**good, "train": str(tmp_path / "notext.parquet")})


def test_missing_label_column(good, tmp_path):
    write_rows(tmp_path / "nolabel.parquet", [{"text": "x y"}, {"text": "z"}])
    _fails(r"nolabel\.parquet.*label column 'label' not found", **{**good, "train": str(tmp_path / "nolabel.parquet")})


@pytest.mark.parametrize("bad", [None, "", "   "], ids=["null", "empty", "blank"])
def test_null_or_empty_text(good, tmp_path, bad):
    rows = make_rows(10, 1, True)
    rows[3]["text"] = bad
    write_rows(tmp_path / "holes.parquet", rows)
    _fails(r"holes\.parquet: text column 'text' has \d null and \d empty",
           **{**good, "train": str(tmp_path / "holes.parquet")})


def test_label_column_of_wrong_type(good, tmp_path):
    pq.write_table(pa.table({"text": ["a b", "c d"], "label": [0.5, 1.5]}), tmp_path / "floats.parquet")
    _fails(r"floats\.parquet.*'label' has type double", **{**good, "train": str(tmp_path / "floats.parquet")})


def test_validation_label_never_seen_in_train(good, tmp_path):
    rows = make_rows(10, 3, True)
    rows[0]["labels"] = ["surprise"]
    write_rows(tmp_path / "val2.parquet", rows)
    _fails(r"val2\.parquet.*\['surprise'\] never appear", **{**good, "validation": str(tmp_path / "val2.parquet")})


def test_empty_dataset(good, tmp_path):
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "labels": pa.array([], pa.list_(pa.string()))}),
                   tmp_path / "empty.parquet")
    _fails("has no rows", **{**good, "train": str(tmp_path / "empty.parquet")})


def test_input_path_that_does_not_exist(good, tmp_path):
    _fails(r"input .*nowhere\.parquet does not exist", exc=InputError,
           **{**good, "train": str(tmp_path / "nowhere.parquet")})


def test_bucket_that_does_not_exist(good, s3_server):
    _fails(r"bucket s3://no-such-bucket-xyz", exc=InputError, **{**good, "train": "s3://no-such-bucket-xyz/train/"})


def test_unreadable_parquet(good, tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    _fails(r"broken\.parquet is not a readable Parquet file", **{**good, "train": str(tmp_path / "broken.parquet")})


def test_output_that_cannot_be_written(good, tmp_path):
    (tmp_path / "a_file").write_text("x")
    _fails(r"a_file/run", exc=(StorageError, OSError), **{**good, "output": str(tmp_path / "a_file" / "run")})


def test_model_not_found_offline(good, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fails(r"model 'no-such-org/no-such-model' was not found", exc=ModelError,
           **{**good, "model": "no-such-org/no-such-model"})


def test_task_that_contradicts_the_labels(good):
    _fails("multi_class needs a single string label column", **{**good, "task": "multi_class"})


def test_wide_zero_one_columns_make_a_multi_label_space(good, tmp_path):
    rows = [{"text": r["text"], "toxic": int("anger" in r["labels"]), "scared": int("fear" in r["labels"])}
            for r in make_rows(40, 1, True)]
    write_rows(tmp_path / "wide.parquet", rows)
    cfg = TrainConfig(**{**good, "train": str(tmp_path / "wide.parquet"), "validation": None,
                         "label_columns": ["toxic", "scared"]})
    data = inspect_training_data(cfg)
    assert data.space.task == "multi_label" and data.space.names == ["toxic", "scared"]
    in_val = in_validation_split([r["text"] for r in rows], cfg.validation_fraction)
    assert data.label_counts == {c: sum(r[c] for r, v in zip(rows, in_val, strict=True) if not v)
                                 for c in ("toxic", "scared")}


def test_wide_column_with_values_other_than_zero_one(good, tmp_path):
    write_rows(tmp_path / "wide2.parquet", [{"text": "a b", "toxic": 2}, {"text": "c", "toxic": 0}])
    _fails(r"wide2\.parquet: wide label column 'toxic' has 1 value\(s\) other than 0/1",
           **{**good, "train": str(tmp_path / "wide2.parquet"), "label_columns": ["toxic"]})
