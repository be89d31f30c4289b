"""What must not grow past its bound with the corpus (issue 34; benchmarks/scale.py measures it up to 10^5 units):
the driver's memory for the footers of 10^4 input files, one request per small S3 write, the join of a previous
night's reuse indexes, and one corrupt file among 10^4 named by the run it fails."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertclf import storage
from bertclf.records import ReuseSource
from bertclf.scoring.reuse import (
    HASH_DTYPE,
    INDEX_DIR,
    ScoredTexts,
    hash_prefixes,
    load_previous,
    sorted_first,
    write_index,
)
from bertclf.scoring.shards import bounds
from bertclf.units import Footer, cut_units, file_metadata, read_footers, text_bytes

CORRUPT = b"PAR1" + b"\x00garbage" * 50 + b"PAR1"
# The driver's memory for planning 10^4 one-unit files (list, footers, units, their names), RSS growth of the
# process: 30-35 MB measured (2026-12-06, avx2), 85 MB before footers were kept compact. And for 600 files of 22
# columns x 50 row groups (3x10^4 units): 100 MB of reading in flight (16 threads, ~1 MB per decoded footer) plus
# ~60 KB per file (its units and their sizes): ~140 MB, 560 MB before (each decoded footer kept, freed only by the
# cycle collector).
PLAN_10K_FILES_MB = 50
PLAN_WIDE_FILES_MB = 250
WIDE_FILES = 600


def _hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 16), dtype=np.uint8).view(HASH_DTYPE).reshape(-1)


def test_sorted_first_is_numpys_first_occurrence_of_each_key():
    rng = np.random.default_rng(0)
    keys = _hashes(rng, 5000)
    repeated = np.concatenate([keys, keys[::7], keys[:10]])
    prefix = rng.integers(0, 256, size=(300, 16), dtype=np.uint8)
    prefix[:, :8] = 5  # one 8-byte prefix, different tails: the sort must look at all 16 bytes
    nuls = np.zeros((40, 16), np.uint8)
    nuls[:, 0] = np.arange(40) % 9
    nuls[:20, 15] = 1  # trailing NUL bytes, which numpy's S16 hides
    for k in (repeated, np.tile(prefix.view(HASH_DTYPE).reshape(-1), 2), nuls.view(HASH_DTYPE).reshape(-1),
              keys[:1], keys[:0]):
        unique, first = np.unique(k, return_index=True)
        assert np.array_equal(sorted_first(k), first)
        assert np.array_equal(k[sorted_first(k)], unique)


def test_previous_indexes_join_sorted_each_text_once_by_shard_and_precision(tmp_path):
    """Three parts' indexes that share texts load as one sorted index per precision holding each text once with
    its probabilities; a part scored with another key is left out and said why; a shard's range holds exactly the
    texts whose prefix is in it, and reads only the index row groups that overlap it."""
    rng = np.random.default_rng(1)
    texts, probs = _hashes(rng, 30_000), rng.random((30_000, 3), dtype=np.float32)
    key = {"checkpoint_sha256": "a" * 64}
    output = str(tmp_path / "previous")
    for name, rows, their_key in (("a", slice(0, 15_000), key), ("b", slice(10_000, 25_000), key),
                                  ("c", slice(20_000, 30_000), {**key, "precision_used": "bf16"}),
                                  ("d", slice(0, 100), {"checkpoint_sha256": "b" * 64})):
        order = np.argsort(texts[rows])
        write_index(str(tmp_path / "index.parquet"), ScoredTexts(3, texts[rows][order], probs[rows][order]),
                    {**their_key, "precision_used": their_key.get("precision_used", "fp32")})
        storage.upload_file(tmp_path / "index.parquet", storage.join(output, INDEX_DIR, name))
    source = ReuseSource(output=output, parts=["a", "b", "c", "d"], rows=30_100)
    loaded, skipped = load_previous(source, key, 3)
    assert len(skipped) == 1 and skipped[0].startswith("d: scored with checkpoint_sha256")
    fp32, bf16 = loaded["fp32"], loaded["bf16"]
    assert len(fp32) == 25_000 and len(bf16) == 10_000
    assert bool(np.all(fp32.keys[1:] > fp32.keys[:-1])) and fp32.from_previous.all()
    found, pos = fp32.lookup(texts[:25_000])
    assert found.all()
    np.testing.assert_array_equal(fp32.probs[pos], probs[:25_000])
    assert not fp32.lookup(texts[25_000:])[0].any()

    edges = bounds(3)
    pieces = [load_previous(source, key, 3, int(edges[k]), int(edges[k + 1]))[0]["fp32"] for k in range(3)]
    assert sum(len(p) for p in pieces) == 25_000
    for k, piece in enumerate(pieces):
        prefixes = hash_prefixes(piece.keys)
        assert prefixes.min() >= edges[k] and prefixes.max() < edges[k + 1]
    read = []
    row_groups = pq.ParquetFile.read_row_groups
    try:
        pq.ParquetFile.read_row_groups = lambda self, groups, *a, **kw: read.append(len(groups)) or row_groups(
            self, groups, *a, **kw)
        load_previous(ReuseSource(output=output, parts=["a"], rows=15_000), key, 3, int(edges[1]), int(edges[2]))
    finally:
        pq.ParquetFile.read_row_groups = row_groups
    total = pq.read_metadata(storage.join(output, INDEX_DIR, "a")).num_row_groups
    assert total >= 3 and read == [pytest.approx(total / 3, abs=1)], "a shard reads about its third of the groups"


def _wide_file() -> bytes:
    table = pa.table({"id": [str(i) for i in range(500)], "text": [f"happy day {i}" for i in range(500)],
                      **{f"c{j}": list(range(500)) for j in range(20)}})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=10)
    return buf.getvalue()


def test_compact_footers_read_as_pyarrows(tmp_path):
    """What the driver and its checks read from a footer is the same from a Footer as from pyarrow's FileMetaData,
    and so are the units cut from them."""
    (tmp_path / "wide.parquet").write_bytes(_wide_file())
    pq.write_table(pa.table({"id": ["1", "2", "3"], "text": ["a", "b", "c"]}), tmp_path / "narrow.parquet",
                   row_group_size=2)
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    files = sorted(str(p) for p in tmp_path.iterdir())
    footers, unreadable = read_footers(files)
    metas = {f: file_metadata(f) for f in files}
    assert not unreadable and all(isinstance(f, Footer) for f in footers.values())
    for uri, meta in metas.items():
        footer = footers[uri]
        assert footer.schema.to_arrow_schema() == meta.schema.to_arrow_schema()
        assert footer.schema.names == meta.schema.names
        assert (footer.num_rows, footer.num_row_groups, footer.num_columns) == (
            meta.num_rows, meta.num_row_groups, meta.num_columns)
        assert [footer.schema.column(j).path for j in range(meta.num_columns)] == [
            meta.schema.column(j).path for j in range(meta.num_columns)]
        for g in range(meta.num_row_groups):
            ours, theirs = footer.row_group(g), meta.row_group(g)
            assert (ours.num_rows, ours.num_columns) == (theirs.num_rows, theirs.num_columns)
            for j in range(theirs.num_columns):
                a, b = ours.column(j), theirs.column(j)
                assert (a.path_in_schema, a.total_compressed_size, a.total_uncompressed_size) == (
                    b.path_in_schema, b.total_compressed_size, b.total_uncompressed_size)
        with pytest.raises(IndexError):
            footer.row_group(meta.num_row_groups)
    assert cut_units(files, footers, 25, "text", 300) == cut_units(files, metas, 25, "text", 300)
    assert text_bytes(footers, "text") == text_bytes(metas, "text")
    assert len({id(f.schema) for f in footers.values()}) == 2  # the narrow and the empty file share one schema


PLAN_SCRIPT = """
import json, sys
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
from bertclf import storage
from bertclf.units import cut_units, read_footers
base = rss()
files = storage.list_parquet_files(sys.argv[1])
footers, unreadable = read_footers(files)
units = cut_units(files, footers, 10, "text")
names = {u.name for u in units}
print(json.dumps({"files": len(files), "units": len(units), "names": len(names),
                  "unreadable": {uri: str(err) for uri, err in unreadable.items()},
                  "rss_growth_mb": rss() - base}))
