"""URIs to filesystems: local paths and s3:// through pyarrow, configured from the standard AWS settings.

One place decides how a URI is opened, listed, written and committed, so training, scoring and the
tests all talk to object storage the same way production does.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from bertclf.errors import STORAGE_FAILURE, InputError, StorageError  # StorageError: still importable from here

T = TypeVar("T")
log = logging.getLogger(__name__)

# AWS settings that may travel to Ray workers (runtime_env): where and how to reach S3, never who we are.
AWS_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)
# Credentials: never copied anywhere (runtime_env, configs, logs, outputs). Ray records a runtime_env in its
# session logs, so workers take these from their own node (the `ray start` process's environment, a profile,
# an instance profile or IRSA), exactly as AWS tools do.
AWS_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


class StorageInputError(StorageError, InputError):
    """A URI that is wrong rather than unreachable: it doesn't exist, matches nothing, can't be written, or access
    is denied (exit 2: retrying the same command can't help)."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3FileSystem from the standard AWS settings, with retries for transient errors.

    pyarrow's own constructor ignores AWS_ENDPOINT_URL*, so the endpoint is read here; credentials
    stay with the default AWS chain (env, profile, instance profile) and never enter our objects.
    `allow_delayed_open`: an object smaller than one upload part (a scoring part, its reuse index, a lease, the
    manifest) is written with one PutObject, not a multipart upload's three requests (create, part, complete).
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s3_retries()),
        "connect_timeout": CONNECT_TIMEOUT_S,
        "request_timeout": REQUEST_TIMEOUT_S,  # curl's low-speed limit on Linux: this long without a byte fails
        "allow_delayed_open": True,  # errors of a write surface at its close: inside the same with_retries call
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        kwargs["allow_bucket_creation"] = False
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or s3:// URI."""
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://") :].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise StorageInputError(f"unsupported URI scheme in {uri!r}: use a local path or s3://")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def absolute(uri: str) -> str:
    """A local path made absolute on the driver (Ray workers run in other directories); s3:// unchanged."""
    return uri if is_s3(uri) else resolve(uri)[1]


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI without losing its scheme."""
    if is_s3(uri):
        return "s3://" + posixpath.join(uri[len("s3://") :].rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


# How long storage may fail before a call gives up, whatever the count of attempts: one attempt of a stalled network
# lasts s3_retries() x REQUEST_TIMEOUT_S (90 s by default), so attempts alone could take many minutes per call.
# With the defaults a call that keeps failing ends within IO_DEADLINE_S + one attempt: ~3.5 min (docs/reliability.md).
CONNECT_TIMEOUT_S = 10
REQUEST_TIMEOUT_S = 30
DEFAULT_S3_RETRIES = 3
DEFAULT_IO_DEADLINE_S = 120.0


def s3_retries() -> int:
    """Tries of one request inside pyarrow's S3 client (BERTCLF_S3_RETRIES, default 3): each is bounded by the
    connect and request timeouts, so this also bounds how long one of our attempts can hang."""
    return max(1, int(os.environ.get("BERTCLF_S3_RETRIES", DEFAULT_S3_RETRIES)))


def io_deadline() -> float:
    """Seconds a call may keep failing before it stops retrying (BERTCLF_IO_DEADLINE_S, default 120)."""
    return float(os.environ.get("BERTCLF_IO_DEADLINE_S", DEFAULT_IO_DEADLINE_S))


def io_attempts() -> int:
    """How many times one read or write is tried (BERTCLF_IO_ATTEMPTS, default 5); each try is itself retried by
    pyarrow's S3 client (BERTCLF_S3_RETRIES)."""
    return max(1, int(os.environ.get("BERTCLF_IO_ATTEMPTS", "5")))


def retry_delay(attempt: int, base_delay: float | None = None) -> float:
    """Seconds to wait after failed attempt `attempt` (0-based): BERTCLF_IO_RETRY_DELAY (0.5) doubled per attempt."""
    base = float(os.environ.get("BERTCLF_IO_RETRY_DELAY", "0.5")) if base_delay is None else base_delay
    return base * 2**attempt


