"""Bad inputs to `bertclf train` and `bertclf score` end with the exit code a scheduler can act on, before Ray starts.

Exit 2 ("fix the file it names, don't retry") for anything about the data, the checkpoint or the model; exit 1
("storage/network failure, a retry may fix it") when S3 can't be reached. Every case here is refused on the
driver: no Ray is started (`ray.is_initialized()` stays False and the drivers' `connect` is never called).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertclf import storage
from bertclf.cli import main
from bertclf.dev.ports import free_port
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.errors import StorageError, UnreadableFileError
from bertclf.model import checkpoint
from bertclf.units import read_parquet_part


def _invalid_utf8(values: list[bytes]) -> pa.Array:
    """A string array holding exactly these bytes (pyarrow won't build invalid UTF-8 from Python strings)."""
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + len(v))
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [None, pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]),
                                  pa.py_buffer(b"".join(values))])


def _with_text(table: pa.Table, text: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index("text"), "text", text)


def _train_table(n: int, seed: int) -> pa.Table:
    return pa.Table.from_pylist(make_rows(n, seed, True))


def _score_rows(n: int = 40) -> list[dict]:
    return [{"id": str(i), "text": r["text"]} for i, r in enumerate(make_rows(n, 3, True))]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@dataclass
class Env:
    tmp: Path
    tiny_model: Path
    ckpt: Path

    def train_args(self, train: Path | str, model: Path | str | None = None) -> list[str]:
        write_rows(self.tmp / "val.parquet", make_rows(20, 2, True))
        return ["train", "--train", str(train), "--validation", str(self.tmp / "val.parquet"),
                "--output", str(self.tmp / "run"), "--model", str(model or self.tiny_model), "--epochs", "1"]

    def score_args(self, inputs: Path | str, ckpt: Path | str | None = None) -> list[str]:
        return ["score", "--checkpoint", str(ckpt or self.ckpt), "--input", str(inputs),
                "--output", str(self.tmp / "scores")]

    def good_train_file(self) -> Path:
        write_rows(self.tmp / "train.parquet", make_rows(50, 1, True))
        return self.tmp / "train.parquet"

    def good_score_file(self) -> Path:
        write_rows(self.tmp / "in.parquet", _score_rows())
        return self.tmp / "in.parquet"

    def ckpt_copy(self) -> Path:
        return Path(shutil.copytree(self.ckpt, self.tmp / "ckpt"))


# each case: (builds its inputs, returns argv), exit code, what the message must name
def train_invalid_utf8(e: Env) -> list[str]:
    table = _train_table(50, 1)
    texts = [t.encode() for t in table["text"].to_pylist()]
    texts[7] = b"caf\xe9 \xff broken"
    pq.write_table(_with_text(table, _invalid_utf8(texts)), e.tmp / "latin1.parquet")
    return e.train_args(e.tmp / "latin1.parquet")


def train_wrong_text_type(e: Env) -> list[str]:
    table = _train_table(50, 1)
    pq.write_table(_with_text(table, pa.array(range(50), pa.int64())), e.tmp / "numbers.parquet")
    return e.train_args(e.tmp / "numbers.parquet")


def train_truncated_parquet(e: Env) -> list[str]:
    _truncate(e.good_train_file())
    return e.train_args(e.tmp / "train.parquet")


def train_truncated_model(e: Env) -> list[str]:
    model = Path(shutil.copytree(e.tiny_model, e.tmp / "model"))
    _truncate(model / "model.safetensors", 0.7)
    return e.train_args(e.good_train_file(), model)


def train_s3_unreachable(e: Env) -> list[str]:
    return e.train_args("s3://corpus/train/")


def score_invalid_utf8(e: Env) -> list[str]:
    table = pa.Table.from_pylist(_score_rows())
    texts = [t.encode() for t in table["text"].to_pylist()]
    texts[11] = b"\xc3\x28 not utf-8"
    pq.write_table(_with_text(table, _invalid_utf8(texts)), e.tmp / "mojibake.parquet")
    return e.score_args(e.tmp / "mojibake.parquet")