"""


def _plan_in_a_fresh_process(root: Path) -> dict:
    """List, read the footers of and cut units from `root`, in a process of its own (its memory is the driver's)."""
    out = subprocess.run([sys.executable, "-c", PLAN_SCRIPT, str(root)], capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_many(root: Path, count: int, data: bytes, corrupt: int | None = None) -> None:
    for k in range(count):
        folder = root / f"d{k // 1000:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"part-{k:05d}.parquet").write_bytes(CORRUPT if k == corrupt else data)


def test_planning_10k_one_unit_files_one_corrupt_stays_small_and_names_it(tmp_path):
    """10^4 input files of one row group each (10^4 units), one of them corrupt: the driver plans 9,999 units, says
    which file it can't read, and grows by less than PLAN_10K_FILES_MB."""
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [str(i) for i in range(10)], "text": [f"happy day {i}" for i in range(10)]}), buf)
    _write_many(tmp_path / "in", 10_000, buf.getvalue(), corrupt=4321)
    plan = _plan_in_a_fresh_process(tmp_path / "in")
    bad = str(tmp_path / "in" / "d04" / "part-04321.parquet")
    assert plan["files"] == 10_000 and plan["units"] == plan["names"] == 9_999
    assert list(plan["unreadable"]) == [bad] and "not a readable Parquet file" in plan["unreadable"][bad]
    assert plan["rss_growth_mb"] < PLAN_10K_FILES_MB, plan


