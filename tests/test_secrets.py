"""No AWS credential reaches Ray's session files, the job log or an output: a real train and score against the S3
server with recognisable credentials, then every file under the Ray's temp directory and every output object is
searched for them. Workers get the credentials the way AWS tools do, from their own process environment."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from bertclf import storage
from bertclf.config import ScoreConfig, TrainConfig
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.resources import connect
from bertclf.scoring import run as score
from bertclf.training import run as train

RUN = uuid.uuid4().hex[:12]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": f"AKIAKEYID{RUN.upper()}", "AWS_SECRET_ACCESS_KEY": f"secretKEY{RUN}",
               "AWS_SESSION_TOKEN": f"sessionTOKEN{RUN}"}


@pytest.fixture(scope="module")
def ray_with_credentials(s3_server):
    """A private Ray (the library's own connect()) in a temp dir of its own, started with the credentials in this
    process's environment only: its raylet inherits them, so workers can reach S3 without a runtime_env copy."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="rsec-", dir="/tmp")  # short: Ray's unix sockets live under it
    new = {**CREDENTIALS, "RAY_TMPDIR": temp_dir}
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        connect()
        yield Path(temp_dir)
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp_dir, ignore_errors=True)


def _hits(name: str, data: bytes) -> list[str]:
    return [f"{name}: {key}" for key, value in CREDENTIALS.items() if value.encode() in data]


def test_train_and_score_on_s3_leave_no_credential_in_rays_files_logs_or_outputs(ray_with_credentials, tiny_model,
                                                                                bucket, tmp_path, caplog):
    import boto3

    caplog.set_level(logging.INFO, logger="bertclf")
    write_rows(tmp_path / "train.parquet", make_rows(120, seed=3, multi_label=True), row_group_size=40)
    storage.write_bytes(f"s3://{bucket}/train/train.parquet", (tmp_path / "train.parquet").read_bytes())
    storage.write_bytes(f"s3://{bucket}/corpus/in.parquet", (tmp_path / "train.parquet").read_bytes())
    result = train(TrainConfig(train=f"s3://{bucket}/train/", validation=None, output=f"s3://{bucket}/run",
                               model=str(tiny_model), epochs=1, num_workers=1, batch_size=16, max_length=32,
                               precision="fp32", warmup_ratio=0.0))
    summary = score(ScoreConfig(checkpoint=result.best_uri, input=f"s3://{bucket}/corpus/",
                                output=f"s3://{bucket}/scores", precision="fp32", rows_per_unit=40))
    assert summary.rows_out == 120 and storage.exists(f"s3://{bucket}/scores/_SUCCESS")

    hits: list[str] = []
    files = [p for p in ray_with_credentials.rglob("*") if p.is_file() and not p.is_symlink()]
    for path in files:
        try:
            hits += _hits(str(path), path.read_bytes())
        except OSError:  # a socket or a file removed while we walk
            continue
    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    for key in keys:
        hits += _hits(f"s3://{bucket}/{key}", s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    hits += _hits("the driver's log", caplog.text.encode())
    assert not hits, f"credentials found in: {hits}"

    # the search would have found them: Ray records each job's runtime_env in its session logs, and the
    # non-secret settings that did travel (the S3 endpoint) are there
    logs = b"".join(p.read_bytes() for p in files if p.name.startswith("runtime_env"))
    assert len(files) > 20 and any(k.endswith(".parquet") for k in keys)
    assert os.environ["AWS_ENDPOINT_URL"].encode() in logs, "runtime_env logs no longer record env_vars"