def score_wrong_text_type(e: Env) -> list[str]:
    table = pa.Table.from_pylist(_score_rows())
    pq.write_table(_with_text(table, pa.array([[1.0, 2.0]] * table.num_rows)), e.tmp / "vectors.parquet")
    return e.score_args(e.tmp / "vectors.parquet")


def score_truncated_parquet(e: Env) -> list[str]:
    _truncate(e.good_score_file())
    return e.score_args(e.tmp / "in.parquet")


def score_truncated_weights(e: Env) -> list[str]:
    ckpt = e.ckpt_copy()
    _truncate(ckpt / "model.safetensors", 0.9)
    return e.score_args(e.good_score_file(), ckpt)


def score_altered_weights(e: Env) -> list[str]:
    ckpt = e.ckpt_copy()
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-100:] = bytes(100)  # same size, a valid header: only the sha256 can tell
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    return e.score_args(e.good_score_file(), ckpt)


def score_truncated_old_checkpoint(e: Env) -> list[str]:
    """A checkpoint written before sizes and sha256 were recorded: its safetensors header still catches it."""
    ckpt = e.ckpt_copy()
    meta = json.loads((ckpt / checkpoint.MARKER).read_text())
    meta.pop(checkpoint.WEIGHTS_KEY)
    (ckpt / checkpoint.MARKER).write_text(json.dumps(meta))
    _truncate(ckpt / "model.safetensors", 0.8)
    return e.score_args(e.good_score_file(), ckpt)


def score_missing_marker(e: Env) -> list[str]:
    ckpt = e.ckpt_copy()
    (ckpt / checkpoint.MARKER).unlink()
    return e.score_args(e.good_score_file(), ckpt)


def score_s3_input_unreachable(e: Env) -> list[str]:
    return e.score_args("s3://corpus/date=2026-12-01/")


def score_s3_checkpoint_unreachable(e: Env) -> list[str]:
    return e.score_args(e.good_score_file(), "s3://models/r1/best")


def _blank_texts(rows: list[dict], every: int) -> list[dict]:
    """Labelled rows whose text is emptied (or blanked) in every `every`-th row: every=1 empties all of them."""
    return [{**r, "text": ["", "  "][i % 2]} if i % every == 0 else r for i, r in enumerate(rows)]


def train_all_empty_texts(e: Env) -> list[str]:
    write_rows(e.tmp / "blank.parquet", _blank_texts(make_rows(50, 1, True), every=1))
    return e.train_args(e.tmp / "blank.parquet")


def evaluate_all_empty_texts(e: Env) -> list[str]:
    """The same data train refuses: one rule for labelled texts on every path (was: metrics printed, exit 0)."""
    write_rows(e.tmp / "blank.parquet", _blank_texts(make_rows(50, 1, True), every=1))
    return ["evaluate", "--checkpoint", str(e.ckpt), "--data", str(e.tmp / "blank.parquet")]


def evaluate_some_empty_texts(e: Env) -> list[str]:
    write_rows(e.tmp / "some.parquet", [*make_rows(30, 1, True), {"text": None, "labels": ["joy"]},
                                        *_blank_texts(make_rows(20, 2, True), every=10)])
    return ["evaluate", "--checkpoint", str(e.ckpt), "--data", str(e.tmp / "some.parquet")]


