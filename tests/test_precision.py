"""The quality gate, int8 Linear layers, what `precision: auto` resolves to and the gate record it reads (tiny models:
seconds on any x86 CPU; nothing here times anything)."""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import f1_score

from bertclf import resources
from bertclf.dev.synthetic import make_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.labels import LabelSpace
from bertclf.model import checkpoint, precision
from bertclf.model.calibration import calibrate
from bertclf.model.inference import Predictor
from bertclf.model.precision import (
    GateResult,
    Int8Linear,
    SharedInputInt8,
    SharedInputMember,
    quality_gate,
    resolve,
    task_metric,
)

SPACE = LabelSpace("multi_label", ["a", "b", "c"], [0.5, 0.3, 0.7])


def test_task_metric_is_macro_f1_at_the_thresholds_and_accuracy():
    rng = np.random.default_rng(0)
    probs = rng.random((200, 3)).astype(np.float32)
    targets = (rng.random((200, 3)) > 0.6).astype(np.float32)
    targets[:, 2] = 0  # a label with no positives: 0 unless never predicted either (scikit-learn's zero_division=0)
    hits = probs >= np.asarray(SPACE.thresholds, dtype=np.float32)
    want = f1_score(targets, hits, average="macro", zero_division=0)
    assert task_metric(SPACE, targets, probs) == ("f1_macro", pytest.approx(want))
    multi_class = LabelSpace("multi_class", ["a", "b", "c"])
    classes = rng.integers(0, 3, 200)
    assert task_metric(multi_class, classes, probs) == ("accuracy", pytest.approx((probs.argmax(1) == classes).mean()))


def test_gate_passes_equal_probabilities_and_names_what_fails():
    rng = np.random.default_rng(1)
    fp32 = rng.random((400, 3)).astype(np.float32)
    targets = (fp32 > 0.5).astype(np.float32)
    same = quality_gate(SPACE, targets, fp32, fp32 + 1e-7, "int8")
    assert same.passed and same.agreement == 1.0 and same.metric_delta == 0.0 and same.max_abs_dprob < 1e-6
    flipped = fp32.copy()
    flipped[:8, 0] = 1.0 - flipped[:8, 0]  # 8 of 400 rows change label a: agreement 0.98 < 0.99
    gate = quality_gate(SPACE, targets, fp32, flipped, "int8")
    assert not gate.passed and "agreement 0.98" in gate.reason
    assert GateResult.from_dict(json.loads(json.dumps(gate.to_dict()))) == gate
    with pytest.raises(ValueError, match="same rows"):
        quality_gate(SPACE, targets, fp32, fp32[:10], "int8")


def test_gate_fails_on_the_task_metric_alone():
    fp32 = np.full((1000, 3), 0.1, dtype=np.float32)
    targets = np.zeros((1000, 3), dtype=np.float32)
    targets[:100, 0] = 1
    fp32[:100, 0] = 0.9  # all found
    worse = fp32.copy()
    worse[:5, 0] = 0.1  # 5 of 100 positives lost: agreement 0.995 passes, macro-F1 drops by 0.0085
    gate = quality_gate(SPACE, targets, fp32, worse, "int8")
    assert gate.agreement == pytest.approx(0.995) and not gate.passed and "f1_macro" in gate.reason


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 7, 64)
    q = Int8Linear(linear)

    def error(inputs):  # relative error of each token's output
        with torch.inference_mode():
            want, got = linear(inputs), q(inputs)
        assert got.shape == want.shape
        return ((got - want).norm(dim=-1) / want.norm(dim=-1)).flatten()

    plain = error(x)
    assert plain.max() < 0.03
    x[0, 0, 5] = 40.0  # an outlier in one token must not cost the other tokens their precision (per-token ranges)
    assert error(x)[1:].max() < 0.03
    assert error(torch.nn.functional.gelu(x)).max() < 0.03  # nearly one-signed rows keep their resolution
    rows = x.reshape(-1, 64)
    with torch.inference_mode():  # a token's output does not depend on the other tokens of the batch
        assert torch.allclose(q(rows)[:5], q(rows[:5]), atol=1e-5)
    no_bias, x = torch.nn.Linear(64, 8, bias=False), torch.randn(5, 64)
    with torch.inference_mode():
        assert torch.allclose(Int8Linear(no_bias)(x), no_bias(x), atol=0.03 * no_bias(x).abs().max().item())


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_model, tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("prec") / "ckpt", tiny_model, "multi_label")


