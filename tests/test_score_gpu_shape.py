"""The GPU-shaped scoring pipeline on a Ray node that advertises a GPU (none is there: the actor runs on CPU).

CPU tokenizer actors read and tokenize whole units and send token ids; the scoring actor holds the GPU, scores
and writes. The output must be the fused pipeline's, row for row, with inputs and outputs on the S3 server.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from reference_scores import assert_scores_match_reference

from bertclf import storage
from bertclf.config import ScoreConfig
from bertclf.dev.scores import read_scores
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_architectures import ARCHITECTURES, arch_checkpoint
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.records import WorkUnit
from bertclf.scoring import ScoreError, run
from bertclf.scoring.tokens import ReadSettings, UnitTokenizer, pack, tokenized_batches, unpack


@pytest.fixture(scope="module")
def ray_with_a_gpu(s3_server):
    """A local Ray whose node declares 3 CPUs and 1 GPU, its workers told about the S3 server."""
    import ray

    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                                      "HF_HUB_OFFLINE")}
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=3, num_gpus=1, include_dashboard=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint_dir(tiny_model, tmp_path_factory) -> str:
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_model, "multi_label", [0.45, 0.5, 0.55]))


def _corpus_on_s3(bucket: str, tmp_path) -> str:
    for i in range(3):
        rows = [{"id": f"f{i}-{j}", "text": r["text"]} for j, r in enumerate(make_rows(120, 30 + i, True))]
        rows[5]["text"] = ""  # scored as the empty string under the default policy
        write_rows(tmp_path / f"part-{i}.parquet", rows, row_group_size=40)
        storage.upload_file(str(tmp_path / f"part-{i}.parquet"), f"s3://{bucket}/corpus/part-{i}.parquet")
    return f"s3://{bucket}/corpus/"


def test_gpu_node_tokenizes_on_cpu_actors_and_scores_like_the_fused_pipeline(ray_with_a_gpu, checkpoint_dir, bucket,
                                                                           tmp_path):
    corpus = _corpus_on_s3(bucket, tmp_path)
    base = dict(checkpoint=checkpoint_dir, input=corpus, precision="fp32", compile="off", rows_per_unit=40)
    shaped = run(ScoreConfig(**base, output=f"s3://{bucket}/gpu_shaped/"))
    fused = run(ScoreConfig(**base, output=f"s3://{bucket}/fused/", tokenize_stage="fused"))

    assert shaped.rows_out == fused.rows_out == 360 and shaped.units_scored == fused.units_scored == 9
    # the GPU actor scored every unit; CPU tokenizer actors, other processes, read and tokenized them
    assert all(r.gpu_ids == ["0"] for r in shaped.scored)
    assert all(r.tokenizer_pid != r.actor_pid for r in shaped.scored)
    assert all(r.tokenizer_pid == r.actor_pid and r.gpu_ids == ["0"] for r in fused.scored)
    a, b = read_scores(f"s3://{bucket}/gpu_shaped/"), read_scores(f"s3://{bucket}/fused/")
    assert a["id"].to_pylist() == b["id"].to_pylist() and a["predicted"].to_pylist() == b["predicted"].to_pylist()
    for name in ("prob_anger", "prob_fear", "prob_joy"):
        np.testing.assert_array_equal(a[name].to_numpy(), b[name].to_numpy())
    assert storage.exists(f"s3://{bucket}/gpu_shaped/_SUCCESS")


@pytest.mark.slow  # seven scoring runs; the tiny BERT's runs above by default
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gpu_shaped_plan_scores_each_architecture(ray_with_a_gpu, arch, tmp_path):
    """Each architecture's tokenizer in the CPU stage, its model in the GPU actor: the texts' plain-transformers
    probabilities come back."""
    ckpt = arch_checkpoint(tmp_path / arch, arch)
    rows = [{"id": f"r{i}", "text": r["text"]} for i, r in enumerate(make_rows(40, 5, True))]
    write_rows(tmp_path / "in.parquet", rows, row_group_size=20)
    out = tmp_path / "scores"
    summary = run(ScoreConfig(checkpoint=str(ckpt), input=str(tmp_path / "in.parquet"), output=str(out),
                              precision="fp32", compile="off", max_batch_rows=8))
    assert summary.rows_out == 40 and all(r.gpu_ids == ["0"] and r.tokenizer_pid != r.actor_pid
                                          for r in summary.scored)
    assert_scores_match_reference(read_scores(str(out)), ckpt, rows)


@pytest.mark.slow  # the fused pipeline's version of this runs by default (test_score_integration)
def test_a_unit_the_tokenizer_stage_cannot_read_fails_by_file_without_success(ray_with_a_gpu, checkpoint_dir,
                                                                              tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_rows(corpus / "good.parquet", [{"id": f"g{i}", "text": "happy day"} for i in range(30)])
    write_rows(corpus / "empty_texts.parquet", [{"id": f"e{i}", "text": "" if i % 2 else "sad"} for i in range(30)])
    out = tmp_path / "out"
    with pytest.raises(ScoreError, match="empty_texts.parquet"):
        run(ScoreConfig(checkpoint=checkpoint_dir, input=str(corpus), output=str(out), empty_text="error",
                        compile="off"))
    assert not (out / "_SUCCESS").exists()
    assert [p.name for p in out.glob("good-*.parquet")]  # the other file's part is kept for the re-run


def test_pack_and_unpack_keep_rows_ids_and_counts(tmp_path, checkpoint_dir):
    rows = [{"id": f"r{i}", "text": "" if i % 7 == 0 else f"happy day {i}"} for i in range(50)]
    write_rows(tmp_path / "in.parquet", rows, row_group_size=20)
    unit = WorkUnit(uri=str(tmp_path / "in.parquet"), row_groups=(0, 1, 2), num_rows=50, file_index=0)
    tokenizer = UnitTokenizer(checkpoint_dir, ReadSettings("text", ("id",), "skip", 16), "truncate")
    direct = list(tokenized_batches(unit, tokenizer.read, tokenizer.tokenize))
    packed = pack(iter(direct))
    assert (packed.rows_in, packed.empty) == (50, 8)
    back = list(unpack(packed))
    assert sum(b.rows_in for b in back) == 50 and sum(b.empty for b in back) == 8
    assert [t for b in back for t in b.token_ids] == [t for b in direct for t in b.token_ids]
    assert [i for b in back if b.passthrough.num_columns for i in b.passthrough["id"].to_pylist()] == \
           [f"r{i}" for i in range(50) if i % 7]

    skipped = [{"id": f"s{i}", "text": ""} for i in range(5)]  # every row skipped: no batch, counts kept
    write_rows(tmp_path / "skipped.parquet", skipped)
    unit = WorkUnit(uri=str(tmp_path / "skipped.parquet"), row_groups=(0,), num_rows=5, file_index=0)
    back = list(unpack(pack(tokenized_batches(unit, tokenizer.read, tokenizer.tokenize))))
    assert (sum(b.rows_in for b in back), sum(b.empty for b in back)) == (5, 5)
    assert not any(b.token_ids for b in back)