def retry_or_raise(exc: OSError, attempt: int, attempts: int, what: str, base_delay: float | None = None,
                   started: float | None = None) -> None:
    """After a failed attempt: log one line and wait when the error is transient and attempts are left; otherwise
    raise StorageError (transient, out of attempts, or failing since `started` (time.monotonic()) for longer than
    io_deadline()), StorageInputError (permanent: denied, no such bucket) or StorageError naming `what`."""
    if is_permanent(exc):
        raise StorageInputError(f"{what}: {exc} (permanent: check the URI, bucket and permissions)") from exc
    if not is_transient(exc):
        raise StorageError(f"{what}: {exc}") from exc
    if attempt >= attempts - 1:
        raise StorageError(f"{what}: {STORAGE_FAILURE}; gave up after {attempts} attempt(s): {exc}") from exc
    wait = retry_delay(attempt, base_delay)
    failing = time.monotonic() - started if started is not None else 0.0
    if failing + wait >= io_deadline():
        raise StorageError(f"{what}: {STORAGE_FAILURE}; gave up after {attempt + 1} attempt(s) in {failing:.0f}s "
                           f"(BERTCLF_IO_DEADLINE_S={io_deadline():g}): {exc}") from exc
    log.warning("%s: attempt %d of %d failed (%s): %s; retrying in %.1fs", what, attempt + 1, attempts,
                STORAGE_FAILURE, _one_line(exc), wait)
    time.sleep(wait)


def with_retries(fn: Callable[[], T], what: str, attempts: int | None = None, base_delay: float | None = None) -> T:
    """Retry an I/O call on transient errors (connection, timeout, throttling, 5xx) with exponential backoff,
    logging one line per failed attempt (attempt n of N, what and where, the error, the wait), for at most
    io_attempts() attempts and io_deadline() seconds of failing.

    A missing file (or a local permission error) is raised as it is; a permanent error (access denied, no such
    bucket) at once as StorageInputError; transient errors that outlast the attempts as StorageError saying a retry
    may help; other errors at once as StorageError naming `what`.
    """
    attempts = attempts or io_attempts()
    started = time.monotonic()
    for attempt in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
            raise
        except OSError as exc:
            retry_or_raise(exc, attempt, attempts, what, base_delay, started)
    raise AssertionError("unreachable")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


_PERMANENT = ("access denied", "access_denied", "nosuchbucket", "no such bucket", "invalidaccesskeyid",
              "signaturedoesnotmatch", "forbidden", "403")
_TRANSIENT = ("timeout", "timed out", "connection", "connect", "network", "throttl", "slow down", "503", "500",
              "502", "504", "reset", "curl", "broken pipe", "temporarily", "unavailable", "internal error",
              "internal_failure", "flush response stream")


def is_permanent(exc: BaseException) -> bool:
    """A storage error no retry can fix: access denied, no such bucket, bad credentials."""
    text = str(exc).lower()
    return any(word in text for word in _PERMANENT)


def is_transient(exc: BaseException) -> bool:
    """An error worth retrying: the network or the store failed, not the request or the data."""
    return not is_permanent(exc) and any(word in str(exc).lower() for word in _TRANSIENT)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    info = with_retries(lambda: fs.get_file_info(path), f"checking {uri}")
    return info.type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)

    def _read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return with_retries(_read, f"reading {uri}")


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object whole: a single S3 PUT, or a temp file renamed into place locally."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return

    def _write() -> None:
        with fs.open_output_stream(path) as f:
            f.write(data)

    with_retries(_write, f"writing {uri}")


def read_json(uri: str) -> dict:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: object) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        with_retries(lambda: fs.delete_dir(path), f"deleting {uri}")
    elif info.type == pafs.FileType.File:
        with_retries(lambda: fs.delete_file(path), f"deleting {uri}")


def check_writable(uri: str) -> None:
    """Fail early, naming the URI, when an output location can't be written."""
    probe = join(uri, f".bertclf-write-probe-{uuid.uuid4().hex[:8]}")
    try:
        fs, path = resolve(uri)
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(path, exist_ok=True)
        else:
            _check_bucket(fs, path, uri)
        write_bytes(probe, b"ok")
        delete(probe)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageInputError(f"output {uri} is not writable: {exc}") from exc


