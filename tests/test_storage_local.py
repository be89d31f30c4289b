"""Local-filesystem storage: listing Parquet inputs, whole-object writes, directory commits, retries."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertclf import storage
from bertclf.storage import StorageError


def _parquet(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": [1, 2]}), str(path))
    return str(path)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "in"
    wanted = [_parquet(root / "a.parquet"), _parquet(root / "sub" / "b.parquet"),
              _parquet(root / "sub" / "deeper" / "c.parquet")]
    _parquet(root / "_tmp" / "hidden.parquet")
    _parquet(root / ".staging" / "hidden.parquet")
    _parquet(root / "_SUCCESS.parquet")
    _parquet(root / "sub" / ".part.parquet")
    (root / "notes.txt").write_text("x")
    (root / "_SUCCESS").write_text("")
    (root / "data.parquet.crc").write_text("")
    return root, sorted(wanted)


def test_list_directory_recursive_skips_hidden_and_other_files(tree):
    root, wanted = tree
    assert storage.list_parquet_files(str(root)) == wanted
    assert storage.list_parquet_files(str(root) + "/") == wanted


def test_list_directory_under_hidden_parent_still_listed(tmp_path):
    # only parts below the given directory count as hidden
    f = _parquet(tmp_path / "_work" / "in" / "a.parquet")
    assert storage.list_parquet_files(str(tmp_path / "_work" / "in")) == [f]


def test_list_single_file(tree):
    root, wanted = tree
    assert storage.list_parquet_files(wanted[0]) == [wanted[0]]


def test_list_glob(tree):
    root, wanted = tree
    assert storage.list_parquet_files(str(root / "sub" / "*.parquet")) == [str(root / "sub" / "b.parquet")]
    assert storage.list_parquet_files(str(root / "**" / "[abc].parquet")) == wanted


def test_list_of_sources_sorted_and_deduplicated(tree):
    root, wanted = tree
    got = storage.list_parquet_files([wanted[2], str(root / "sub"), wanted[0]])
    assert got == sorted(set(wanted))
    assert len(got) == len(set(got))


def test_list_missing_path_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(StorageError, match="does not exist") as exc:
        storage.list_parquet_files(missing)
    assert missing in str(exc.value)


def test_list_missing_in_list_named(tree, tmp_path):
    root, wanted = tree
    missing = str(tmp_path / "gone.parquet")
    with pytest.raises(StorageError) as exc:
        storage.list_parquet_files([wanted[0], missing])
    assert missing in str(exc.value)


def test_list_empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.csv").write_text("a")
    with pytest.raises(StorageError, match="no .parquet files") as exc:
        storage.list_parquet_files(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(exc.value)


def test_list_glob_without_match_and_empty_list(tmp_path):
    with pytest.raises(StorageError, match="matches no files"):
        storage.list_parquet_files(str(tmp_path / "*.parquet"))
    with pytest.raises(StorageError, match="no input"):
        storage.list_parquet_files([])


def test_unsupported_scheme():
    with pytest.raises(StorageError, match="gs://"):
        storage.list_parquet_files("gs://bucket/x.parquet")


def test_write_read_exists_delete(tmp_path):
    uri = str(tmp_path / "a" / "b" / "blob.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"hello")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"hello"
    storage.write_bytes(uri, b"again")  # overwrite whole
    assert storage.read_bytes(uri) == b"again"
    assert os.listdir(tmp_path / "a" / "b") == ["blob.bin"]  # no temp files left
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # deleting a missing object is a no-op


def test_file_uri_and_json(tmp_path):
    storage.write_json("file://" + str(tmp_path / "m.json"), {"b": 1, "a": [1, 2]})
    assert storage.read_json(str(tmp_path / "m.json")) == {"a": [1, 2], "b": 1}


def test_delete_directory(tmp_path):
    d = tmp_path / "d"
    _parquet(d / "x" / "a.parquet")
    storage.delete(str(d))
    assert not d.exists()


def test_read_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "missing"))


def _make_src(base, files):
    base.mkdir(parents=True)
    for name, data in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(data)
    return base


def _all_files(root):
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_replace_dir_replaces_and_cleans_up(tmp_path):
    out = tmp_path / "out" / "best"
    first = _make_src(tmp_path / "src1", {"model.bin": "v1", "old_only.txt": "x", "DONE": "1"})
    storage.replace_dir(first, str(out), marker="DONE")
    assert _all_files(out) == {"model.bin": "v1", "old_only.txt": "x", "DONE": "1"}
    second = _make_src(tmp_path / "src2", {"model.bin": "v2", "sub/extra.txt": "e", "DONE": "2"})
    storage.replace_dir(second, str(out), marker="DONE")
    assert _all_files(out) == {"model.bin": "v2", os.path.join("sub", "extra.txt"): "e", "DONE": "2"}
    assert sorted(os.listdir(tmp_path / "out")) == ["best"]  # no staging or trash dirs left behind
    assert _all_files(second) == {"model.bin": "v2", os.path.join("sub", "extra.txt"): "e", "DONE": "2"}


def test_check_writable_ok_and_leaves_nothing(tmp_path):
    target = tmp_path / "new" / "out"
    storage.check_writable(str(target))
    assert target.is_dir() and os.listdir(target) == []


def test_check_writable_under_regular_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    uri = str(blocker / "out")
    with pytest.raises(StorageError) as exc:
        storage.check_writable(uri)
    assert uri in str(exc.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_check_writable_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StorageError) as exc:
            storage.check_writable(str(ro / "out"))
        assert str(ro / "out") in str(exc.value)
    finally:
        ro.chmod(0o700)


def test_with_retries_transient_then_success():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("connection reset by peer")
        return "ok"

    assert storage.with_retries(flaky, "reading x", attempts=5, base_delay=0) == "ok"
    assert len(calls) == 3


def test_with_retries_gives_up_after_attempts():
    calls = []

    def always():
        calls.append(1)
        raise OSError("503 slow down")

    with pytest.raises(StorageError, match="reading s3://b/k"):
        storage.with_retries(always, "reading s3://b/k", attempts=3, base_delay=0)
    assert len(calls) == 3


@pytest.mark.parametrize("message", ["Access Denied", "AWS Error ACCESS_DENIED: Access Denied (connection ok)",
                                     "NoSuchBucket", "something odd"])
def test_with_retries_permanent_error_at_once(message):
    calls = []

    def denied():
        calls.append(1)
        raise OSError(message)

    with pytest.raises(StorageError, match="writing s3://b/k") as exc:
        storage.with_retries(denied, "writing s3://b/k", attempts=5, base_delay=10)  # a retry would sleep 10 s
    assert message in str(exc.value)
    assert len(calls) == 1


def test_with_retries_passes_missing_file_through():
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        storage.with_retries(missing, "x", base_delay=0)
    assert len(calls) == 1
