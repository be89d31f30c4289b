"""Scoring through Ray Data on a real local Ray and a real S3 server: exactly once, resumable, checked inputs."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertclf import storage
from bertclf.config import ScoreConfig
from bertclf.dev.scores import read_scores
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.model import adapters
from bertclf.model.checkpoint import CheckpointError
from bertclf.scoring import ScoreError, run

THRESHOLDS = [0.45, 0.5, 0.55]


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    """A bertclf checkpoint of the tiny BERT with a 3-label multi-label head and per-label thresholds."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_model, "multi_label", THRESHOLDS)


@pytest.fixture
def corpus(tmp_path):
    """Three input files (200 rows each, row groups of 50) with an id and a pass-through column."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(3):
        rows = [{"id": f"f{i}-{j}", "text": r["text"], "source": f"file{i}"}
                for j, r in enumerate(make_rows(200, i, True))]
        write_rows(root / f"part-{i}.parquet", rows, row_group_size=50)
    return root


def _direct_probs(ckpt_dir, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(ckpt_dir).eval()
    tok = AutoTokenizer.from_pretrained(ckpt_dir)
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        return torch.sigmoid(model(**enc).logits).numpy()


def _cfg(**kw) -> ScoreConfig:
    base = dict(passthrough_columns=["source"], precision="fp32", rows_per_unit=100, read_batch_rows=64)
    return ScoreConfig(**{**base, **kw})


def test_three_files_on_s3_scored_exactly_once_and_match_a_direct_forward_pass(
        ray_local, tiny_checkpoint, corpus, bucket):
    for f in corpus.iterdir():
        storage.write_bytes(f"s3://{bucket}/in/{f.name}", f.read_bytes())
    storage.upload_dir(tiny_checkpoint, f"s3://{bucket}/models/tiny", last=["bertclf.json"])
    output = f"s3://{bucket}/scores/date={{date}}"
    summary = run(_cfg(checkpoint=f"s3://{bucket}/models/tiny", input=f"s3://{bucket}/in/", output=output,
                       date="2026-11-22"))

    out = "s3://" + f"{bucket}/scores/date=2026-11-22"
    assert summary.rows_in == summary.rows_out == 600 and summary.output == out
    assert storage.exists(f"{out}/_SUCCESS")
    manifest = storage.read_json(f"{out}/_manifest.json")
    assert manifest["rows_in"] == manifest["rows_out"] == 600 and manifest["input_files"] == 3
    assert manifest["labels"]["thresholds"] == THRESHOLDS and len(manifest["checkpoint"]["sha256"]) == 64
    # 600 rows for 2 actors: units of at most ceil(600 / (2 x 4)) = 75 rows, so each row group of 50 is a unit
    parts = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/_parts")))
    assert parts.num_rows == 12 and len(set(parts["input"].to_pylist())) == 3
    assert manifest["units"]["rows_per_unit"] == 75
    assert summary.actors_used == 2

    scores = read_scores(out)
    ids = scores["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 600
    assert scores.schema.field("prob_joy").type == pa.float32()
    source = pa.concat_tables([pq.read_table(f) for f in sorted(corpus.iterdir())]).sort_by("id")
    assert scores["source"].to_pylist() == source["source"].to_pylist()
    probs = np.stack([scores[f"prob_{n}"].to_numpy() for n in ["anger", "fear", "joy"]], axis=1)
    expected = _direct_probs(tiny_checkpoint, source["text"].to_pylist())
    np.testing.assert_allclose(probs, expected, atol=1e-5)  # fp32 both ways; padding length is the only difference
    names = np.array(["anger", "fear", "joy"])
    for row, predicted in zip(probs, scores["predicted"].to_pylist(), strict=True):
        assert predicted == list(names[row >= np.array(THRESHOLDS, dtype=np.float32)])
    assert scores["top_label"].to_pylist() == list(names[probs.argmax(axis=1)])


def test_crash_then_rerun_equals_a_clean_run_and_a_finished_output_is_left_alone(
        ray_local, tiny_checkpoint, corpus, tmp_path, monkeypatch):
    clean = str(tmp_path / "clean")
    run(_cfg(checkpoint=str(tiny_checkpoint), input=str(corpus), output=clean))

    crashed = str(tmp_path / "crashed")
    (ray_local / "fail_unit").write_text("part-1")
    try:
        with pytest.raises(ScoreError, match=r"part-1\.parquet: RuntimeError: injected failure"):
            run(_cfg(checkpoint=str(tiny_checkpoint), input=str(corpus), output=crashed))
    finally:
        (ray_local / "fail_unit").unlink()
    assert not storage.exists(f"{crashed}/_SUCCESS") and not storage.exists(f"{crashed}/_manifest.json")
    left = storage.list_names(crashed)
    assert sum(n.startswith("part-1") for n in left) == 0 and sum(n.startswith("part-") for n in left) == 8
    assert "_plan.json" in left, "the unit plan is written before the first part"

    # resumed on one actor: the first run's unit plan is reused, so the units and names are the same
    from bertclf.scoring import actor

    footers_read: list[str] = []
    read_part_stats = actor.read_part_stats
    monkeypatch.setattr(actor, "read_part_stats", lambda uri: footers_read.append(uri) or read_part_stats(uri))
    resumed = run(_cfg(checkpoint=str(tiny_checkpoint), input=str(corpus), output=crashed, num_actors=1))
    assert resumed.units_scored == 4 and resumed.units_skipped == 8, "only the missing units are scored"
    assert read_scores(crashed).equals(read_scores(clean))
    assert storage.list_names(crashed) == storage.list_names(clean)
    # each part's footer is read once: the 8 found at the start (checked and folded), the 4 scored at the commit
    assert sorted(footers_read) == sorted(set(footers_read)) and len(footers_read) == 12
    ours, theirs = (json.loads(storage.read_bytes(f"{o}/_manifest.json")) for o in (crashed, clean))
    for key in ("rows_in", "rows_out", "predicted_label_counts", "score_histograms", "texts_scored", "input_files"):
        assert ours[key] == theirs[key], key
    assert ours["units"] == {**theirs["units"], "scored_this_run": 4, "already_done": 8}

    again = run(_cfg(checkpoint=str(tiny_checkpoint), input=str(corpus), output=crashed))
    assert again.already_complete and again.rows_out == 0
    redo = run(_cfg(checkpoint=str(tiny_checkpoint), input=str(corpus), output=crashed, overwrite=True))
    assert redo.units_scored == 12 and redo.rows_out == 600


def test_one_file_is_spread_over_every_actor(ray_local, tiny_checkpoint, tmp_path):
    """A corpus of one file still keeps both actors busy: units are sized from the rows and the actor count."""
    rows = [{"id": f"r{i}", "text": r["text"], "source": "one"} for i, r in enumerate(make_rows(400, 11, True))]
    write_rows(tmp_path / "one.parquet", rows, row_group_size=50)
    summary = run(ScoreConfig(checkpoint=str(tiny_checkpoint), input=str(tmp_path / "one.parquet"),
                              output=str(tmp_path / "out")))  # default rows_per_unit (20,000) as the ceiling
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["units"]["total"] == 8 and manifest["units"]["rows_per_unit"] == 50
    assert summary.actors_used == 2 and summary.rows_out == 400


def test_corrupted_input_file_fails_by_name_and_keeps_other_outputs(ray_local, tiny_checkpoint, corpus, tmp_path):
    (corpus / "part-9.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 50 + b"PAR1")
    output = str(tmp_path / "out")
    with pytest.raises(ScoreError, match=r"part-9\.parquet"):
        run(_cfg(checkpoint=str(tiny_checkpoint), input=str(corpus), output=output))
    names = storage.list_names(output)
    assert "_SUCCESS" not in names and sum(n.endswith(".parquet") for n in names) == 12


@pytest.mark.parametrize("policy,rows_out", [("score", 200), ("skip", 197)])
def test_null_and_empty_texts_follow_the_configured_policy(ray_local, tiny_checkpoint, tmp_path, policy, rows_out):
    rows = [{"id": str(i), "text": r["text"]} for i, r in enumerate(make_rows(200, 7, True))]
    rows[5]["text"], rows[50]["text"], rows[150]["text"] = None, "", "  "
    write_rows(tmp_path / "in.parquet", rows)
    summary = run(_cfg(checkpoint=str(tiny_checkpoint), input=str(tmp_path / "in.parquet"),
                       output=str(tmp_path / "out"), passthrough_columns=[], empty_text=policy))
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["empty_texts"] == {"count": 3, "policy": policy}
    assert summary.rows_in == 200 and summary.rows_out == rows_out


def test_empty_text_error_policy_names_the_file(ray_local, tiny_checkpoint, tmp_path):
    write_rows(tmp_path / "holes.parquet", [{"id": "1", "text": "happy day"}, {"id": "2", "text": None}])
    with pytest.raises(ScoreError, match=r"holes\.parquet.*1 null or empty text"):
        run(_cfg(checkpoint=str(tiny_checkpoint), input=str(tmp_path / "holes.parquet"), output=str(tmp_path / "o"),
                 passthrough_columns=[], empty_text="error"))


def test_missing_text_column_is_named_before_scoring(tiny_checkpoint, tmp_path):
    write_rows(tmp_path / "a.parquet", [{"id": "1", "body": "x"}])
    with pytest.raises(ValueError, match=r"a\.parquet: text column 'text' not found"):
        run(_cfg(checkpoint=str(tiny_checkpoint), input=str(tmp_path / "a.parquet"), output=str(tmp_path / "o"),
                 passthrough_columns=[]))


def test_checkpoint_that_does_not_exist_or_is_not_a_checkpoint(tiny_model, corpus, tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*nope does not exist"):
        run(_cfg(checkpoint=str(tmp_path / "nope"), input=str(corpus), output=str(tmp_path / "o")))
    with pytest.raises(CheckpointError, match=r"is not a bertclf checkpoint: it has no bertclf\.json"):
        run(_cfg(checkpoint=str(tiny_model), input=str(corpus), output=str(tmp_path / "o")))


def test_output_inside_the_input_prefix_is_refused(tiny_checkpoint, corpus):
    with pytest.raises(ValueError, match="is inside the input"):
        run(_cfg(checkpoint=str(tiny_checkpoint), input=str(corpus), output=str(corpus / "scores")))


def test_input_that_matches_no_files(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"glob .*\*\.parquet matches no files"):
        run(_cfg(checkpoint=str(tiny_checkpoint), input=str(tmp_path / "none" / "*.parquet"),
                 output=str(tmp_path / "o")))


def test_predict_prints_labels_from_the_checkpoint(tiny_checkpoint):
    from bertclf.cli import render_predictions
    from bertclf.model.inference import predict_texts

    rows = predict_texts(str(tiny_checkpoint), ["happy glad day", "scared panic"])
    expected = _direct_probs(tiny_checkpoint, ["happy glad day", "scared panic"])
    for row, probs in zip(rows, expected, strict=True):
        assert set(row["probabilities"]) == {"anger", "fear", "joy"}
        np.testing.assert_allclose([row["probabilities"][n] for n in ["anger", "fear", "joy"]], probs, atol=1e-5)
        assert row["predicted"] == [n for n, p, t in zip(["anger", "fear", "joy"], probs, THRESHOLDS, strict=True)
                                    if p >= t]
    assert "predicted:" in render_predictions(rows)


def test_each_unit_result_reaches_the_driver_before_the_next_unit_finishes(ray_local):
    """Progress and failures are reported as units land: the second unit here can only finish once the
    driver has seen the first (an iterator that waits for a block ahead would time it out)."""
    import ray
    import ray.data

    from bertclf.records import UnitResult
    from bertclf.scoring.driver import _results_as_they_land

    @ray.remote(num_cpus=0)
    class Gate:
        def __init__(self):
            self.opened = False

        def open(self):
            self.opened = True

        def is_open(self):
            return self.opened

    gate = Gate.remote()

    def unit(batch):
        gate_open = False
        if batch["i"][0] == 1:
            deadline = time.time() + 20
            while not ray.get(gate.is_open.remote()) and time.time() < deadline:
                time.sleep(0.05)
            gate_open = ray.get(gate.is_open.remote())
        result = UnitResult(unit=str(batch["i"][0]), input="gate open" if gate_open else "gate closed")
        return {"result": [result.to_json()]}

    ds = ray.data.from_items([{"i": 0}, {"i": 1}], override_num_blocks=2).map_batches(unit, batch_size=1,
                                                                                      num_cpus=0.5)
    seen = []
    for result in _results_as_they_land(ds):
        seen.append(result)
        ray.get(gate.open.remote())
    assert sorted(r.unit for r in seen) == ["0", "1"]
    assert seen[0].unit == "0" and seen[1].input == "gate open"


def test_long_texts_are_scored_in_windows_and_pooled_to_one_row_each(ray_local, tiny_model, tmp_path):
    """long_text chunk: a text longer than max_length gives one output row whose probabilities are the max over
    its windows' (multi-label), the windows cut here independently by the tokenizer's own overflow windows."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertclf.labels import LabelSpace
    from bertclf.model.modeling import build_classifier, load_tokenizer
    from bertclf.records import CheckpointMeta

    space = LabelSpace("multi_label", ["anger", "fear", "joy"], THRESHOLDS)
    ckpt = tmp_path / "chunk_ckpt"
    adapters.save_model_dir(ckpt, build_classifier(str(tiny_model), space), load_tokenizer(str(tiny_model)),
                              CheckpointMeta(labels=space, max_length=16, epoch=1, long_text="chunk", chunk_stride=4))
    rows = make_rows(30, 21, True)
    texts = [" ".join([r["text"]] * (1 + i % 6)) for i, r in enumerate(rows)]  # 1 to 6 times 10 words
    write_rows(tmp_path / "long.parquet", [{"id": f"l{i:02d}", "text": t} for i, t in enumerate(texts)])
    summary = run(_cfg(checkpoint=str(ckpt), input=str(tmp_path / "long.parquet"), output=str(tmp_path / "out"),
                       passthrough_columns=[]))
    assert summary.rows_out == 30
    got = read_scores(str(tmp_path / "out"))
    probs = np.stack([got[f"prob_{n}"].to_numpy() for n in space.names], axis=1)

    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    enc = tok(texts, truncation=True, max_length=16, stride=4, return_overflowing_tokens=True, padding=True,
              return_tensors="pt")
    owner = enc.pop("overflow_to_sample_mapping").numpy()
    assert len(owner) > 2 * len(texts), "most texts are longer than one window"
    with torch.no_grad():
        window_probs = torch.sigmoid(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits)
    expected = np.stack([window_probs.numpy()[owner == i].max(axis=0) for i in range(len(texts))])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    manifest = storage.read_json(str(tmp_path / "out" / "_manifest.json"))
    assert manifest["rows_out"] == 30 and manifest["windows_scored"] == len(owner), "the manifest counts windows"