def test_planning_wide_files_keeps_no_decoded_footer(tmp_path):
    """WIDE_FILES files of 22 columns x 50 row groups: each decoded footer is ~1 MB in memory; the driver keeps 16
    bytes per column chunk of it (PLAN_WIDE_FILES_MB)."""
    _write_many(tmp_path / "in", WIDE_FILES, _wide_file())
    plan = _plan_in_a_fresh_process(tmp_path / "in")
    assert plan["units"] == WIDE_FILES * 50
    assert plan["rss_growth_mb"] < PLAN_WIDE_FILES_MB, plan


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_small_s3_objects_are_written_with_one_request_each(bucket, s3_server, tmp_path):
    """A part, its index, a lease or a manifest (under one upload part) is one PutObject, not a multipart upload's
    three requests: counted at the S3 server, in its request log."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"moto-{s3_server.rsplit(':', 1)[1]}.log"
    assert log.exists(), f"the S3 server's request log is not at {log} (tests/conftest.py s3_server)"
    prefix = f"out-{uuid.uuid4().hex[:8]}"
    part = tmp_path / "part.parquet"
    pq.write_table(pa.table({"x": list(range(10_000))}), part)
    storage.write_bytes(f"s3://{bucket}/{prefix}/_lease.json", b"{}")
    storage.upload_file(part, f"s3://{bucket}/{prefix}/part.parquet")
    assert storage.read_bytes(f"s3://{bucket}/{prefix}/_lease.json") == b"{}"
    assert storage.read_bytes(f"s3://{bucket}/{prefix}/part.parquet") == part.read_bytes()
    time.sleep(0.5)  # the server's last log lines
    lines = [ANSI.sub("", line) for line in log.read_text(errors="replace").splitlines() if f"/{prefix}/" in line]
    writes = [line for line in lines if '"PUT ' in line or '"POST ' in line]
    assert len(writes) == 2 and not any("uploads" in line or "uploadId" in line for line in writes), writes


@pytest.mark.slow  # 10^4 units through the actors: 5.4 min on 2 cores (avx2, 2026-12-06)
def test_10k_input_files_one_corrupt_fails_by_name_and_commits_nothing_complete(ray_local, tiny_model, tmp_path):
    """As at small scale (test_score_integration): among 10^4 input files, a corrupt one fails the run with the
    file named, the other units' parts are kept, and neither _manifest.json nor _SUCCESS is written."""
    from bertclf.config import ScoreConfig
    from bertclf.dev.synthetic import make_rows
    from bertclf.dev.tiny_model import save_tiny_checkpoint
    from bertclf.scoring import ScoreError, run

    files = int(os.environ.get("BERTCLF_SCALE_TEST_FILES", "10000"))
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", tiny_model, "multi_label")
    buf = io.BytesIO()
    rows = make_rows(5, seed=3, multi_label=True)
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}), buf)
    corrupt = files // 2 + 7
    _write_many(tmp_path / "in", files, buf.getvalue(), corrupt=corrupt)
    output = str(tmp_path / "out")
    bad = re.escape(str(tmp_path / "in" / f"d{corrupt // 1000:02d}" / f"part-{corrupt:05d}.parquet"))
    with pytest.raises(ScoreError, match=rf"1 input file\(s\) failed.*\n\s*{bad}: .*not a readable Parquet file"):
        run(ScoreConfig(checkpoint=str(ckpt), input=str(tmp_path / "in"), output=output, id_column="id",
                        precision="fp32"))
    names = storage.list_names(output)
    assert "_SUCCESS" not in names and "_manifest.json" not in names
    assert sum(n.endswith(".parquet") for n in names) == files - 1


# Folding 10^4 parts of 28 labels: 4.5 MiB traced at its peak (one short row per part for `_parts`), where the
# list of their PartStats that the commit held before took 97 MiB (tracemalloc, 2026-12-06, avx2).
FOLD_10K_PARTS_MB = 12


def test_the_commit_folds_parts_without_holding_their_stats():
    """The commit's memory for 10^4 parts' stats (label counts and a histogram per label, as a GoEmotions
    checkpoint's parts hold) stays under a bound well below holding them all; the sums are exact."""
    import tracemalloc

    from bertclf.records import PartStats, WorkUnit
    from bertclf.scoring.parts import PartsFold

    labels = [f"label_{j:02d}" for j in range(28)]
    settings = {"precision": "fp32"}
    fold = PartsFold(labels, "a" * 64, settings)

    def part(k: int) -> tuple[WorkUnit, PartStats]:
        unit = WorkUnit(f"s3://bucket/night/in-{k:06d}.parquet", (0,), 20_000, 0)
        return unit, PartStats(
            unit=unit.name, input=unit.uri, row_groups=[0], rows_in=20_000, rows_out=20_000, empty_texts=0,
            label_counts={name: 700 + j for j, name in enumerate(labels)}, checkpoint_sha256="a" * 64,
            scored_with=settings, run_id="r1", precision_used="fp32", texts_scored=19_000,
            prob_histograms={name: [1000] * 20 for name in labels})

    tracemalloc.start()
    try:
        for k in range(10_000):
            fold.add(*part(k), seconds=1.5)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < FOLD_10K_PARTS_MB, f"folding 10^4 parts traced {peak:.1f} MiB"
    assert fold.rows_out == 2 * 10**8 and fold.label_counts["label_27"] == 727 * 10_000
    assert fold.score_histograms["label_00"] == [10**7] * 20 and fold.texts_scored == 19 * 10**7
    assert pq.read_table(io.BytesIO(fold.parts_file())).num_rows == 10_000