def _check_bucket(fs: pafs.FileSystem, path: str, uri: str) -> None:
    bucket = path.split("/", 1)[0]
    info = with_retries(lambda: fs.get_file_info(bucket), f"checking bucket of {uri}")
    if info.type == pafs.FileType.NotFound:
        raise StorageInputError(f"bucket s3://{bucket} (from {uri}) does not exist or is not reachable")


def list_parquet_files(source: str | Sequence[str]) -> list[str]:
    """Expand a directory, glob or list of Parquet URIs into a sorted list of file URIs.

    Raises StorageError naming the path (or bucket) that doesn't exist or matches no files.
    """
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise StorageInputError("no input given: pass a Parquet file, directory, glob or list")
    files: list[str] = []
    for src in sources:
        files.extend(_expand_one(src))
    return sorted(dict.fromkeys(files))


def _expand_one(src: str) -> list[str]:
    fs, path = resolve(src)
    if isinstance(fs, pafs.S3FileSystem):
        _check_bucket(fs, path, src)
    if any(ch in path for ch in "*?["):
        return _expand_glob(fs, path, src)
    info = with_retries(lambda: fs.get_file_info(path), f"listing {src}")
    if info.type == pafs.FileType.NotFound:
        raise StorageInputError(f"input {src} does not exist")
    if info.type == pafs.FileType.File:
        return [to_uri(fs, path)]
    selector = pafs.FileSelector(path, recursive=True)
    infos = with_retries(lambda: fs.get_file_info(selector), f"listing {src}")
    found = [
        to_uri(fs, i.path)
        for i in infos
        if i.type == pafs.FileType.File and is_data_file(i.path[len(path):].lstrip("/"))
    ]
    if not found:
        raise StorageInputError(f"input directory {src} contains no .parquet files")
    return found


def is_data_file(relative_path: str) -> bool:
    """A Parquet file that readers of a dataset see: side files (`_manifest.json`, `_parts`, `_reuse/`)
    and hidden ones start with "_" or ".", which Parquet readers (pandas, pyarrow datasets, Spark) skip."""
    return relative_path.endswith(".parquet") and not any(
        part.startswith((".", "_")) for part in relative_path.split("/"))


def _expand_glob(fs: pafs.FileSystem, pattern: str, src: str) -> list[str]:
    if isinstance(fs, pafs.LocalFileSystem):
        found = [p for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p)]
    else:
        prefix = pattern[: min(pattern.find(c) for c in "*?[" if c in pattern)]
        base = prefix.rsplit("/", 1)[0]
        infos = with_retries(lambda: fs.get_file_info(pafs.FileSelector(base, recursive=True)), f"listing {src}")
        found = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern)]
    if not found:
        raise StorageInputError(f"input glob {src} matches no files")
    return [to_uri(fs, p) for p in found]


def upload_dir(local_dir: str | Path, uri: str, last: Iterable[str] = ()) -> None:
    """Copy a local directory to a URI; the names in `last` are copied after everything else.

    Writing the marker file last is what makes a directory 'committed' on stores without rename.
    """
    local_dir = Path(local_dir)
    last = set(last)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    ordered = [p for p in files if p.name not in last] + [p for p in files if p.name in last]
    for p in ordered:
        write_bytes(join(uri, *p.relative_to(local_dir).parts), p.read_bytes())


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy every file under a URI into a local directory (used for s3:// checkpoints and models)."""
    fs, path = resolve(uri)
    local_dir = Path(local_dir)
    infos = with_retries(lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True)), f"listing {uri}")
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        target = local_dir / info.path[len(path) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(to_uri(fs, info.path)))
    return local_dir