def test_quantize_int8_keeps_the_head_in_fp32(tiny_ckpt):
    fp32 = Predictor.load(str(tiny_ckpt), device="cpu", precision="fp32")
    int8 = Predictor.load(str(tiny_ckpt), device="cpu", precision="int8")
    assert int8.precision == "int8" and not int8.bf16 and fp32.precision == "fp32"
    kinds = {name: type(m).__name__ for name, m in int8.model.named_modules()}
    assert sum(k == "Int8Linear" for k in kinds.values()) == 6  # 2 layers x (attention out, FFN in, FFN out)
    for layer in (0, 1):  # Q, K and V read one tensor: one group, one pass over it
        members = [int8.model.get_submodule(f"bert.encoder.layer.{layer}.attention.self.{n}")
                   for n in ("query", "key", "value")]
        assert all(isinstance(m, SharedInputMember) for m in members)
        assert len({id(m.group) for m in members}) == 1 and [m.member for m in members] == [0, 1, 2]
    assert kinds["classifier"] == "Linear" and kinds["bert.pooler.dense"] == "Linear"
    texts = [r["text"] for r in make_rows(40, seed=3, multi_label=True)]
    a, b = fp32.probabilities(texts), int8.probabilities(texts)
    assert a.shape == b.shape and np.abs(a - b).max() < 0.02


def test_grouped_layers_give_what_separate_int8_layers_give(tiny_ckpt, monkeypatch):
    grouped = Predictor.load(str(tiny_ckpt), device="cpu", precision="int8")
    monkeypatch.setattr(precision, "shared_input_groups", lambda inner, linears: [])
    separate = Predictor.load(str(tiny_ckpt), device="cpu", precision="int8")
    assert not any(isinstance(m, SharedInputMember) for m in separate.model.modules())
    texts = [r["text"] for r in make_rows(40, seed=4, multi_label=True)]
    np.testing.assert_allclose(grouped.probabilities(texts), separate.probabilities(texts), atol=1e-6)


def test_a_grouped_layer_called_with_another_tensor_runs_it():
    torch.manual_seed(1)
    linears = [torch.nn.Linear(16, n) for n in (8, 8, 4)]
    group = SharedInputInt8(linears)
    members = [SharedInputMember(group, k, m) for k, m in enumerate(linears)]
    alone = [Int8Linear(m) for m in linears]
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with torch.inference_mode():
        assert torch.allclose(members[0](x), alone[0](x), atol=1e-5)
        assert torch.allclose(members[1](y), alone[1](y), atol=1e-5)  # not x: y is run, not x's output handed out
        assert torch.allclose(members[1](y), alone[1](y), atol=1e-5)  # asked twice for y: run again
        for k in (0, 1, 2):  # a full round over one tensor, then nothing is held
            out = members[k](x)
            assert torch.allclose(out, alone[k](x), atol=1e-5) and out.is_contiguous()
        assert group._held.input is None