CASES: list[tuple[Callable[[Env], list[str]], int, str]] = [
    (train_invalid_utf8, 2, r"latin1\.parquet: text column 'text' holds invalid UTF-8 \(row 7\)"),
    (train_wrong_text_type, 2, r"numbers\.parquet: text column 'text' must hold strings"),
    (train_truncated_parquet, 2, r"train\.parquet.* is not a readable Parquet file"),
    (train_truncated_model, 2, r"model/model\.safetensors .*(truncated|not a valid safetensors)"),
    (train_all_empty_texts, 2, r"blank\.parquet: text column 'text' has 0 null and 50 empty row\(s\); drop or fill"),
    (evaluate_all_empty_texts, 2, r"blank\.parquet: text column 'text' has 0 null and 50 empty row\(s\); drop or fill"),
    (evaluate_some_empty_texts, 2, r"some\.parquet: text column 'text' has 1 null and 2 empty row\(s\)"),
    (train_s3_unreachable, 1, r"s3://corpus/train.*storage/network failure \(a retry may fix it\)"),
    (score_invalid_utf8, 2, r"mojibake\.parquet: text column 'text' holds invalid UTF-8 \(row 11\)"),
    (score_wrong_text_type, 2, r"vectors\.parquet: text column 'text' must hold strings.*list<"),
    (score_truncated_parquet, 2, r"in\.parquet.* is not a readable Parquet file"),
    (score_truncated_weights, 2, r"ckpt/model\.safetensors is \d+ bytes but bertclf\.json records \d+"),
    (score_altered_weights, 2, r"ckpt: model\.safetensors does not match bertclf\.json \(sha256"),
    (score_truncated_old_checkpoint, 2, r"ckpt/model\.safetensors is (truncated|not a valid safetensors)"),
    (score_missing_marker, 2, r"ckpt is not a bertclf checkpoint: it has no bertclf\.json"),
    (score_s3_input_unreachable, 1, r"s3://corpus.*storage/network failure \(a retry may fix it\)"),
    (score_s3_checkpoint_unreachable, 1, r"checkpoint s3://models/r1/best can't be read.*storage/network failure"),
]


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_model, tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_model, "multi_label", [0.5, 0.5, 0.5])


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if either driver reaches Ray; S3 points at a closed port with retries kept short."""
    import ray

    from bertclf.scoring import driver as score_driver
    from bertclf.training import driver as train_driver

    calls: list[str] = []

    def refuse(*args, **kwargs):
        calls.append("connect")
        raise AssertionError("Ray was started for an input the driver can see is bad")

    monkeypatch.setattr(score_driver, "connect", refuse)
    monkeypatch.setattr(train_driver, "connect", refuse)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("BERTCLF_S3_RETRIES", "1")
    monkeypatch.setenv("BERTCLF_IO_ATTEMPTS", "3")
    monkeypatch.setenv("BERTCLF_IO_RETRY_DELAY", "0")
    was_running = ray.is_initialized()
    yield calls
    assert not calls
    assert was_running or not ray.is_initialized(), "Ray must not be started for a bad input"


@pytest.mark.parametrize("build,code,message", CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_exit_code_and_message(build, code, message, tiny_model, tiny_ckpt, tmp_path, no_ray, capsys,
                                         caplog):
    env = Env(tmp_path, tiny_model, tiny_ckpt)
    with caplog.at_level(logging.WARNING, logger="bertclf"):
        got = main(build(env))
    err = capsys.readouterr().err
    assert got == code, err
    assert re.search(message, err), err
    assert not (tmp_path / "scores" / "_SUCCESS").exists() and not (tmp_path / "run" / "best").exists()
    if code == 1:  # one log line per failed attempt: attempt n of N, the URI, the error, the wait
        attempts = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
        assert len(attempts) == 2 and all("s3://" in a and "Could not connect" in a for a in attempts), attempts
        assert "attempt 1 of 3 failed" in attempts[0] and "attempt 2 of 3 failed" in attempts[1]


def test_old_checkpoint_without_a_weights_record_still_loads(tiny_ckpt, tmp_path):
    ckpt = Path(shutil.copytree(tiny_ckpt, tmp_path / "old"))
    meta = json.loads((ckpt / checkpoint.MARKER).read_text())
    recorded = meta.pop(checkpoint.WEIGHTS_KEY)
    assert set(recorded) == {"model.safetensors"} and len(recorded["model.safetensors"]["sha256"]) == 64
    (ckpt / checkpoint.MARKER).write_text(json.dumps(meta))
    loaded = checkpoint.load(str(ckpt))
    loaded.verify_weights()  # nothing recorded: nothing to compare
    assert loaded.fingerprint() == checkpoint.file_sha256(ckpt / "model.safetensors") == recorded["model.safetensors"][
        "sha256"]


def test_reads_retry_storage_failures_and_name_damaged_files(monkeypatch, caplog):
    monkeypatch.setenv("BERTCLF_IO_RETRY_DELAY", "0")
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, Connection reset")
        return "rows"

    with caplog.at_level(logging.WARNING, logger="bertclf"):
        assert read_parquet_part("s3://b/in.parquet", flaky) == "rows"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "reading s3://b/in.parquet: attempt 1 of 5 failed" in lines[0]
    assert "Connection reset" in lines[0] and "retrying in 0.0s" in lines[0]

    def outage():
        raise OSError("curlCode: 28, Timeout was reached")

    with pytest.raises(StorageError, match=r"s3://b/in\.parquet: storage/network failure .*gave up after 5"):
        read_parquet_part("s3://b/in.parquet", outage)

    def corrupt():
        raise OSError("Couldn't deserialize thrift: don't know what type")

    with pytest.raises(UnreadableFileError, match=r"s3://b/in\.parquet is not a readable Parquet file"):
        read_parquet_part("s3://b/in.parquet", corrupt)


def test_a_units_failure_kind_is_decided_by_its_type_where_it_is_caught_not_by_its_message():
    from bertclf.errors import DataError, ScoreError, StorageError, UnreadableFileError, failure_kind
    from bertclf.records import UnitError, UnitResult
    from bertclf.storage import StorageInputError

    assert failure_kind(UnreadableFileError("x")) == "input"
    assert failure_kind(DataError("StorageError: looks like storage")) == "input"  # the message is not read
    assert failure_kind(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")) == "input"
    assert failure_kind(StorageError("DataError: looks like data")) == "storage"
    assert failure_kind(StorageInputError("no such bucket")) == "input"  # a wrong URI: fix it, don't retry
    assert failure_kind(RuntimeError("injected failure")) == "other"

    error = UnitError.of(DataError("/d/a.parquet: text column 'text' holds invalid UTF-8 (row 3)"))
    assert (error.kind, error.error_type, str(error)) == ("input", "DataError", f"DataError: {error.message}")
    result = UnitResult.from_json(UnitResult(unit="u", input="/d/a.parquet", error=error).to_json())
    assert result.error == error and not result.ok  # what crosses from the actor keeps its kind

    assert ScoreError("2 input file(s) failed", kinds=("input", "input")).bad_input_only
    assert not ScoreError("2 input file(s) failed", kinds=("input", "storage")).bad_input_only
    assert not ScoreError("2 input file(s) failed", kinds=("other",)).bad_input_only
    assert not ScoreError("row counts don't add up").bad_input_only  # not about files: exit 1


def test_units_failed_for_their_data_exit_2_any_other_failure_exit_1(monkeypatch, capsys):
    from bertclf import scoring
    from bertclf.errors import ScoreError

    def failing(kinds):
        def run(cfg):
            raise ScoreError("1 input file(s) failed:\n  /d/a.parquet: RuntimeError: reworded", kinds=kinds)
        return run

    argv = ["score", "--checkpoint", "c", "--input", "/d", "--output", "/o"]
    monkeypatch.setattr(scoring, "run", failing(("input",)))
    assert main(argv) == 2
    assert "bad input file(s), not retryable" in capsys.readouterr().err
    monkeypatch.setattr(scoring, "run", failing(("input", "other")))
    assert main(argv) == 1


def test_storage_failure_and_damaged_file_are_told_apart_on_local_files(tmp_path):
    path = tmp_path / "x.parquet"
    write_rows(path, _score_rows(10))
    _truncate(path)
    with pytest.raises(UnreadableFileError, match="x.parquet"):
        read_parquet_part(str(path), lambda: pq.read_table(str(path)))
    assert storage.is_transient(OSError("curlCode: 7, Could not connect to server"))
    assert not storage.is_transient(OSError("AWS Error ACCESS_DENIED: Access Denied (connection ok)"))


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_a_text_argument_that_is_not_unicode_exits_2_naming_it(command, tiny_ckpt):
    """Invalid UTF-8 in argv (a lone surrogate's bytes) is refused as serve refuses it: exit 2 naming the argument,
    no traceback, nothing loaded. Run as a process, so the bytes reach Python as a real shell passes them."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "bertclf.cli", command, "--checkpoint", str(tiny_ckpt), "fine",
                           b"\xed\xa0\x80 happy"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "text argument 2" in proc.stderr and "not valid Unicode" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout
