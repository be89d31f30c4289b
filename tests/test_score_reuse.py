"""Skipping work already done: repeated texts scored once per unit, and yesterday's scores reused, on a real Ray.

Every comparison is against a run that scores every row (dedupe off, reuse none): the same probabilities within
the fp32 tolerance of test_score_integration, the same predictions, every row present once.
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from bertclf import storage
from bertclf.config import ScoreConfig
from bertclf.dev.scores import read_scores
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.errors import ConfigError
from bertclf.scoring import run
from bertclf.scoring.reuse import INDEX_DIR, ScoredTexts, read_index, text_hashes, write_index
from bertclf.scoring.tokens import TokenizedBatch, pack, pooled, unpack

LABELS = ["anger", "fear", "joy"]
DAY1, DAY2 = "2026-11-21", "2026-11-22"


@pytest.fixture(scope="module")
def ckpt(tiny_model, tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_model, "multi_label", [0.45, 0.5, 0.55])


@pytest.fixture(scope="module")
def other_ckpt(tiny_model, tmp_path_factory):
    """The same tiny BERT with another randomly initialised head: other weights, other sha256."""
    import torch

    torch.manual_seed(7)
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt_other"), tiny_model, "multi_label", [0.45, 0.5, 0.55])


def _texts(n: int, seed: int) -> list[str]:
    return list(dict.fromkeys(r["text"] for r in make_rows(n * 2, seed, True)))[:n]


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Day 1: 240 rows of 120 distinct texts (each twice, spread over 2 files). Day 2: 240 rows, 80% of them texts
    of day 1 (some repeated within day 2), 20% 24 texts day 1 never had, each twice."""
    root = tmp_path_factory.mktemp("nightly")
    old = _texts(120, 1)
    new = [t for t in _texts(200, 2) if t not in set(old)][:24]
    rng = random.Random(3)
    day1 = old + old
    rng.shuffle(day1)
    day2 = rng.choices(old, k=192) + new + new
    assert len(day1) == len(day2) == 240
    rng.shuffle(day2)
    for day, texts in ((DAY1, day1), (DAY2, day2)):
        (root / f"date={day}").mkdir()
        for k in range(2):
            rows = [{"id": f"{day}-{k}-{j}", "text": t} for j, t in enumerate(texts[k * 120:(k + 1) * 120])]
            write_rows(root / f"date={day}" / f"part-{k}.parquet", rows, row_group_size=40)
    return root, set(old), day2


def _cfg(**kw) -> ScoreConfig:
    base = dict(precision="fp32", rows_per_unit=60, read_batch_rows=32, compile="off", num_actors=1)
    return ScoreConfig(**{**base, **kw})


def _probs(table: pa.Table) -> np.ndarray:
    return np.stack([table[f"prob_{n}"].to_numpy() for n in LABELS], axis=1)


def _same_scores(a: pa.Table, b: pa.Table) -> None:
    assert a["id"].to_pylist() == b["id"].to_pylist() and len(set(a["id"].to_pylist())) == a.num_rows
    np.testing.assert_allclose(_probs(a), _probs(b), atol=1e-5)
    assert a["predicted"].to_pylist() == b["predicted"].to_pylist()


def _distinct_per_part(output: str, texts_by_id: dict[str, str], skip: set[str] = frozenset()) -> int:
    """Distinct texts summed over the output's parts (units), leaving out the texts in `skip`."""
    parts = [n for n in storage.list_names(output) if n.endswith(".parquet")]
    ids = [pq.read_table(f"{output}/{n}", columns=["id"])["id"].to_pylist() for n in parts]
    return sum(len({texts_by_id[i] for i in part} - skip) for part in ids)


def _texts_by_id(folder) -> dict[str, str]:
    table = pads.dataset(str(folder), format="parquet").to_table()
    return dict(zip(table["id"].to_pylist(), table["text"].to_pylist(), strict=True))


def test_index_round_trip_and_hashes_survive_the_gpu_stage_payload(tmp_path):
    hashes = text_hashes(["same", "other", "same", ""])
    assert hashes[0] == hashes[2] and len(set(hashes.tolist())) == 3
    texts = ScoredTexts(3)
    texts.add(hashes[[0, 1, 3]], np.arange(9, dtype=np.float32).reshape(3, 3), np.zeros(3, bool))
    write_index(str(tmp_path / "i.parquet"), texts, {"checkpoint_sha256": "x"})
    key, keys, probs = read_index(str(tmp_path / "i.parquet"), 3)
    assert key == {"checkpoint_sha256": "x"} and (keys == texts.keys).all() and (probs == texts.probs).all()
    found, pos = texts.lookup(text_hashes(["other", "never", "same"]))
    assert found.tolist() == [True, False, True] and probs[pos[0]].tolist() == [3, 4, 5]

    batch = TokenizedBatch(pa.table({"id": ["a", "b", "c", "d"]}), [[5], [6], [5], [7]], 4, 0, hashes)
    (back,) = list(unpack(pack(iter([batch]))))
    assert (back.text_hashes == hashes).all() and back.token_ids == batch.token_ids


def test_read_batches_are_pooled_until_the_model_has_a_full_batch_of_new_texts():
    """With most texts in the previous index, batches merge until `rows` texts need the model; rows keep their
    order and counts, and without a previous index the batches pass unchanged."""
    texts = [f"text {i}" for i in range(100)]
    previous = ScoredTexts(3)
    old = [t for i, t in enumerate(texts) if i % 5]  # 80% of the texts were scored before
    previous.add(np.sort(text_hashes(old)), np.zeros((len(old), 3), np.float32), np.zeros(len(old), bool))
    batches = [TokenizedBatch(pa.table({"id": texts[i:i + 10]}), [[i + k] for k in range(10)], 11, 1,
                              text_hashes(texts[i:i + 10])) for i in range(0, 100, 10)]
    pools = list(pooled(iter(batches), lambda hashes: previous.lookup(hashes)[0], rows=6))
    assert [p.rows_in for p in pools] == [33, 33, 33, 11]  # 2 new texts a batch: 3 batches give 6, the last 1
    assert [p.empty for p in pools] == [3, 3, 3, 1]
    assert pa.concat_tables([p.passthrough for p in pools])["id"].to_pylist() == texts
    assert [ids for p in pools for ids in p.token_ids] == [[i] for i in range(100)]
    assert (np.concatenate([p.text_hashes for p in pools]) == text_hashes(texts)).all()
    assert list(pooled(iter(batches), None, rows=6)) == batches


def test_reuse_from_with_reuse_none_is_a_config_error():
    with pytest.raises(ConfigError, match="reuse_from"):
        _cfg(reuse="none", reuse_from="/tmp/x").validate()


@pytest.fixture(scope="module")
def scored(ray_local, ckpt, days, tmp_path_factory):
    """Day 1 scored into a {date} partition (deduped, nothing earlier to reuse), and day 2 scored in full (every row
    run: dedupe off, reuse none): what the tests copy and compare against."""
    root, _, _ = days
    out = tmp_path_factory.mktemp("scored")
    first = run(_cfg(checkpoint=str(ckpt), input=str(root / "date={date}"), output=str(out / "date={date}"), date=DAY1))
    full = str(out / "full")
    run(_cfg(checkpoint=str(ckpt), input=str(root / f"date={DAY2}"), output=full, reuse="none", dedupe=False))
    return first, out / f"date={DAY1}", full


def _day1_copy(scored, folder) -> str:
    """Yesterday's committed output copied where a test's {date} template finds it."""
    target = folder / f"date={DAY1}"
    shutil.copytree(scored[1], target)
    return str(target)


def test_repeated_texts_are_scored_once_per_unit_and_every_row_gets_them(ray_local, ckpt, days, scored, tmp_path):
    root, _, _ = days
    first, deduped, _ = scored
    full = str(tmp_path / "full")
    run(_cfg(checkpoint=str(ckpt), input=str(root / f"date={DAY1}"), output=full, reuse="none", dedupe=False))
    _same_scores(read_scores(str(deduped)), read_scores(full))

    distinct = _distinct_per_part(str(deduped), _texts_by_id(root / f"date={DAY1}"))
    manifest = storage.read_json(f"{deduped}/_manifest.json")
    assert 120 <= distinct < 240, "the corpus repeats texts within units"
    assert manifest["duplicate_rows"] == first.duplicate_rows == 240 - distinct
    assert manifest["texts_scored"] == manifest["windows_scored"] == distinct
    assert manifest["rows_out"] == 240 and manifest["reuse"]["rows_reused"] == 0 and first.rows_reused == 0
    assert "no _SUCCESS" in manifest["reuse"]["note"]  # the days before day 1 were never scored
    parts = sorted(n for n in storage.list_names(str(deduped)) if n.endswith(".parquet"))
    assert sorted(storage.list_names(f"{deduped}/{INDEX_DIR}")) == parts, "one index per part"
    full_manifest = storage.read_json(f"{full}/_manifest.json")
    assert full_manifest["texts_scored"] == 240 and full_manifest["duplicate_rows"] == 240 - distinct


def test_yesterdays_scores_are_reused_and_match_a_full_rescore(ray_local, ckpt, days, scored, tmp_path):
    root, old, day2 = days
    _, _, full = scored
    day1_out = _day1_copy(scored, tmp_path / "scores")
    template, inputs = str(tmp_path / "scores" / "date={date}"), str(root / "date={date}")
    summary = run(_cfg(checkpoint=str(ckpt), input=inputs, output=template, date=DAY2))
    day2_out = str(tmp_path / "scores" / f"date={DAY2}")
    _same_scores(read_scores(day2_out), read_scores(full))

    repeated = sum(t in old for t in day2)
    manifest = storage.read_json(f"{day2_out}/_manifest.json")
    assert repeated == 192 and summary.rows_reused == manifest["reuse"]["rows_reused"] == repeated
    assert manifest["reuse"]["source"] == day1_out and manifest["reuse"]["reused_from"] == {day1_out: repeated}
    # only the 24 new texts ran, once in each unit that holds them
    new_per_part = _distinct_per_part(day2_out, _texts_by_id(root / f"date={DAY2}"), skip=old)
    assert manifest["texts_scored"] == new_per_part and 24 <= new_per_part < 48
    assert manifest["reuse_key"]["checkpoint_sha256"] == manifest["checkpoint"]["sha256"]


@pytest.mark.slow
def test_a_day_repeating_the_day_before_is_copied_whole_new_texts_included(ray_local, ckpt, days, scored, tmp_path):
    root, _, _ = days
    _, _, full = scored
    _day1_copy(scored, tmp_path / "scores")
    template = str(tmp_path / "scores" / "date={date}")
    day3 = root / "date=2026-11-23"
    if not day3.exists():
        shutil.copytree(root / f"date={DAY2}", day3)
    run(_cfg(checkpoint=str(ckpt), input=str(root / "date={date}"), output=template, date=DAY2))
    third = run(_cfg(checkpoint=str(ckpt), input=str(root / "date={date}"), output=template, date="2026-11-23"))
    day2_out = str(tmp_path / "scores" / f"date={DAY2}")
    assert third.rows_reused == 240 and third.reused_from == day2_out
    assert storage.read_json(f"{tmp_path}/scores/date=2026-11-23/_manifest.json")["texts_scored"] == 0
    _same_scores(read_scores(str(tmp_path / "scores" / "date=2026-11-23")), read_scores(full))


def test_an_unfinished_output_is_never_reused(ray_local, ckpt, days, scored, tmp_path):
    root, _, _ = days
    day1_out = _day1_copy(scored, tmp_path)
    storage.delete(f"{day1_out}/_SUCCESS")
    refused = run(_cfg(checkpoint=str(ckpt), input=str(root / "date={date}"), output=str(tmp_path / "date={date}"),
                       date=DAY2))
    manifest = storage.read_json(str(tmp_path / f"date={DAY2}" / "_manifest.json"))
    assert refused.rows_reused == 0 and f"{day1_out}: no _SUCCESS" in manifest["reuse"]["note"]
    assert manifest["texts_scored"] == _distinct_per_part(str(tmp_path / f"date={DAY2}"),
                                                          _texts_by_id(root / f"date={DAY2}"))
    _same_scores(read_scores(str(tmp_path / f"date={DAY2}")), read_scores(scored[2]))


def test_another_checkpoints_scores_are_never_reused(ray_local, other_ckpt, days, scored, tmp_path):
    root, _, _ = days
    day1_out = _day1_copy(scored, tmp_path)
    changed = run(_cfg(checkpoint=str(other_ckpt), input=str(root / "date={date}"),
                       output=str(tmp_path / "date={date}"), date=DAY2))
    manifest = storage.read_json(str(tmp_path / f"date={DAY2}" / "_manifest.json"))
    assert changed.rows_reused == 0 and f"{day1_out}: scored with another checkpoint" in manifest["reuse"]["note"]
    assert "checkpoint_sha256" in manifest["reuse"]["note"]
    assert manifest["texts_scored"] == _distinct_per_part(str(tmp_path / f"date={DAY2}"),
                                                          _texts_by_id(root / f"date={DAY2}"))
    other, ours = _probs(read_scores(str(tmp_path / f"date={DAY2}"))), _probs(read_scores(scored[2]))
    assert np.abs(other - ours).max() > 1e-3, "the other head's probabilities, not copies of day 1's"


