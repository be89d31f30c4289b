"""One output, one checkpoint: the scoring lease, resume checks and a manifest counted from the committed parts.

Real local Ray (tests/conftest.py) and a real S3 server for the lease race; the fault hook tests/faults.py
FAIL_UNIT makes a partly scored output.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections import Counter

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bertclf import storage
from bertclf.config import ScoreConfig
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.errors import InputError
from bertclf.records import Lease, PartStats, WorkUnit
from bertclf.scoring import ScoreError, run
from bertclf.scoring.actor import PART_CHECKPOINT_KEY, read_part_stats
from bertclf.scoring.lease import LEASE, OutputLeasedError, acquire, read_lease, release, renew
from bertclf.scoring.manifest import ResumeMismatchError
from bertclf.scoring.parts import PartsFold

THRESHOLDS = [0.45, 0.5, 0.55]


@pytest.fixture(scope="module")
def checkpoints(tiny_model, tmp_path_factory):
    """Two checkpoints of the tiny BERT with different random heads: different weights, same labels."""
    return [save_tiny_checkpoint(tmp_path_factory.mktemp(f"ckpt{i}"), tiny_model, "multi_label", THRESHOLDS)
            for i in range(2)]


@pytest.fixture
def corpus(tmp_path):
    """Two input files of 100 rows in row groups of 25: 8 units on 2 actors."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(2):
        rows = [{"id": f"f{i}-{j}", "text": r["text"]} for j, r in enumerate(make_rows(100, 40 + i, True))]
        write_rows(root / f"part-{i}.parquet", rows, row_group_size=25)
    return root


def _cfg(ckpt, corpus, output, **kw) -> ScoreConfig:
    return ScoreConfig(**{**dict(checkpoint=str(ckpt), input=str(corpus), output=str(output), precision="fp32",
                                 rows_per_unit=25, read_batch_rows=64), **kw})


def _sha(ckpt) -> str:
    from bertclf.model import checkpoint

    return checkpoint.load(str(ckpt)).fingerprint()


def _foreign_lease(output, minutes: float, run_id: str = "20261122T010000Z-othr0001") -> Lease:
    now = dt.datetime.now(dt.timezone.utc)
    lease = Lease(run_id=run_id, host="other-host", pid=4242, acquired=now.isoformat(),
                  expires=(now + dt.timedelta(minutes=minutes)).isoformat())
    storage.write_bytes(storage.join(str(output), LEASE), lease.to_json().encode())
    return lease


def _parts(output) -> list[str]:
    return sorted(n for n in storage.list_names(str(output)) if n.endswith(".parquet"))


