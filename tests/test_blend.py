"""The TF-IDF baseline and the blend: stored without pickle and equal to scikit-learn's own model, chosen on
validation as configured, and honoured by every path that gives probabilities (predict, score, evaluate; serve in
test_serve), with reuse never copying across a blend or tokenizer change."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

from bertclf import baseline
from bertclf.blend import choose, combine
from bertclf.config import EvaluateConfig, ScoreConfig
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.evaluate import evaluate
from bertclf.labels import LabelSpace, encode_targets
from bertclf.model import checkpoint
from bertclf.model.inference import Predictor, predict_texts
from bertclf.scoring import run as score
from bertclf.scoring.tokens import TokenizedBatch, pack, unpack

LABELS = ["anger", "fear", "joy"]


def _data(task: str, n: int, seed: int) -> tuple[LabelSpace, list[str], np.ndarray]:
    multi = task == "multi_label"
    table = pa.Table.from_pylist(make_rows(n, seed=seed, multi_label=multi))
    space = LabelSpace(task, LABELS)
    targets = encode_targets(table, space, "list" if multi else "single", "labels" if multi else "label", [])
    return space, table["text"].to_pylist(), targets


@pytest.mark.parametrize("task", ["multi_class", "multi_label"])
def test_the_stored_baseline_gives_scikit_learns_probabilities(task, tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    space, texts, targets = _data(task, 240, seed=1)
    fitted = baseline.fit(space, texts[:180], targets[:180], texts[180:], targets[180:], "f1_macro", c_grid=(4.0,))
    fitted.save(tmp_path)
    loaded = baseline.Baseline.load(tmp_path)
    assert not list(tmp_path.glob("*.pkl")) and json.loads((tmp_path / "baseline.json").read_text())["format"] == 1

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=200_000,
                                 dtype=np.float32)
    x = vectorizer.fit_transform(texts[:180])
    unseen = [r["text"] for r in make_rows(30, seed=2, multi_label=task == "multi_label")]
    if task == "multi_class":
        model = LogisticRegression(C=4.0, max_iter=200, tol=1e-3).fit(x, targets[:180])
        want = model.predict_proba(vectorizer.transform(unseen))
    else:
        want = np.stack([LogisticRegression(C=4.0, solver="liblinear", max_iter=200, tol=1e-3)
                         .fit(x, targets[:180, j] > 0.5).predict_proba(vectorizer.transform(unseen))[:, 1]
                         for j in range(len(LABELS))], axis=1)
    np.testing.assert_allclose(loaded.probabilities(unseen), want, atol=1e-5)
    vec, models = loaded.to_sklearn()  # and loaded back into scikit-learn
    back = (models.predict_proba(vec.transform(unseen)) if task == "multi_class" else
            np.stack([m.predict_proba(vec.transform(unseen))[:, 1] for m in models], axis=1))
    np.testing.assert_allclose(back, want, atol=1e-5)


def test_texts_the_baseline_has_no_word_for_get_its_prior_never_nan(tmp_path):
    space, texts, targets = _data("multi_class", 200, seed=3)
    fitted = baseline.fit(space, texts[:150], targets[:150], texts[150:], targets[150:], "accuracy", c_grid=(4.0,))
    probs = fitted.probabilities(["", "zzqx unknownword", "!!! ???"])
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(probs, probs[0]), "no known term: the intercepts alone, the same for every such text"
    blended = combine(np.full_like(probs, 1 / 3), probs, 0.5)
    assert np.isfinite(blended).all()


def test_a_class_absent_from_the_training_rows_gets_probability_near_zero():
    space, texts, targets = _data("multi_class", 200, seed=4)
    keep = targets != 2
    fitted = baseline.fit(space, [t for t, k in zip(texts, keep, strict=True) if k], targets[keep], texts, targets,
                          "accuracy", c_grid=(4.0,))
    probs = fitted.probabilities(texts[:20])
    assert probs.shape == (20, 3) and probs[:, 2].max() < 1e-6 and np.isfinite(probs).all()


def test_the_blend_is_used_as_configured():
    space = LabelSpace("multi_class", LABELS)
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 300)
    truth = np.eye(3, dtype=np.float32)[targets]
    noisy = (0.4 * truth + 0.6 * rng.dirichlet([1, 1, 1], 300)).astype(np.float32)  # a weak transformer
    strong = (0.8 * truth + 0.2 * rng.dirichlet([1, 1, 1], 300)).astype(np.float32)  # a strong baseline
    auto = choose("auto", space, targets, noisy, strong, "accuracy", 0.005)
    assert auto.used and auto.weight < 1 and auto.blended >= auto.transformer + 0.005 and "beats" in auto.reason
    off = choose("off", space, targets, noisy, strong, "accuracy", 0.005)
    assert not off.used and off.weight == 1.0 and off.best_weight == auto.best_weight
    same = choose("auto", space, targets, strong, noisy, "accuracy", 0.5)  # the transformer is the strong one
    assert not same.used and same.weight == 1.0 and "under the margin" in same.reason
    on = choose("on", space, targets, strong, noisy, "accuracy", 0.5)
    assert on.used and on.weight < 1.0


def test_multi_label_blend_tunes_thresholds_for_the_blended_probabilities():
    space = LabelSpace("multi_label", LABELS)
    rng = np.random.default_rng(1)
    targets = (rng.random((300, 3)) < 0.3).astype(np.float32)
    transformer = np.clip(0.3 * targets + 0.7 * rng.random((300, 3)), 0, 1).astype(np.float32)
    base = np.clip(0.6 * targets + 0.4 * rng.random((300, 3)), 0, 1).astype(np.float32)
    choice = choose("auto", space, targets, transformer, base, "f1_macro", 0.0)
    assert choice.used and choice.thresholds is not None and len(choice.thresholds) == 3


def test_the_baseline_probabilities_travel_with_the_gpu_stage_payload():
    batch = TokenizedBatch(pa.table({"id": ["a", "b"]}), [[1, 2], [3]], 2, 0,
                           np.array([b"0" * 16, b"1" * 16], dtype="S16"),
                           np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], np.float32))
    (back,) = list(unpack(pack(iter([batch]))))
    np.testing.assert_array_equal(back.baseline, batch.baseline)
    assert back.passthrough.column_names == ["id"] and back.token_ids == batch.token_ids


@pytest.fixture(scope="module")
def blended(tiny_model, tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("blended"), tiny_model, "multi_class", blend_weight=0.4)


def test_a_checkpoint_without_a_baseline_still_loads_and_gives_the_transformer_alone(tiny_model, tmp_path):
    old = save_tiny_checkpoint(tmp_path / "old", tiny_model, "multi_class")
    meta = json.loads((old / "bertclf.json").read_text())
    meta.pop("blend", None)
    meta["format"] = 3  # as a bertclf before the baseline wrote it
    (old / "bertclf.json").write_text(json.dumps(meta))
    predictor = Predictor.load(str(old), device="cpu")
    assert not predictor.blends and predictor.checkpoint.meta.blend is None
    texts = ["joy joy", "fear"]
    np.testing.assert_allclose(predictor.probabilities(texts),
                               predictor.transformer_probabilities(predictor.token_ids(texts)))


def test_predict_and_evaluate_give_the_blended_probabilities(ray_local, blended, tmp_path):
    """(`score` gives them too: test_serve's endpoint serves a blended checkpoint and compares with a score run.)"""
    rows = make_rows(40, seed=21, multi_label=False)
    texts = [r["text"] for r in rows]
    predictor = Predictor.load(str(blended), device="cpu", precision="fp32")
    assert predictor.blends and predictor.blend_weight == 0.4
    transformer = predictor.transformer_probabilities(predictor.token_ids(texts))
    want = 0.4 * transformer + 0.6 * predictor.baseline.probabilities(texts)
    np.testing.assert_allclose(predictor.probabilities(texts), want, atol=1e-6)
    assert np.abs(want - transformer).max() > 0.05, "the baseline really moves the probabilities"
    predicted = predict_texts(str(blended), texts[:3])
    np.testing.assert_allclose([[p["probabilities"][n] for n in LABELS] for p in predicted], want[:3], atol=1e-6)

    write_rows(tmp_path / "in.parquet", rows)
    metrics = evaluate(EvaluateConfig(checkpoint=str(blended), data=str(tmp_path / "in.parquet")))
    truth = np.array([LABELS.index(r["label"]) for r in rows])
    # evaluate runs at the CPU's precision (bf16 where native): one near-tie may flip
    assert metrics["accuracy"] == pytest.approx(float((want.argmax(axis=1) == truth).mean()), abs=1 / len(rows))


def _changed_copy(blended, directory, change: str):
    """The blended checkpoint with another blend weight, or with two vocabulary ids swapped (same weights)."""
    changed = shutil.copytree(blended, directory)
    if change == "blend_weight":
        meta = json.loads((changed / "bertclf.json").read_text())
        meta["blend"]["weight"] = 0.7
        (changed / "bertclf.json").write_text(json.dumps(meta))
    else:
        tokenizer = json.loads((changed / "tokenizer.json").read_text())
        vocab = tokenizer["model"]["vocab"]
        a, b = sorted(w for w in vocab if w.isalpha() and len(w) > 2)[:2]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        (changed / "tokenizer.json").write_text(json.dumps(tokenizer))
        assert checkpoint.load(str(changed)).fingerprint() == checkpoint.load(str(blended)).fingerprint()
    return changed


@pytest.mark.parametrize("change", ["blend_weight", "tokenizer"])
def test_the_reuse_key_and_the_parts_settings_follow_the_blend_and_the_tokenizer(change, blended, tmp_path):
    from bertclf.scoring.manifest import scored_with
    from bertclf.scoring.reuse import reuse_key

    cfg = ScoreConfig(checkpoint=str(blended))
    keys = []
    for ckpt in (blended, _changed_copy(blended, tmp_path / change, change)):
        loaded = checkpoint.load(str(ckpt))
        settings = scored_with(cfg, loaded, ("id",), dt.date(2026, 12, 6))
        keys.append((reuse_key(loaded.fingerprint(), settings), settings))
    assert keys[0][0] != keys[1][0] and keys[0][1] != keys[1][1]


@pytest.mark.slow  # end to end on Ray (~20 s each); the keys it rests on are checked above by default
@pytest.mark.parametrize("change", ["blend_weight", "tokenizer"])
def test_reuse_never_copies_across_a_blend_or_tokenizer_change(change, ray_local, blended, tmp_path):
    rows = make_rows(60, seed=22, multi_label=False)
    for day in ("2026-12-05", "2026-12-06"):
        (tmp_path / "in" / f"date={day}").mkdir(parents=True)
        write_rows(tmp_path / "in" / f"date={day}" / "part.parquet", rows)

    def night(ckpt, root: str, date: str):
        return score(ScoreConfig(checkpoint=str(ckpt), input=str(tmp_path / "in" / "date={date}"), date=date,
                                 output=str(tmp_path / root / "date={date}"), precision="fp32", compile="off"))

    night(blended, "first", "2026-12-05")
    changed = _changed_copy(blended, tmp_path / change, change)

    # (that the same checkpoint does reuse such a copy is test_score_reuse's)
    shutil.copytree(tmp_path / "first" / "date=2026-12-05", tmp_path / f"out-{change}" / "date=2026-12-05")
    summary = night(changed, f"out-{change}", "2026-12-06")
    assert summary.rows_reused == 0, f"{change}: {summary.rows_reused} rows of the other checkpoint reused"


def test_an_epoch_with_a_baseline_is_compared_in_the_log_and_the_report(caplog):
    from bertclf.config import TrainConfig
    from bertclf.report.evaluation import against_baseline
    from bertclf.training.epochs import EpochTotals, epoch_record, log_epoch, with_baseline

    space, texts, targets = _data("multi_class", 120, seed=6)
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(120, 3)).astype(np.float32)  # an untrained transformer
    base = np.eye(3, dtype=np.float32)[targets] * 0.9 + 0.1 / 3  # a baseline that knows the answers
    record = epoch_record(0, space, logits, targets, EpochTotals(seen=1, steps=1), 1.0, 1)
    record = with_baseline(record, space, targets, logits, base, TrainConfig(best_metric="accuracy"))
    assert record.baseline["accuracy"] == 1.0 and set(record.baseline_per_label) == set(LABELS)
    assert record.blend.used and record.scalars()["baseline_accuracy"] == 1.0 and "blend_weight" in record.scalars()
    with caplog.at_level("INFO"):
        log_epoch(record, 3)
    assert "the transformer loses to a TF-IDF baseline by" in caplog.text
    compared = against_baseline(record)
    assert compared["sentence"].startswith("The transformer loses to a TF-IDF baseline by")
    assert compared["metrics"]["accuracy"]["baseline"] == 1.0 and set(compared["per_label_f1"]) == set(LABELS)
    assert against_baseline(dataclasses.replace(record, baseline=None, blend=None)) is None, "older checkpoints"
