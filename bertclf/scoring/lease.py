"""One scoring run at a time per output: the lease `_lease.json`, taken before anything is written.

A run writes `_lease.json` (its run id, host, pid, expiry), renews it while it works, checks it before committing
each part (in the actors), `_plan.json`, `_manifest.json` and `_SUCCESS`, and deletes it at the end. A second run
finds a live lease and is refused (OutputLeasedError, exit 2, naming the holder and its expiry); an expired lease,
or one whose process is gone from this host, is taken over with a warning.

Object stores give no compare-and-swap here (moto has none; pyarrow can't send S3's If-None-Match), so taking the
lease is: read, write, wait `settle` seconds, read back. Two runs that start within that window both write; the
last writer wins, the other reads back the winner and stops before committing anything. The window left: a run
that checked the lease just before losing it can still finish the one part upload it started (seconds); the check
of every part's checkpoint and settings before `_SUCCESS` (bertclf.scoring.manifest.check_parts) then refuses
the mixed output. Locally the first lease is created with an atomic link, so only takeovers race. Expiry is a
wall-clock time: hosts must agree on the time to within minutes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid

import pyarrow.fs as pafs

from bertclf import storage
from bertclf.errors import STORAGE_FAILURE, InputError, RecordError
from bertclf.records import Lease

LEASE = "_lease.json"
DEFAULT_SECONDS = 600.0  # BERTCLF_LEASE_SECONDS overrides; renewed every quarter of it
RELEASE_WAIT_S = 30.0  # at the end of a run: how long the lease's release may take before it is left to expire
DEFAULT_SETTLE = 1.0  # BERTCLF_LEASE_SETTLE_S: the wait between writing the lease and reading it back

log = logging.getLogger(__name__)


class OutputLeasedError(InputError):
    """Another live run holds the output (exit 2): running this one too would mix two runs' parts."""


def new_run_id() -> str:
    """A run id that sorts by start time and is unique across hosts."""
    return f"{_now():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def lease_seconds() -> float:
    return float(os.environ.get("BERTCLF_LEASE_SECONDS", DEFAULT_SECONDS))


def read_lease(output: str) -> Lease | None:
    """The output's lease, or None when there is none (an unreadable one counts as none, with a warning)."""
    try:
        return Lease.from_json(storage.read_bytes(storage.join(output, LEASE)))
    except FileNotFoundError:
        return None
    except RecordError as exc:
        log.warning("%s: unreadable lease (%s): treated as expired", storage.join(output, LEASE), exc)
        return None


def check_lease(output: str, run_id: str, what: str) -> None:
    """Raise OutputLeasedError unless `run_id` holds a live lease on `output`: called before every commit."""
    lease = read_lease(output)
    if lease is not None and lease.run_id == run_id and lease.live():
        return
    holder = "no run (the lease is gone)" if lease is None else (
        f"its own lease, expired at {lease.expires}" if lease.run_id == run_id else lease.describe())
    raise OutputLeasedError(f"run {run_id} no longer holds {output} ({holder} holds it): {what} not committed; "
                            "another run took the output over")


def acquire(output: str, run_id: str, seconds: float | None = None, settle: float | None = None) -> Lease:
    """Take the output's lease for `run_id`, or raise OutputLeasedError naming the run that holds it."""
    uri = storage.join(output, LEASE)
    current = read_lease(output)
    if current is not None and current.run_id != run_id:
        if current.live() and not _process_gone(current):
            raise _held(output, current)
        why = "its process is gone from this host" if current.live() else f"it expired at {current.expires}"
        log.warning("taking over the lease on %s from %s: %s", output, current.describe(), why)
    lease = _lease(run_id, seconds)
    try:
        _write(uri, lease, exclusive=current is None)
    except FileExistsError:  # another run created it between our read and our write
        raise _held(output, read_lease(output) or lease) from None
    time.sleep(float(os.environ.get("BERTCLF_LEASE_SETTLE_S", DEFAULT_SETTLE)) if settle is None else settle)
    back = read_lease(output)
    if back is None or back.run_id != run_id:
        raise _held(output, back, raced=True)
    log.info("lease on %s taken by run %s until %s", output, run_id, lease.expires)
    return lease


def renew(output: str, run_id: str, seconds: float | None = None) -> Lease:
    """Push the expiry out, if `run_id` still holds the lease (OutputLeasedError otherwise)."""
    check_lease(output, run_id, "the lease renewal")
    lease = _lease(run_id, seconds)
    _write(storage.join(output, LEASE), lease, exclusive=False)
    back = read_lease(output)
    if back is None or back.run_id != run_id:
        raise _held(output, back, raced=True)
    return lease


def release(output: str, run_id: str) -> None:
    """Delete the lease if `run_id` still holds it (never another run's)."""
    lease = read_lease(output)
    if lease is not None and lease.run_id == run_id:
        storage.delete(storage.join(output, LEASE))
        log.info("lease on %s released by run %s", output, run_id)


