"""The compiled graph (bertclf.model.compiled): built once per checkpoint and node, the same numbers as eager, and eager
whenever it is not there yet or cannot be used. One real AOTInductor compile of the tiny BERT serves the module."""

from __future__ import annotations

import fcntl
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bertclf.config import ScoreConfig
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.model import compiled
from bertclf.model.inference import Predictor
from bertclf.scoring import run

MAX_ROWS = 8  # small, so the 41 texts below make several micro-batches, the last one a single row


@pytest.fixture(scope="module")
def checkpoint_dir(tiny_model, tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_model, "multi_label", [0.45, 0.5, 0.55]))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rows = [r["text"] for r in make_rows(38, 5, True)]
    return rows + ["", "happy", " ".join(["very"] * 60)]  # [CLS][SEP] only, one word, truncated at max_length


@pytest.fixture(scope="module")
def compiled_predictor(checkpoint_dir) -> Predictor:
    """A predictor whose graph was compiled into the (test session's) cache: the module's one compile."""
    predictor = Predictor.load(checkpoint_dir, precision="fp32", max_rows=MAX_ROWS, compile="on")
    assert predictor.graph is not None and predictor.graph.path.exists()
    return predictor


def _eager(checkpoint_dir: str) -> Predictor:
    return Predictor.load(checkpoint_dir, precision="fp32", max_rows=MAX_ROWS, compile="off")