def test_a_live_lease_of_another_run_is_refused_with_exit_2_and_nothing_committed(checkpoints, corpus, tmp_path,
                                                                                  capsys):
    from bertclf.cli import main

    output = tmp_path / "out"
    lease = _foreign_lease(output, minutes=10)
    code = main(["score", "--checkpoint", str(checkpoints[0]), "--input", str(corpus), "--output", str(output),
                 "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert lease.run_id in err and "other-host" in err and lease.expires in err
    assert storage.list_names(str(output)) == {LEASE}, "no plan, part, manifest or _SUCCESS"
    assert read_lease(str(output)) == lease, "the holder's lease is left alone"


@pytest.mark.slow  # three runs end to end; the mid-run takeover and the refused complete output run by default
def test_expired_lease_taken_over_resume_with_another_checkpoint_refused_overwrite_starts_clean(
        ray_local, checkpoints, corpus, tmp_path, caplog):
    """A run takes over an expired lease and fails half-way; finishing it with another checkpoint or precision is
    refused (exit 2) naming what differs; --overwrite scores it all again and every part names the new checkpoint;
    the manifest's numbers are those of the committed parts."""
    output = tmp_path / "out"
    _foreign_lease(output, minutes=-1)
    (ray_local / "fail_unit").write_text("part-1")
    try:
        with caplog.at_level("WARNING", logger="bertclf"), pytest.raises(ScoreError, match="injected failure"):
            run(_cfg(checkpoints[0], corpus, output))
    finally:
        (ray_local / "fail_unit").unlink()
    assert "taking over the lease" in caplog.text and "expired at" in caplog.text
    partial = _parts(output)
    assert len(partial) == 4 and LEASE not in storage.list_names(str(output)), "released after a failure too"

    with pytest.raises(ResumeMismatchError, match=r"4 of its 4 part\(s\) differ.*checkpoint: sha256") as refused:
        run(_cfg(checkpoints[1], corpus, output))
    assert isinstance(refused.value, InputError) and "--overwrite" in str(refused.value)
    with pytest.raises(ResumeMismatchError, match=r'precision: "fp32" vs "bf16"'):
        run(_cfg(checkpoints[0], corpus, output, precision="bf16"))
    assert _parts(output) == partial and "_SUCCESS" not in storage.list_names(str(output))

    summary = run(_cfg(checkpoints[1], corpus, output, overwrite=True))
    assert summary.units_scored == 8 and summary.units_skipped == 0, "overwrite starts clean: no old part is kept"
    assert LEASE not in storage.list_names(str(output)), "the lease is released at the end"
    sha = _sha(checkpoints[1])
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["checkpoint"]["sha256"] == sha and manifest["run_id"] == summary.run_id
    assert manifest["part_runs"] == {summary.run_id: 8}
    for name in _parts(output):
        stats = read_part_stats(str(output / name))
        assert stats.run_id == summary.run_id and stats.checkpoint_sha256 == sha
        assert stats.scored_with == manifest["scored_with"] and stats.scored_with["max_length"] == 32
        assert pq.read_metadata(output / name).metadata[PART_CHECKPOINT_KEY.encode()].decode() == sha

    # the manifest's numbers are what the committed parts hold
    table = pq.read_table(str(output))
    assert manifest["rows_out"] == table.num_rows == 200
    held = Counter(pc.list_flatten(table["predicted"]).to_pylist())
    assert manifest["predicted_label_counts"] == dict(sorted(held.items()))
    # the parts are listed in _parts, not in the manifest, whose size must not grow with the corpus
    assert manifest["format"] == 2 and manifest["parts"] == [] and manifest["parts_file"] == "_parts"
    listed = pq.read_table(output / "_parts").to_pylist()
    assert {p["name"]: p["rows_out"] for p in listed} == {n: pq.read_metadata(output / n).num_rows
                                                          for n in _parts(output)}
    assert {p["run_id"] for p in listed} == {summary.run_id} and all(p["seconds"] > 0 for p in listed)


def test_a_lease_taken_over_mid_run_stops_every_commit(ray_local, checkpoints, corpus, tmp_path, monkeypatch):
    """Another run takes the output after this one planned it: the actors check the lease before each part and
    commit nothing; the run fails with exit-2 OutputLeasedError naming the new holder; no _SUCCESS."""
    from bertclf.scoring import driver

    output = tmp_path / "out"
    thief = "20261122T020000Z-thief001"
    unit_plan = driver.unit_plan

    def plan_then_lose_the_lease(*args, **kwargs):
        plan = unit_plan(*args, **kwargs)
        _foreign_lease(output, minutes=10, run_id=thief)
        return plan

    monkeypatch.setattr(driver, "unit_plan", plan_then_lose_the_lease)
    with pytest.raises(OutputLeasedError, match=thief):
        run(_cfg(checkpoints[0], corpus, output, num_actors=1))
    assert _parts(output) == [] and "_SUCCESS" not in storage.list_names(str(output))
    assert read_lease(str(output)).run_id == thief, "the new holder's lease is not released by the loser"


def test_a_part_from_another_checkpoint_or_run_plan_blocks_success():
    unit = WorkUnit("in/a.parquet", (0,), 10, 0)
    good = PartStats(unit=unit.name, input=unit.uri, row_groups=[0], rows_in=10, rows_out=10, empty_texts=0,
                     label_counts={"x": 4}, checkpoint_sha256="a" * 64, scored_with={"precision": "fp32"}, run_id="r1",
                     prob_histograms={"x": [1] * 10 + [0] * 10})

    def fold_of(*parts: PartStats) -> PartsFold:
        fold = PartsFold(["x"], "a" * 64, {"precision": "fp32"})
        for stats in parts:
            fold.add(unit, stats)
        return fold

    fold = fold_of(good, good)
    fold.check("out", [unit], {unit.name})
    assert fold.label_counts == {"x": 8} and fold.score_histograms["x"][:2] == [2, 2] and fold.rows_out == 20
    foreign = PartStats(**{**good.__dict__, "checkpoint_sha256": "b" * 64, "run_id": "r2"})
    with pytest.raises(ScoreError, match=r"run r2\): checkpoint: sha256 bbbb"):
        fold_of(foreign).check("out", [unit], {unit.name})
    short = PartStats(**{**good.__dict__, "rows_in": 7})
    with pytest.raises(ScoreError, match="planned 10 rows"):
        fold_of(short).check("out", [unit], {unit.name})
    old = PartStats(**{**good.__dict__, "checkpoint_sha256": "", "scored_with": {}})
    with pytest.raises(ScoreError, match="not recorded"):
        fold_of(old).check("out", [unit], {unit.name})
    with pytest.raises(ScoreError, match=r"(?s)1 part\(s\) of out are missing.*a-.*no committed part of in/a.parquet"):
        fold_of().check("out", [unit], {unit.name})
    with pytest.raises(ScoreError, match="was read, then deleted"):
        fold_of(good).check("out", [unit], set())


def test_lease_on_s3_refuses_a_live_holder_and_the_loser_of_a_race_sees_the_winner(bucket):
    output = f"s3://{bucket}/scores/date=2026-11-22"
    assert read_lease(output) is None
    acquire(output, "run-a", seconds=60, settle=0)
    with pytest.raises(OutputLeasedError, match="run run-a .* holds it"):
        acquire(output, "run-b", seconds=60, settle=0)
    renew(output, "run-a", seconds=60)
    release(output, "run-b")  # not the holder: nothing happens
    assert read_lease(output).run_id == "run-a"
    release(output, "run-a")
    assert read_lease(output) is None

    # run-c writes, then run-d writes within run-c's settle window: the last writer wins, run-c reads it back
    def late_writer():
        time.sleep(0.2)
        _foreign_lease(output, minutes=10, run_id="run-d")

    thread = threading.Thread(target=late_writer)
    thread.start()
    with pytest.raises(OutputLeasedError, match="run run-d .* at the same moment"):
        acquire(output, "run-c", seconds=60, settle=1.0)
    thread.join()
    assert read_lease(output).run_id == "run-d"


@pytest.mark.slow
def test_two_runs_with_different_checkpoints_on_one_output(ray_local, checkpoints, corpus, tmp_path):
    """Two real runs at once: the second is refused while the first holds the output; the output is one
    checkpoint's."""
    output = tmp_path / "out"
    first: dict = {}

    def score_first():
        try:
            first["summary"] = run(_cfg(checkpoints[0], corpus, output))
        except Exception as exc:  # noqa: BLE001 - reported below
            first["error"] = exc

    thread = threading.Thread(target=score_first)
    thread.start()
    deadline = time.time() + 60
    while read_lease(str(output)) is None and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    with pytest.raises(OutputLeasedError, match="is being scored by another run"):
        run(_cfg(checkpoints[1], corpus, output))
    thread.join(timeout=300)
    assert "error" not in first and first["summary"].rows_out == 200
    sha = _sha(checkpoints[0])
    assert {read_part_stats(str(output / n)).checkpoint_sha256 for n in _parts(output)} == {sha}
    assert json.loads((output / "_manifest.json").read_text())["checkpoint"]["sha256"] == sha


def test_a_complete_output_of_another_checkpoint_is_refused_not_reported_done(ray_local, checkpoints, corpus,
                                                                              tmp_path, capsys):
    """Checkpoint A completed the output: scoring it with B exits 2 naming both checkpoints and --overwrite, and A's
    scores stay; A again (same settings) is 'already complete'; A with another precision is refused too."""
    from bertclf.cli import main

    output = tmp_path / "out"
    run(_cfg(checkpoints[0], corpus, output))
    before = {n: (output / n).read_bytes() for n in _parts(output)}
    code = main(["score", "--input", str(corpus), "--output", str(output), "--precision", "fp32",
                 "--set", "rows_per_unit=25", "--checkpoint", str(checkpoints[1])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(checkpoints[0]) in err and str(checkpoints[1]) in err and "--overwrite" in err
    assert _sha(checkpoints[0])[:12] in err and _sha(checkpoints[1])[:12] in err
    assert {n: (output / n).read_bytes() for n in _parts(output)} == before, "A's scores are left as they are"

    assert run(_cfg(checkpoints[0], corpus, output)).already_complete, "same checkpoint and settings: nothing to do"
    with pytest.raises(ResumeMismatchError, match=r'already complete.*precision: "fp32" vs "bf16"'):
        run(_cfg(checkpoints[0], corpus, output, precision="bf16"))