@pytest.mark.slow  # reuse on local outputs runs by default; this adds S3 and reuse_from
def test_reuse_from_an_explicit_output_on_s3(ray_local, ckpt, days, scored, bucket):
    root, old, day2 = days
    for f in (root / f"date={DAY2}").iterdir():
        storage.write_bytes(f"s3://{bucket}/in/{f.name}", f.read_bytes())
    yesterday = f"s3://{bucket}/scores/yesterday"
    storage.upload_dir(scored[1], yesterday, last=["_SUCCESS"])
    today = f"s3://{bucket}/scores/today"
    summary = run(_cfg(checkpoint=str(ckpt), input=f"s3://{bucket}/in/", output=today, reuse_from=yesterday))
    assert summary.rows_reused == sum(t in old for t in day2) and summary.reused_from == yesterday
    manifest = json.loads(storage.read_bytes(f"{today}/_manifest.json"))
    assert manifest["reuse"]["reused_from"] == {yesterday: summary.rows_reused}
    parts = {n for n in storage.list_names(today) if n.endswith(".parquet")}
    assert storage.list_names(f"{today}/{INDEX_DIR}") == parts
    _same_scores(read_scores(today), read_scores(scored[2]))


def test_a_previous_index_in_shard_actors_answers_as_one_and_a_missing_one_means_no_reuse(ray_local, tmp_path):
    """Four shard actors, each holding one hash range of three parts' indexes, answer lookups exactly as the whole
    index does, per precision; an index that can't be read (its output is gone) starts no shards: None, so the run
    scores every text instead of failing."""
    from bertclf.records import ReuseSource
    from bertclf.scoring import shards

    rng = np.random.default_rng(7)
    texts = text_hashes([f"text {i}" for i in range(6000)])
    probs = rng.random((6000, 3), dtype=np.float32)
    key = {"checkpoint_sha256": "a" * 64}
    output = str(tmp_path / "previous")
    for name, rows, precision in (("a", slice(0, 3000), "fp32"), ("b", slice(2000, 5000), "fp32"),
                                  ("c", slice(5000, 6000), "bf16")):
        order = np.argsort(texts[rows])
        write_index(str(tmp_path / "index.parquet"), ScoredTexts(3, texts[rows][order], probs[rows][order]),
                    {**key, "precision_used": precision})
        storage.upload_file(tmp_path / "index.parquet", storage.join(output, INDEX_DIR, name))
    source = ReuseSource(output=output, parts=["a", "b", "c"], rows=6000)
    index = shards.start(source, key, 3, shards=4)
    try:
        assert index is not None and len(index.shards) == 4 and len(set(index.owners(texts).tolist())) == 4
        asked = np.concatenate([texts, text_hashes(["never scored"])])
        found, got = index.find(asked, "fp32")
        assert found[:5000].all() and not found[5000:].any()
        np.testing.assert_array_equal(got[:5000], probs[:5000])
        assert not got[5000:].any(), "rows not found are zeros"
        bf16_found, bf16 = index.find(asked, "bf16")
        assert bf16_found[5000:6000].all() and bf16_found.sum() == 1000
        np.testing.assert_array_equal(bf16[5000:6000], probs[5000:6000])
        held, none = index.find(asked, "fp32", probs=False)
        assert (held == found).all() and none is None
    finally:
        shards.stop(index)
    assert shards.start(ReuseSource(output=str(tmp_path / "gone"), parts=["a"], rows=10), key, 3, 2) is None


def test_a_shard_lost_mid_run_costs_the_reuse_not_the_units(ray_local, tmp_path, caplog):
    """A shard actor that dies while the units are scored (its node lost) makes lookups raise; the scoring actor
    then finds nothing, says so once, and scores every text from then on."""
    import ray

    from bertclf.records import ReuseSource
    from bertclf.scoring import shards
    from bertclf.scoring.actor import UnitScorer

    texts = text_hashes([f"text {i}" for i in range(100)])
    order = np.argsort(texts)
    write_index(str(tmp_path / "index.parquet"), ScoredTexts(3, texts[order], np.ones((100, 3), np.float32)),
                {"checkpoint_sha256": "a" * 64, "precision_used": "fp32"})
    storage.upload_file(tmp_path / "index.parquet", storage.join(str(tmp_path / "previous"), INDEX_DIR, "a"))
    index = shards.start(ReuseSource(output=str(tmp_path / "previous"), parts=["a"], rows=100),
                         {"checkpoint_sha256": "a" * 64}, 3, 2)
    assert index is not None
    scorer = UnitScorer.__new__(UnitScorer)  # its lookups only: no checkpoint to load
    scorer.settings = type("Settings", (), {"reuse_index": index})()
    scorer.precision_used, scorer._index_lost = "fp32", False
    scorer.space = type("Space", (), {"names": ["a", "b", "c"]})()
    assert scorer._previous_find(texts)[0].all() and scorer._previous_find(texts, probs=False)[0].all()
    shards.stop(index)
    with pytest.raises(ray.exceptions.RayActorError):
        index.find(texts, "fp32")
    found, probs = scorer._previous_find(texts)
    assert not found.any() and probs.shape == (100, 3) and not scorer._previous_find(texts, probs=False)[0].any()
    assert scorer._index_lost and "no longer reachable" in caplog.text