def test_compiled_graph_gives_the_eager_probabilities(compiled_predictor, checkpoint_dir, texts):
    calls = []
    forward = compiled_predictor._compiled_forward()
    compiled_predictor.graph.forward = lambda ids, mask: calls.append(ids.shape) or forward(ids, mask)
    got = compiled_predictor.probabilities(texts)
    want = _eager(checkpoint_dir).probabilities(texts)
    assert calls, "the compiled graph was not used"
    assert {shape[0] for shape in calls} >= {1, MAX_ROWS}  # dynamic batch sizes, down to one row
    assert got.shape == want.shape == (len(texts), 3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_second_load_reuses_the_cached_graph(compiled_predictor, checkpoint_dir):
    before = compiled_predictor.graph.path.stat().st_mtime_ns
    again = Predictor.load(checkpoint_dir, precision="fp32", max_rows=MAX_ROWS, compile="on")
    assert again.graph.path == compiled_predictor.graph.path
    assert again.graph.path.stat().st_mtime_ns == before  # loaded, not rebuilt
    assert [p.name for p in again.graph.path.parent.glob(".*.pt2")] == []  # no staging file left behind


def test_the_key_changes_with_weights_precision_and_shapes():
    base = compiled.cache_key("a" * 64, False, 64, 128)
    assert base == compiled.cache_key("a" * 64, False, 64, 128)
    others = {compiled.cache_key("b" * 64, False, 64, 128), compiled.cache_key("a" * 64, True, 64, 128),
              compiled.cache_key("a" * 64, False, 32, 128), compiled.cache_key("a" * 64, False, 64, 256)}
    assert base not in others and len(others) == 4


def test_while_another_process_compiles_the_predictor_scores_eagerly_then_switches(
        compiled_predictor, checkpoint_dir, texts, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTCLF_COMPILE_CACHE", str(tmp_path))
    key_file = tmp_path / compiled_predictor.graph.path.name
    with open(key_file.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a compiling actor holds it
        waiting = Predictor.load(checkpoint_dir, precision="fp32", max_rows=MAX_ROWS, compile="on")
        assert waiting.graph is not None and not key_file.exists()
        assert waiting._compiled_forward() is None  # eager meanwhile
        eager_probs = waiting.probabilities(texts)
        shutil.copyfile(compiled_predictor.graph.path, key_file)  # the other process commits its graph
    assert waiting._compiled_forward() is not None
    np.testing.assert_allclose(waiting.probabilities(texts), eager_probs, atol=1e-5)


def test_a_broken_cache_entry_falls_back_to_eager(compiled_predictor, checkpoint_dir, texts, tmp_path, monkeypatch,
                                                  caplog):
    monkeypatch.setenv("BERTCLF_COMPILE_CACHE", str(tmp_path))
    (tmp_path / compiled_predictor.graph.path.name).write_bytes(b"not a package")
    predictor = Predictor.load(checkpoint_dir, precision="fp32", max_rows=MAX_ROWS, compile="on")
    probs = predictor.probabilities(texts)
    assert predictor.graph is None and "could not be loaded" in caplog.text
    np.testing.assert_allclose(probs, _eager(checkpoint_dir).probabilities(texts), atol=1e-5)


def test_a_model_export_refuses_still_scores_eagerly(checkpoint_dir, texts, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("BERTCLF_COMPILE_CACHE", str(tmp_path))

    def refuse(*args, **kwargs):
        raise torch._dynamo.exc.Unsupported("data-dependent branch")

    monkeypatch.setattr(compiled, "compile_package", refuse)
    predictor = Predictor.load(checkpoint_dir, precision="fp32", max_rows=MAX_ROWS, compile="on")
    assert predictor.graph is None and "scoring eagerly" in caplog.text
    assert list(tmp_path.glob("*.pt2")) == [] and len(list(tmp_path.glob("*.failed"))) == 1
    assert predictor.probabilities(texts).shape == (len(texts), 3)

    def must_not_run(*args, **kwargs):
        raise AssertionError("compiled again after a failure on this node")

    monkeypatch.setattr(compiled, "compile_package", must_not_run)
    caplog.clear()
    again = Predictor.load(checkpoint_dir, precision="fp32", max_rows=MAX_ROWS, compile="on")
    assert again.graph is None and "an earlier compile failed" in caplog.text


def test_auto_compiles_only_models_worth_it_on_cpu(compiled_predictor):
    tiny = compiled_predictor.model
    assert not compiled.wanted("auto", tiny, "cpu")  # a compile would cost more than a tiny model's forwards
    assert compiled.wanted("on", tiny, "cpu") and not compiled.wanted("off", tiny, "cpu")
    assert not compiled.wanted("on", tiny, "cuda")
    big = torch.nn.Linear(2500, 2500)  # 6.25M parameters
    assert compiled.wanted("auto", big, "cpu", cpu="avx512_bf16") and not compiled.wanted("auto", big, "cuda")
    assert not compiled.wanted("auto", big, "cpu", cpu="avx2"), "AVX2: the fp32 graph measured slower than eager"
    assert compiled.wanted("on", big, "cpu", cpu="avx2")


def test_scoring_actors_load_the_node_cache_and_match_eager(ray_local, compiled_predictor, checkpoint_dir, tmp_path):
    """Through Ray Data: actors find the graph this node already built (no second compile) and score the same."""
    rows = [{"id": f"r{i}", "text": r["text"]} for i, r in enumerate(make_rows(300, 9, True))]
    write_rows(tmp_path / "in.parquet", rows, row_group_size=50)
    before = compiled_predictor.graph.path.stat().st_mtime_ns
    outputs = {}
    for mode in ("on", "off"):
        out = tmp_path / f"scores_{mode}"
        summary = run(ScoreConfig(checkpoint=checkpoint_dir, input=str(tmp_path / "in.parquet"), output=str(out),
                                  precision="fp32", max_batch_rows=MAX_ROWS, compile=mode))
        assert summary.rows_out == 300 and json.loads((out / "_manifest.json").read_text())["config"]["compile"] == mode
        outputs[mode] = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("*.parquet"))).sort_by("id")
    assert compiled_predictor.graph.path.stat().st_mtime_ns == before
    assert len(list(compiled_predictor.graph.path.parent.glob("*.pt2"))) == 1
    on, off = outputs["on"], outputs["off"]
    assert on["predicted"].to_pylist() == off["predicted"].to_pylist()
    for name in ("prob_anger", "prob_fear", "prob_joy"):
        np.testing.assert_allclose(on[name].to_numpy(), off[name].to_numpy(), atol=1e-5)
