"""A total S3 outage ends: storage calls give up within a deadline, a lease that can't be renewed stops the run's
commits when it expires and is left to expire visibly, and a scoring run stops at its first unit that storage
failed (exit 1, no _SUCCESS), so its time doesn't grow with the number of units; a re-run completes exactly once.

A real S3 server (moto) behind tests/faults.py's FaultProxy, switched to reset or stall connections.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import pytest
from faults import FaultProxy

from bertclf import storage
from bertclf.dev.scores import read_scores
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.errors import StorageError
from bertclf.scoring import lease as leases
from bertclf.scoring.lease import LEASE, LeaseKeeper, OutputLeasedError, acquire, check_lease, read_lease


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """The S3 server behind a fault proxy; this process's S3 clients go through it."""
    px = FaultProxy(urlparse(s3_server).port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", px.endpoint)
    yield px
    px.close()


def test_an_unreachable_s3_ends_calls_at_the_deadline_and_an_expired_lease_stops_commits(proxy, bucket, monkeypatch,
                                                                                         caplog):
    """Fast representative (no Ray): a call that keeps failing stops at BERTCLF_IO_DEADLINE_S, not after every
    attempt; a lease whose renewals fail until it expires is lost (StorageError, exit 1), is left to expire with a
    warning, and once storage is back the run that held it can't commit and another run takes it over."""
    monkeypatch.setenv("BERTCLF_IO_DEADLINE_S", "2")
    monkeypatch.setenv("BERTCLF_IO_RETRY_DELAY", "0.2")
    monkeypatch.setattr(leases, "RELEASE_WAIT_S", 2.0)
    output = f"s3://{bucket}/scores/date=2026-11-22"
    storage.write_bytes(f"{output}/before", b"ok")

    proxy.set("reset")
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"gave up after \d attempt\(s\) in \d+s \(BERTCLF_IO_DEADLINE_S=2\)"):
        storage.write_bytes(f"{output}/during", b"x")
    assert time.monotonic() - started < 15, "the deadline, not 5 attempts of 3 S3 tries each"
    proxy.set("pass")

    with caplog.at_level(logging.WARNING, logger="bertclf"):
        keeper = LeaseKeeper(output, "20261122T010000Z-outage01", seconds=3).__enter__()
        proxy.set("reset")
        deadline = time.monotonic() + 30
        while not keeper.lost and time.monotonic() < deadline:
            time.sleep(0.2)
        assert keeper.lost_to_storage and "expired at" in keeper.lost, keeper.lost
        with pytest.raises(StorageError, match="while storage could not be reached.*part x not committed"):
            keeper.check("part x")
        started = time.monotonic()
        keeper.__exit__(None, None, None)
        assert time.monotonic() - started < 10
    assert "is left to expire at" in caplog.text

    proxy.set("pass")
    left = read_lease(output)  # expired, or deleted by the release still trying in the background once S3 is back
    assert left is None or (left.run_id == keeper.run_id and not left.live()), left
    with pytest.raises(OutputLeasedError, match="expired at|the lease is gone"):
        check_lease(output, keeper.run_id, "part y")  # an actor of the old run commits nothing more
    acquire(output, "20261122T020000Z-rerun001", seconds=60, settle=0)  # a re-run takes it over
    assert read_lease(output).run_id == "20261122T020000Z-rerun001"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reset", "stall"])
def test_a_scoring_run_ends_within_the_bound_when_s3_goes_away_and_a_rerun_completes_once(
        mode, proxy, bucket, tiny_model, tmp_path, monkeypatch):
    """Default retry settings; S3 goes away (reset or stalled connections) once the first part is committed. The
    run exits 1 within the documented bound (~15 s reset, ~4 min stall), writes no _SUCCESS and leaves or releases
    its lease; with S3 back a re-run on this host completes, every row once."""
    import ray

    from bertclf.cli import main

    for name in ("BERTCLF_S3_RETRIES", "BERTCLF_IO_ATTEMPTS", "BERTCLF_IO_RETRY_DELAY", "BERTCLF_IO_DEADLINE_S"):
        monkeypatch.delenv(name, raising=False)
    if ray.is_initialized():
        ray.shutdown()
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", tiny_model, "multi_label", [0.5, 0.5, 0.5])
    for i in range(3):
        rows = [{"id": f"f{i}-{j}", "text": r["text"]} for j, r in enumerate(make_rows(200, 70 + i, True))]
        write_rows(tmp_path / f"part-{i}.parquet", rows, row_group_size=50)
        storage.write_bytes(f"s3://{bucket}/in/part-{i}.parquet", (tmp_path / f"part-{i}.parquet").read_bytes())
    output = f"s3://{bucket}/scores"
    args = ["score", "--checkpoint", str(ckpt), "--input", f"s3://{bucket}/in/", "--output", output,
            "--precision", "fp32", "--num-actors", "2", "--set", "rows_per_unit=50"]
    went_away: dict = {}

    def outage_after_the_first_part():
        import boto3

        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{proxy.target_port}")  # straight to the server
        while not went_away:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="scores/").get("Contents", [])]
            if any(k.endswith(".parquet") for k in keys):
                proxy.set(mode)
                went_away["at"] = time.monotonic()
            time.sleep(0.1)

    watcher = threading.Thread(target=outage_after_the_first_part, daemon=True)
    watcher.start()
    # the first run is its own process, as a scheduler runs it: the re-run finds its lease's process gone
    proc = subprocess.run([sys.executable, "-m", "bertclf.cli", *args], capture_output=True, text=True, timeout=900)
    ended = time.monotonic()
    went_away.setdefault("at", None)
    code = proc.returncode
    assert went_away["at"] is not None, "the outage never started"
    took = ended - went_away["at"]
    print(f"outage ({mode}) to exit: {took:.1f}s")
    assert code == 1, proc.stderr[-3000:]
    assert "storage failed while scoring" in proc.stderr and "re-run to finish" in proc.stderr
    assert took < (60 if mode == "reset" else 330), took
    proxy.set("pass")
    names = storage.list_names(output)
    assert "_SUCCESS" not in names and "_manifest.json" not in names
    assert sum(n.endswith(".parquet") for n in names) < 12, "it stopped: the remaining units were not all scored"

    try:
        assert main(args) == 0, "the re-run takes the lease over (its holder is gone or expired) and finishes"
    finally:
        ray.shutdown()
    names = storage.list_names(output)
    assert "_SUCCESS" in names and LEASE not in names and sum(n.endswith(".parquet") for n in names) == 12
    ids = read_scores(output)["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 600
