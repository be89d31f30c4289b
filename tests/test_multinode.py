"""More than one node, more than one run: a two-node Ray cluster on this host (ray.cluster_utils) trains and scores
from and to S3 with work on both nodes and the same scores as one node; two runs started at once don't interfere."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from conftest import REPO, free_port, make_rows, save_tiny_checkpoint, write_rows

from bertclf import storage
from bertclf.config import ScoreConfig, TrainConfig

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


def _nodes_of(class_part: str) -> list[str]:
    """Node ids of the actors (alive or finished) whose class or repr names `class_part`, from Ray's state API
    (a Ray Data actor is a MapWorker whose repr names the UDF)."""
    from ray.util.state import list_actors

    return [a.node_id for a in list_actors(detail=True, limit=10_000)
            if class_part in f"{a.class_name} {a.repr_name or ''}"]


def _alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _read_scores(output: str) -> pa.Table:
    fs, path = storage.resolve(output)
    files = sorted(f for f in storage.list_names(output) if f.endswith(".parquet"))
    return pads.dataset([f"{path}/{f}" for f in files], filesystem=fs, format="parquet").to_table().sort_by("id")


def _score_cfg(**kw) -> ScoreConfig:
    return ScoreConfig(**{"precision": "fp32", "rows_per_unit": 100, "read_batch_rows": 64, **kw})


def test_two_nodes_train_and_score_from_s3_and_score_as_one_node(ray_tmpdir, tiny_model, bucket, tmp_path,
                                                                 monkeypatch):
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
        train_nodes = _nodes_of("RayTrainWorker")
        assert len(train_nodes) == 2 and set(train_nodes) == nodes, "one train worker on each node"

        two = scoring.run(_score_cfg(checkpoint=result.best_uri, input=f"{root}/corpus/",
                                     output=f"{root}/scores/two", ray_address=cluster.address))
        score_nodes = _nodes_of("UnitScorer")
        assert len(score_nodes) == 2 and set(score_nodes) == nodes, "one scoring actor on each node"

    assert result.best_uri == f"{root}/runs/r1/best" and storage.exists(f"{result.best_uri}/bertclf.json")
    assert storage.exists(f"{result.best_uri}/model.safetensors")
    epochs = storage.read_bytes(f"{root}/runs/r1/metrics.jsonl").decode().splitlines()
    assert len(epochs) == 1 and result.epochs_run == 1 and result.best.epoch == 1

    with _cluster(2) as cluster:
        one = scoring.run(_score_cfg(checkpoint=result.best_uri, input=f"{root}/corpus/",
                                     output=f"{root}/scores/one", ray_address=cluster.address))
        assert len(set(_nodes_of("UnitScorer"))) == 1

    assert not list(driver_dir.iterdir()), "nothing written to the driver's working directory"
    assert two.rows_out == one.rows_out == 400 and two.actors_used == one.actors_used == 2
    manifests = [storage.read_json(f"{root}/scores/{name}/manifest.json") for name in ("two", "one")]
    assert manifests[0]["checkpoint"]["uri"] == result.best_uri, "the checkpoint was read from s3://"
    assert [p["name"] for p in manifests[0]["parts"]] == [p["name"] for p in manifests[1]["parts"]]
    assert all(storage.exists(f"{root}/scores/{name}/_SUCCESS") for name in ("two", "one"))
    scores_two, scores_one = _read_scores(f"{root}/scores/two"), _read_scores(f"{root}/scores/one")
    assert scores_two.num_rows == 400 and scores_two.equals(scores_one), "two nodes score exactly as one"


def _score_process(checkpoint: Path, corpus: Path, output: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bertclf.cli", "score", "--checkpoint", str(checkpoint), "--input", str(corpus),
           "--output", str(output), "--num-actors", "1", "--precision", "fp32", "--set", "rows_per_unit=100"]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))


@pytest.mark.parametrize("record", ["stale", "live"])
def test_two_runs_started_at_once_do_not_interfere(ray_tmpdir, tiny_model, tmp_path, record):
    """`stale`: the record of a `ray start` cluster that died (ray.init() alone would try it for minutes), so each
    run starts a private Ray; `live`: a cluster on this host recorded itself, so both runs join it."""
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", tiny_model, "multi_label", [0.45, 0.5, 0.55])
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(2):
        rows = [{"id": f"f{i}-{j}", "text": r["text"]} for j, r in enumerate(make_rows(150, 20 + i, True))]
        write_rows(corpus / f"c{i}.parquet", rows, row_group_size=50)

    with contextlib.ExitStack() as stack:
        if record == "stale":
            (ray_tmpdir / "ray").mkdir()
            (ray_tmpdir / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_closed_port()}")
        else:
            address = stack.enter_context(_cluster(2)).address
        t0 = time.perf_counter()
        procs = [_score_process(ckpt, corpus, tmp_path / f"out{k}", tmp_path / f"run{k}.log") for k in (0, 1)]
        codes = [p.wait(timeout=600) for p in procs]
        seconds = time.perf_counter() - t0
    logs = [(tmp_path / f"run{k}.log").read_text() for k in (0, 1)]
    for code, text in zip(codes, logs, strict=True):
        assert code == 0, text[-4000:]
        assert MULTIPLE_RAYS not in text, text[-4000:]
        assert "scored 300/300 rows" in text
        if record == "stale":
            assert "starting a private Ray" in text and "no longer answers" in text
        else:
            assert f"joining the `ray start` cluster on this host at {address}" in text
    for k in (0, 1):
        manifest = storage.read_json(str(tmp_path / f"out{k}" / "manifest.json"))
        assert manifest["rows_in"] == manifest["rows_out"] == 300 and (tmp_path / f"out{k}" / "_SUCCESS").exists()
    assert _read_scores(str(tmp_path / "out0")).equals(_read_scores(str(tmp_path / "out1")))
    print(f"two concurrent runs ({record} record) took {seconds:.0f}s")


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