class LeaseKeeper:
    """Holds an output's lease for one run: taken on enter, renewed in a background thread, released on exit.

    `lost` is set when a renewal finds another run holding the output, or when renewals failed (storage
    unreachable) until the lease's own expiry passed: from then on another run may take the output, so this one
    commits nothing more (the driver stops at the next unit; the actors read the lease before each part). Release
    waits at most RELEASE_WAIT_S: with storage down the lease is left to expire, and the log says when.
    """

    def __init__(self, output: str, run_id: str, seconds: float | None = None):
        self.output, self.run_id = output, run_id
        self.seconds = lease_seconds() if seconds is None else seconds
        self.lost: str | None = None
        self.lost_to_storage = False
        self.expires: dt.datetime | None = None  # of the last lease this run wrote
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="bertclf-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self.expires = dt.datetime.fromisoformat(acquire(self.output, self.run_id, self.seconds).expires)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        deadline = time.monotonic() + RELEASE_WAIT_S
        self._stop.set()
        self._thread.join(timeout=RELEASE_WAIT_S)
        released = threading.Event()

        def _release() -> None:
            try:
                release(self.output, self.run_id)
                released.set()
            except (OSError, storage.StorageError) as err:  # it expires on its own; the run's outcome stands
                log.warning("could not release the lease on %s: %s", self.output, err)

        thread = threading.Thread(target=_release, name="bertclf-lease-release", daemon=True)
        thread.start()
        thread.join(timeout=max(1.0, deadline - time.monotonic()))
        if not released.is_set():
            log.warning("the lease on %s of run %s is left to expire at %s (storage did not answer within %.0fs): "
                        "a re-run on this host takes it over at once, elsewhere after that time", self.output,
                        self.run_id, self.expires.isoformat() if self.expires else "?", RELEASE_WAIT_S)

    def check(self, what: str) -> None:
        """Raise unless this run still holds the output (read from storage, not remembered): OutputLeasedError, or
        StorageError when the lease expired because storage could not be reached to renew it."""
        if self.lost:
            if self.lost_to_storage:
                raise storage.StorageError(f"{self.lost}: {what} not committed; {STORAGE_FAILURE}")
            raise OutputLeasedError(f"{self.lost}: {what} not committed")
        check_lease(self.output, self.run_id, what)

    def _renew_loop(self) -> None:
        wait = max(1.0, self.seconds / 4)
        while not self._stop.wait(wait):
            try:
                self.expires = dt.datetime.fromisoformat(renew(self.output, self.run_id, self.seconds).expires)
                wait = max(1.0, self.seconds / 4)
            except OutputLeasedError as err:
                self.lost = str(err)
                log.error("%s", err)
                return
            except (OSError, storage.StorageError) as err:  # transient: the next renewal may succeed
                if self.expires is not None and _now() >= self.expires:
                    self.lost_to_storage = True
                    self.lost = (f"run {self.run_id}'s lease on {self.output} expired at {self.expires.isoformat()} "
                                 f"while storage could not be reached to renew it ({err})")
                    log.error("%s: this run commits nothing more", self.lost)
                    return
                log.warning("renewing the lease on %s failed: %s (it expires at %s)", self.output, err,
                            self.expires.isoformat() if self.expires else "?")
                wait = max(1.0, min(wait, 15.0))  # try again soon: the lease runs out meanwhile


def _held(output: str, holder: Lease | None, raced: bool = False) -> OutputLeasedError:
    who = holder.describe() if holder else "another run (its lease is already gone)"
    how = "took it at the same moment (last writer wins)" if raced else "holds it"
    return OutputLeasedError(f"{output} is being scored by another run: {who} {how}. Two runs on one output would "
                             f"mix their parts; this run scored and committed nothing. Wait for that run, or if it "
                             f"died, re-run after its lease expires")


def _lease(run_id: str, seconds: float | None) -> Lease:
    now = _now()
    return Lease(run_id=run_id, host=socket.gethostname(), pid=os.getpid(), acquired=now.isoformat(),
                 expires=(now + dt.timedelta(seconds=lease_seconds() if seconds is None else seconds)).isoformat())


def _write(uri: str, lease: Lease, exclusive: bool) -> None:
    """One whole object; locally a first lease is linked into place, which fails if another run made one."""
    data = (lease.to_json(indent=2) + "\n").encode()
    fs, path = storage.resolve(uri)
    if not (exclusive and isinstance(fs, pafs.LocalFileSystem)):
        storage.write_bytes(uri, data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _process_gone(lease: Lease) -> bool:
    """True when the holder ran on this host and its process no longer exists (a driver killed hard)."""
    if lease.host != socket.gethostname() or lease.pid == os.getpid():
        return False
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


__all__ = ["LEASE", "Lease", "LeaseKeeper", "OutputLeasedError", "acquire", "check_lease", "lease_seconds",
           "new_run_id", "read_lease", "release", "renew"]