def test_threads_running_one_grouped_model_get_their_own_outputs():
    torch.manual_seed(2)
    linears = [torch.nn.Linear(16, 8) for _ in range(3)]
    group = SharedInputInt8(linears)
    members = [SharedInputMember(group, k, m) for k, m in enumerate(linears)]
    alone = [Int8Linear(m) for m in linears]
    fused, runs = group.fused, []
    group.fused = lambda t: (runs.append(t), fused(t))[1]
    x, y = torch.randn(4, 16), torch.randn(4, 16)
    steps = [threading.Event() for _ in range(3)]
    got: dict[str, list] = {"a": [], "b": []}

    def a():  # query on x; the other thread starts on y; then key and value of x
        got["a"].append(members[0](x))
        steps[0].set()
        steps[1].wait(10)
        got["a"] += [members[1](x), members[2](x)]
        steps[2].set()

    def b():
        steps[0].wait(10)
        got["b"].append(members[0](y))
        steps[1].set()
        steps[2].wait(10)
        got["b"] += [members[1](y), members[2](y)]

    with torch.inference_mode():
        threads = [threading.Thread(target=f) for f in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        for k in range(3):
            assert torch.allclose(got["a"][k], alone[k](x), atol=1e-5)
            assert torch.allclose(got["b"][k], alone[k](y), atol=1e-5)
    assert len(runs) == 2  # one run per thread: neither thread's run displaced the other's
    copied = copy.deepcopy(members[0])  # a model copy holds nothing of the original's threads
    with torch.inference_mode():
        assert torch.allclose(copied(x), alone[0](x), atol=1e-5)


def _native_bf16(monkeypatch, cpu_class: str, native: bool) -> None:
    monkeypatch.setattr(resources, "cpu_class", lambda *a, **k: cpu_class)
    monkeypatch.setattr(resources, "cpu_has_native_bf16", lambda: native)


def _gate(name: str, passed: bool) -> GateResult:
    return GateResult(name, 100, "f1_macro", 0.5, 0.5, 0.0, 1.0 if passed else 0.9, 0.0, 0.0, passed, "test")


def test_auto_uses_int8_only_where_the_record_says_it_passed(monkeypatch):
    _native_bf16(monkeypatch, "avx2", native=False)
    assert resolve("auto", "cpu") == "fp32"
    assert resolve("auto", "cpu", {"int8": _gate("int8", True)}) == "int8"
    assert resolve("auto", "cpu", {"int8": _gate("int8", False)}) == "fp32"
    assert resolve("auto", "cpu", {"int8": _gate("int8", True)}, cpu="avx512") == "fp32"  # not measured there
    assert resolve("fp32", "cpu", {"int8": _gate("int8", True)}) == "fp32"
    assert resolve("int8", "cpu") == "int8" and resolve("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="CPU only"):
        resolve("int8", "cuda")
    _native_bf16(monkeypatch, "amx", native=True)
    assert resolve("auto", "cpu") == "bf16"
    assert resolve("auto", "cpu", {"bf16": _gate("bf16", False)}) == "fp32"
    assert resolve("auto", "cpu", {"int8": _gate("int8", True)}) == "bf16"
    assert precision.record_needed("auto", "cpu") and not precision.record_needed("fp32", "cpu")


def test_calibrate_records_the_gate_and_auto_reads_it(tiny_ckpt, tmp_path, monkeypatch):
    _native_bf16(monkeypatch, "avx2", native=False)
    data = tmp_path / "labelled.parquet"
    pq.write_table(pa.Table.from_pylist(make_rows(120, seed=5, multi_label=True)), data)
    loaded = checkpoint.load(str(tiny_ckpt))
    files_before = loaded.files_sha256()
    (result,) = calibrate(str(tiny_ckpt), str(data), rows=100)
    assert result.precision == "int8" and result.rows == 100
    record = json.loads((tiny_ckpt / precision.GATE_FILE).read_text())
    assert record["fingerprint"] == loaded.fingerprint() and record["gates"]["int8"]["scheme"] == precision.INT8_SCHEME
    assert checkpoint.load(str(tiny_ckpt)).files_sha256() == files_before  # reuse keys don't move with the record
    # make the verdict a pass (a random tiny model's near-threshold probabilities may flip), then auto picks int8
    record["gates"]["int8"]["passed"] = True
    (tiny_ckpt / precision.GATE_FILE).write_text(json.dumps(record))
    assert Predictor.load(str(tiny_ckpt), device="cpu", precision="auto").precision == "int8"
    record["fingerprint"] = "other weights"
    (tiny_ckpt / precision.GATE_FILE).write_text(json.dumps(record))
    assert Predictor.load(str(tiny_ckpt), device="cpu", precision="auto").precision == "fp32"
    (tiny_ckpt / precision.GATE_FILE).unlink()


def test_training_refuses_int8():
    from bertclf.errors import ConfigError

    with pytest.raises(ConfigError, match="CPU inference"):
        resources.use_bf16("int8", "cpu")


def test_bertclf_calibrate_prints_each_verdict_records_it_and_refuses_bad_flags(tiny_ckpt, tmp_path, monkeypatch,
                                                                                capsys):
    from bertclf.cli import EXIT_BAD_INPUT, main

    _native_bf16(monkeypatch, "avx2", native=False)
    data = tmp_path / "labelled.parquet"
    pq.write_table(pa.Table.from_pylist(make_rows(60, seed=6, multi_label=True)), data)
    assert main(["calibrate", "--checkpoint", str(tiny_ckpt), "--data", str(data), "--rows", "50",
                 "--no-record"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("{")]  # log lines go to stderr
    verdict = json.loads(line)
    assert verdict["precision"] == "int8" and verdict["rows"] == 50 and isinstance(verdict["passed"], bool)
    assert not (tiny_ckpt / precision.GATE_FILE).exists(), "--no-record writes nothing"
    assert main(["calibrate", "--checkpoint", str(tiny_ckpt), "--data", str(data), "--rows", "50"]) == 0
    record = json.loads((tiny_ckpt / precision.GATE_FILE).read_text())
    assert record["gates"]["int8"]["rows"] == 50
    (tiny_ckpt / precision.GATE_FILE).unlink()
    capsys.readouterr()
    assert main(["calibrate", "--checkpoint", str(tiny_ckpt), "--data", str(data), "--precisions", "fp16"]) == \
        EXIT_BAD_INPUT
    assert "fp16 is not int8 or bf16" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path / "none.parquet")]) == \
        EXIT_BAD_INPUT
    assert "none.parquet" in capsys.readouterr().err
