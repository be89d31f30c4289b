"""End to end as users run it: cluster/local.py up, `ray job submit` of score (by default) and of train then score
(slow) against the local S3 server, outputs and job status checked, then cluster/local.py down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from bertclf import storage
from bertclf.dev.ports import free_port
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import build_tiny_bert, save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]

RUNTIME_EXCLUDES = [".venv", ".git", "runs", "tests", ".bertclf-local", "**/__pycache__"]


def _tool_env(**extra: str) -> dict[str, str]:
    """This environment with the test interpreter's bin dir first on PATH: `ray` and `moto_server` live there
    even when the venv is not activated (`.venv/bin/python -m pytest`)."""
    env = {**os.environ, **extra}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("local-cluster")
    ports = {"RAY_PORT": free_port(), "RAY_DASHBOARD_PORT": free_port(), "S3_PORT": free_port(),
             "RAY_DASHBOARD_AGENT_PORT": free_port(), "RAY_CLIENT_PORT": free_port()}
    env = _tool_env(**{k: str(v) for k, v in ports.items()}, RAY_NUM_CPUS="2", BERTCLF_STATE_DIR=str(state),
                    BERTCLF_RAY_TMPDIR=f"/tmp/ray-e2e-{uuid.uuid4().hex[:6]}", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    up = subprocess.run([sys.executable, "cluster/local.py", "up"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=180)
    assert up.returncode == 0, up.stderr
    client = {"RAY_ADDRESS": f"http://127.0.0.1:{ports['RAY_DASHBOARD_PORT']}",
              "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['S3_PORT']}", "AWS_ACCESS_KEY_ID": "testing",
              "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    try:
        yield env, client
    finally:
        down = subprocess.run([sys.executable, "cluster/local.py", "down"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr


def _submit(client: dict, script: str, *args: str) -> subprocess.CompletedProcess:
    runtime_env = {"working_dir": ".", "excludes": RUNTIME_EXCLUDES,
                   "env_vars": {k: v for k, v in client.items() if k.startswith("AWS_")} | {"HF_HUB_OFFLINE": "1"}}
    cmd = ["ray", "job", "submit", "--address", client["RAY_ADDRESS"], "--runtime-env-json", json.dumps(runtime_env),
           "--", "python", script, *args]
    return subprocess.run(cmd, cwd=REPO, env=_tool_env(RAY_AUTH_MODE="disabled"), capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def on_s3(local_cluster, tmp_path):
    """The cluster's S3 credentials in this process; bucket e2e holding three labelled shards and a validation file."""
    _, client = local_cluster
    old = {k: os.environ.get(k) for k in client}
    os.environ.update({k: v for k, v in client.items() if k.startswith("AWS_")})
    try:
        s3 = boto3.client("s3", endpoint_url=client["AWS_ENDPOINT_URL"])
        if "e2e" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
            s3.create_bucket(Bucket="e2e")
        for i in range(3):
            write_rows(tmp_path / f"t{i}.parquet", make_rows(100, i, multi_label=False))
            storage.write_bytes(f"s3://e2e/train/t{i}.parquet", (tmp_path / f"t{i}.parquet").read_bytes())
        write_rows(tmp_path / "v.parquet", make_rows(40, 9, multi_label=False))
        storage.write_bytes("s3://e2e/val/v.parquet", (tmp_path / "v.parquet").read_bytes())
        yield client
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _score_and_refuse_a_bad_column(client: dict, checkpoint: str, output: str) -> None:
    """A score job commits 300 rows with progress lines; a job naming a missing column fails and says so."""
    scored = _submit(client, "jobs/score.py", "--checkpoint", checkpoint, "--input", "s3://e2e/train/",
                     "--output", f"{output}/date={{date}}", "--date", "2026-11-22", "--id-column", "id")
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
    assert "progress:" in scored.stdout and "scored 300/300 rows" in scored.stdout
    manifest = storage.read_json(f"{output}/date=2026-11-22/_manifest.json")
    assert manifest["rows_in"] == manifest["rows_out"] == 300
    assert storage.exists(f"{output}/date=2026-11-22/_SUCCESS")

    bad = _submit(client, "jobs/score.py", "--checkpoint", checkpoint, "--input", "s3://e2e/train/",
                  "--output", f"{output}/bad", "--text-column", "body")
    assert bad.returncode != 0
    assert "text column 'body' not found" in bad.stdout + bad.stderr


def test_submit_score_on_the_local_cluster(on_s3, tiny_model, tmp_path):
    storage.upload_dir(save_tiny_checkpoint(tmp_path / "ckpt", tiny_model, "multi_class"), "s3://e2e/ckpt")
    _score_and_refuse_a_bad_column(on_s3, "s3://e2e/ckpt", "s3://e2e/scores-of-ckpt")


@pytest.mark.slow  # a training job then scoring jobs (~125 s on 2 cores); training in Ray Train runs by default
def test_submit_train_then_score_on_the_local_cluster(on_s3, tmp_path):
    storage.upload_dir(build_tiny_bert(tmp_path / "tiny"), "s3://e2e/models/tiny-bert")
    trained = _submit(on_s3, "jobs/train.py", "--train", "s3://e2e/train/", "--validation", "s3://e2e/val/",
                      "--output", "s3://e2e/runs/tiny", "--model", "s3://e2e/models/tiny-bert",
                      "--epochs", "1", "--num-workers", "2", "--set", "precision=fp32", "--set", "max_length=32")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "succeeded" in trained.stdout + trained.stderr
    assert storage.exists("s3://e2e/runs/tiny/best/bertclf.json")
    _score_and_refuse_a_bad_column(on_s3, "s3://e2e/runs/tiny/best", "s3://e2e/scores")
