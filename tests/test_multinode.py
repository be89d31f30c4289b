"""More than one node, more than one run: a two-node Ray cluster on this host (ray.cluster_utils) trains and scores
from and to S3 with work on both nodes and the same scores as one node; two runs started at once don't interfere."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from bertclf import storage
from bertclf.config import ScoreConfig, TrainConfig
from bertclf.dev.ports import free_port
from bertclf.dev.scores import read_scores
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.records import Manifest
from bertclf.scoring.parts import part_names

REPO = Path(__file__).resolve().parents[1]

MULTIPLE_RAYS = "Found multiple active Ray instances"


@pytest.fixture
def ray_tmpdir(monkeypatch) -> Iterator[Path]:
    """A Ray temp dir of our own: a test cluster records its address in <RAY_TMPDIR>/ray/ray_current_cluster,
    which every ray.init() without an address on this host would otherwise read. Short, for Ray's socket paths."""
    path = Path(tempfile.mkdtemp(prefix="bc-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _cluster(*node_cpus: int) -> Iterator:
    """Ray nodes on this host, one per entry (its CPUs), the first the head; this process is not connected."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    head = {"num_cpus": node_cpus[0], "include_dashboard": True, "dashboard_port": free_port()}  # 8265 may be taken
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for cpus in node_cpus[1:]:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _nodes_of(class_part: str, address: str) -> list[str]:
    """Node ids of the actors (alive or finished) whose class or repr names `class_part`, from Ray's state API
    (a Ray Data actor is a MapWorker whose repr names the UDF). The address: the state API doesn't ask the
    connected cluster but looks one up (RAY_ADDRESS, <RAY_TMPDIR>/ray/ray_current_cluster, any Ray on the host)."""
    from ray.util.state import list_actors

    return [a.node_id for a in list_actors(address=address, detail=True, limit=10_000)
            if class_part in f"{a.class_name} {a.repr_name or ''}"]


def _alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _wait_until_idle(timeout: float = 120) -> None:
    """Until every CPU is free again: a finished training releases its placement group a little later, and an
    actor pool sized meanwhile would leave one node without an actor."""
    import ray

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        assert time.monotonic() < deadline, f"CPUs still held: {ray.available_resources()}"
        time.sleep(0.5)


def _score_cfg(**kw) -> ScoreConfig:
    return ScoreConfig(**{"precision": "fp32", "rows_per_unit": 100, "read_batch_rows": 64, **kw})


@pytest.mark.slow  # two clusters, a training and two scoring runs: 2-4 min on 2 busy cores
def test_two_nodes_train_and_score_from_s3_and_score_as_one_node(ray_tmpdir, tiny_model, bucket, tmp_path,
                                                                 monkeypatch, capfd):
    """Model, data, checkpoints and scores all on S3, so no node needs the driver's disk; the work lands on both
    nodes (Ray's state API names each actor's node), and the same checkpoint scores the same on one node."""
    import json

    from bertclf import scoring, training

    root = f"s3://{bucket}"
    storage.upload_dir(tiny_model, f"{root}/models/tiny")
    for i in range(2):
        write_rows(tmp_path / f"t{i}.parquet", make_rows(120, seed=i, multi_label=True), row_group_size=50)
        storage.write_bytes(f"{root}/train/t{i}.parquet", (tmp_path / f"t{i}.parquet").read_bytes())
        rows = [{"id": f"f{i}-{j}", "text": r["text"]} for j, r in enumerate(make_rows(200, 10 + i, True))]
        write_rows(tmp_path / f"c{i}.parquet", rows, row_group_size=50)
        storage.write_bytes(f"{root}/corpus/c{i}.parquet", (tmp_path / f"c{i}.parquet").read_bytes())
    write_rows(tmp_path / "v.parquet", make_rows(40, seed=9, multi_label=True))
    storage.write_bytes(f"{root}/val/v.parquet", (tmp_path / "v.parquet").read_bytes())
    driver_dir = tmp_path / "driver"
    driver_dir.mkdir()
    monkeypatch.chdir(driver_dir)  # a relative path anywhere would land here

    # 1 CPU per node: two 0.75-CPU train workers (or two 1-CPU scoring actors) can't share a node
    with _cluster(1, 1) as cluster:
        result = training.run(TrainConfig(
            train=f"{root}/train/", validation=f"{root}/val/", output=f"{root}/runs/r1", model=f"{root}/models/tiny",
            epochs=1, num_workers=2, batch_size=16, learning_rate=2e-3, warmup_ratio=0.0, max_length=32,
            precision="fp32", ray_address=cluster.address))
        nodes = _alive_nodes()
        assert len(nodes) == 2
        train_nodes = _nodes_of("RayTrainWorker", cluster.address)
        assert len(train_nodes) == 2 and set(train_nodes) == nodes, "one train worker on each node"

        _wait_until_idle()
        two = scoring.run(_score_cfg(checkpoint=result.best_uri, input=f"{root}/corpus/",
                                     output=f"{root}/scores/two", ray_address=cluster.address))
        score_nodes = _nodes_of("UnitScorer", cluster.address)
        assert len(score_nodes) == 2 and set(score_nodes) == nodes, "one scoring actor on each node"

    assert result.best_uri == f"{root}/runs/r1/best" and storage.exists(f"{result.best_uri}/bertclf.json")
    assert storage.exists(f"{result.best_uri}/model.safetensors")
    epochs = [json.loads(line) for line in storage.read_bytes(f"{root}/runs/r1/metrics.jsonl").splitlines()]
    assert [e["epoch"] for e in epochs] == [1] and result.epochs_run == 1 and result.best.epoch == 1
    meta = storage.read_json(f"{result.best_uri}/bertclf.json")
    assert meta["labels"]["names"] == ["anger", "fear", "joy"] and meta["metrics"]["f1_macro"] == epochs[0]["f1_macro"]

    with _cluster(2) as cluster:
        one = scoring.run(_score_cfg(checkpoint=result.best_uri, input=f"{root}/corpus/",
                                     output=f"{root}/scores/one", ray_address=cluster.address))
        assert len(set(_nodes_of("UnitScorer", cluster.address))) == 1

    assert not list(driver_dir.iterdir()), "nothing written to the driver's working directory"
    assert MULTIPLE_RAYS not in "".join(capfd.readouterr()), "a worker looked for its cluster among the host's Rays"
    assert two.rows_out == one.rows_out == 400 and two.actors_used == one.actors_used == 2
    manifests = [storage.read_json(f"{root}/scores/{name}/_manifest.json") for name in ("two", "one")]
    assert manifests[0]["checkpoint"]["uri"] == result.best_uri, "the checkpoint was read from s3://"
    assert sorted(part_names(f"{root}/scores/two", Manifest.from_dict(manifests[0]))) == sorted(
        part_names(f"{root}/scores/one", Manifest.from_dict(manifests[1])))
    assert all(storage.exists(f"{root}/scores/{name}/_SUCCESS") for name in ("two", "one"))
    scores_two, scores_one = read_scores(f"{root}/scores/two"), read_scores(f"{root}/scores/one")
    assert scores_two.num_rows == 400 and scores_two.equals(scores_one), "two nodes score exactly as one"


def _cli(log: Path, *args: str) -> subprocess.Popen:
    """`bertclf ARGS` as a scheduler would start it: its own process, this environment (no RAY_ADDRESS)."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "bertclf.cli", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True)


def _score_args(checkpoint: Path, corpus: Path, output: Path) -> list[str]:
    return ["score", "--checkpoint", str(checkpoint), "--input", str(corpus), "--output", str(output),
            "--num-actors", "1", "--precision", "fp32", "--set", "rows_per_unit=100"]


def _wait(procs: dict[str, subprocess.Popen], tmp_path: Path) -> dict[str, str]:
    """Each run's log once all have ended; each must have succeeded without looking for its cluster among others."""
    try:
        codes = {name: proc.wait(timeout=600) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the run and the Ray it started, on a timeout
                proc.wait()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in procs}
    for name, text in logs.items():
        assert codes[name] == 0, f"{name}:\n{text[-4000:]}"
        assert MULTIPLE_RAYS not in text, f"{name}:\n{text[-4000:]}"
    return logs


def _check_scores(output: Path, rows: int) -> pa.Table:
    manifest = storage.read_json(str(output / "_manifest.json"))
    assert manifest["rows_in"] == manifest["rows_out"] == rows and (output / "_SUCCESS").exists()
    return read_scores(str(output))


def _corpus(root: Path) -> Path:
    root.mkdir()
    for i in range(2):
        rows = [{"id": f"f{i}-{j}", "text": r["text"]} for j, r in enumerate(make_rows(150, 20 + i, True))]
        write_rows(root / f"c{i}.parquet", rows, row_group_size=50)
    return root


@pytest.mark.slow  # two scoring subprocesses joining one recorded cluster: about 1 min
def test_two_scoring_runs_at_once_join_the_cluster_recorded_on_this_host(ray_tmpdir, tiny_model, tmp_path):
    """A cluster recorded itself in <RAY_TMPDIR>/ray/ray_current_cluster (as `ray start` does): both runs join it,
    saying so, where ray.init() would join it warning about every other Ray on the host."""
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", tiny_model, "multi_label", [0.45, 0.5, 0.55])
    corpus = _corpus(tmp_path / "corpus")
    with _cluster(2) as cluster:
        address = cluster.address
        t0 = time.perf_counter()
        logs = _wait({f"score{k}": _cli(tmp_path / f"score{k}.log", *_score_args(ckpt, corpus, tmp_path / f"out{k}"))
                      for k in (0, 1)}, tmp_path)
        print(f"two scoring runs at once on one cluster: {time.perf_counter() - t0:.0f}s")
    for text in logs.values():
        assert f"joining the `ray start` cluster on this host at {address}" in text
        assert "scored 300/300 rows" in text
    assert _check_scores(tmp_path / "out0", 300).equals(_check_scores(tmp_path / "out1", 300))


@pytest.mark.slow  # a training and a scoring run at once, each starting its own Ray: about 75 s
def test_a_training_and_a_scoring_run_at_once_each_start_a_private_ray(ray_tmpdir, tiny_model, tmp_path):
    """The record of a `ray start` cluster that died (ray.init() alone would try it for minutes): each run starts
    its own Ray. With two Rays on the host, Ray Train's placement-group cleaner (which looks its cluster up
    through the state API) must still find the right one."""
    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_closed_port()}")
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", tiny_model, "multi_label", [0.45, 0.5, 0.55])
    corpus = _corpus(tmp_path / "corpus")
    write_rows(tmp_path / "t.parquet", make_rows(120, seed=1, multi_label=True))
    write_rows(tmp_path / "v.parquet", make_rows(30, seed=2, multi_label=True))
    train = ["train", "--train", str(tmp_path / "t.parquet"), "--validation", str(tmp_path / "v.parquet"),
             "--output", str(tmp_path / "run"), "--model", str(tiny_model), "--epochs", "1", "--num-workers", "2",
             "--batch-size", "16", "--max-length", "32", "--precision", "fp32"]
    t0 = time.perf_counter()
    logs = _wait({"train": _cli(tmp_path / "train.log", *train),
                  "score": _cli(tmp_path / "score.log", *_score_args(ckpt, corpus, tmp_path / "out"))}, tmp_path)
    print(f"a training and a scoring run at once, each on its own Ray: {time.perf_counter() - t0:.0f}s")
    for text in logs.values():
        assert "no longer answers" in text and "starting a private Ray" in text
    assert "Exception in thread PlacementGroupCleanerMonitor" not in logs["train"], logs["train"][-4000:]
    assert (tmp_path / "run" / "best" / "bertclf.json").exists()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    assert "scored 300/300 rows" in logs["score"] and _check_scores(tmp_path / "out", 300).num_rows == 300


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