def replace_dir(local_src: str | Path, uri: str, marker: str) -> None:
    """Commit a finished local directory at `uri`, replacing what was there.

    Locally: copy to a sibling temp dir, then swap it in with renames. On S3 (no rename): the old
    marker is deleted first and the new one written last, so a reader never sees a mixed directory
    as committed.
    """
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
        shutil.copytree(local_src, staging, dirs_exist_ok=True)
        trash = f"{path}.old-{uuid.uuid4().hex[:8]}"
        if os.path.exists(path):
            os.rename(path, trash)
        os.rename(staging, path)
        shutil.rmtree(trash, ignore_errors=True)
        return
    marker_uri = join(uri, marker)
    if exists(marker_uri):
        delete(marker_uri)
    if exists(uri):
        delete(uri)
    upload_dir(local_src, uri, last=[marker])


def aws_env() -> dict[str, str]:
    """The non-secret AWS settings of this process (endpoint, region, profile, retries), to hand to Ray workers
    through runtime_env. Credentials are left out on purpose: see AWS_CREDENTIAL_VARS."""
    return {k: os.environ[k] for k in AWS_ENV_VARS if os.environ.get(k)}


def without_credentials(env: dict[str, str]) -> dict[str, str]:
    """`env` less every AWS credential variable: what may go into a runtime_env or a log line."""
    return {k: v for k, v in env.items() if k not in AWS_CREDENTIAL_VARS}


def local_copy(uri: str, key_file: str) -> Path:
    """A local directory with the contents of `uri`: the directory itself, or a cached download.

    The cache key includes the bytes of `key_file` (e.g. bertclf.json), so a directory rewritten in
    place is downloaded again. Raises FileNotFoundError naming the URI when `key_file` is missing.
    """
    if not is_s3(uri):
        local = Path(resolve(uri)[1])
        if not (local / key_file).is_file():
            raise FileNotFoundError(f"{uri} has no {key_file}")
        return local
    marker = join(uri, key_file)
    if not exists(marker):
        raise FileNotFoundError(f"{uri} has no {key_file}")
    digest = hashlib.sha256(uri.encode() + read_bytes(marker)).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "bertclf-cache" / digest
    if not (cache / key_file).is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache.parent))
        download_dir(uri, staging)
        try:
            os.rename(staging, cache)
        except OSError:  # another process on this node finished the same download first
            shutil.rmtree(staging, ignore_errors=True)
    return cache


def upload_file(local_path: str | Path, uri: str, chunk: int = 8 << 20) -> None:
    """Put a local file at `uri` whole: renamed into place locally, one (multipart) upload on S3."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)
        return

    def _upload() -> None:
        with open(local_path, "rb") as src, fs.open_output_stream(path) as dst:
            for block in iter(lambda: src.read(chunk), b""):
                dst.write(block)

    with_retries(_upload, f"writing {uri}")


def copy_file(src: str, dst: str) -> None:
    """Copy a file's bytes whole: server-side within S3 (CopyObject), renamed into place locally, else streamed."""
    src_fs, src_path = resolve(src)
    dst_fs, dst_path = resolve(dst)
    if isinstance(src_fs, pafs.LocalFileSystem):
        upload_file(src_path, dst)
        return
    if type(src_fs) is type(dst_fs):
        with_retries(lambda: dst_fs.copy_file(src_path, dst_path), f"copying {src} to {dst}")
        return
    if isinstance(dst_fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(dst_path), exist_ok=True)
    with_retries(lambda: pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs),
                 f"copying {src} to {dst}")


def list_names(uri: str) -> set[str]:
    """Names of the files directly under a URI (empty when it doesn't exist yet)."""
    fs, path = resolve(uri)
    infos = with_retries(lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)), f"listing {uri}")
    return {posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File}


# the storage interface other modules, jobs and benchmarks use
__all__ = ["AWS_CREDENTIAL_VARS", "AWS_ENV_VARS", "StorageError", "StorageInputError", "absolute", "aws_env",
           "check_writable", "copy_file", "delete", "download_dir", "exists", "io_attempts", "io_deadline",
           "is_data_file", "is_permanent", "is_s3", "is_transient", "join", "list_names", "list_parquet_files",
           "local_copy", "read_bytes", "read_json", "replace_dir", "resolve", "retry_delay", "retry_or_raise",
           "s3_filesystem", "s3_retries", "to_uri", "upload_dir", "upload_file", "with_retries", "without_credentials",
           "write_bytes", "write_json"]
