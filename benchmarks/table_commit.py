"""What an Iceberg night's commit costs as a night's parts grow: 10^2, 10^3, 10^4 parts (bertclf.scoring.table).

For each size, a committed scoring output of N small parts (the score schema, 28 labels, with its manifest) is
committed to a table of the embedded SQLite catalog, twice (the first night, then a re-run that replaces it); the
baseline in the same run is copying the same N part files alone (the commit's own cost is the rest). Printed and
saved: seconds, seconds per part, the ratio to the copy, and the catalog's size (metadata files + SQLite).

    python benchmarks/table_commit.py [--parts 100,1000,10000] [--rows-per-part 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as bc  # noqa: E402

LABELS = [f"label_{i:02d}" for i in range(28)]


def write_output(root: Path, parts: int, rows: int, date: dt.date):
    """A complete scoring output: N parts in the score schema, its manifest and _SUCCESS."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertclf.labels import LabelSpace
    from bertclf.records import CheckpointRef, EmptyTexts, Manifest, PartEntry, UnitCounts
    from bertclf.scoring.manifest import MANIFEST, SUCCESS

    root.mkdir(parents=True)
    rng = np.random.default_rng(parts)
    entries = []
    for i in range(parts):
        probs = rng.random((rows, len(LABELS)), dtype=np.float32)
        columns = {"id": pa.array([f"{i}-{j}" for j in range(rows)])}
        columns.update({f"prob_{name}": pa.array(probs[:, k]) for k, name in enumerate(LABELS)})
        columns["predicted"] = pa.array([[LABELS[int(k)]] for k in probs.argmax(1)], pa.list_(pa.string()))
        columns["top_label"] = pa.array([LABELS[int(k)] for k in probs.argmax(1)])
        columns["top_score"] = pa.array(probs.max(1))
        columns["date"] = pa.array([date] * rows, pa.date32())
        name = f"part-{i:06d}.parquet"
        pq.write_table(pa.table(columns), root / name)
        entries.append(PartEntry(name=name, input=f"in-{i}.parquet", row_groups=[0], rows=rows))
    manifest = Manifest(output=str(root), date=date.isoformat(), created=bc.now_utc(), inputs=[], parts=entries,
                        rows_in=parts * rows, rows_out=parts * rows, empty_texts=EmptyTexts(count=0, policy="score"),
                        checkpoint=CheckpointRef(uri="bench", sha256="0" * 64, epoch=1),
                        labels=LabelSpace("multi_label", LABELS, [0.5] * len(LABELS)), predicted_label_counts={},
                        predicted_label_distribution={}, distribution_change_vs_previous=None, rows_per_s=None,
                        timings={}, units=UnitCounts(total=parts, scored_this_run=parts, already_done=0),
                        run_id=f"bench-{parts}")
    (root / MANIFEST).write_text(manifest.to_json(indent=2))
    (root / SUCCESS).write_bytes(b"")
    return manifest


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(parts: int, rows: int, work: Path) -> dict:
    import dataclasses

    from bertclf import storage
    from bertclf.scoring.table import NightlyTable, commit_night

    date = dt.date(2026, 12, 6)
    output = write_output(work / f"out-{parts}", parts, rows, date)
    t0 = time.perf_counter()
    for entry in output.parts:
        storage.copy_file(str(work / f"out-{parts}" / entry.name), str(work / f"copy-{parts}" / entry.name))
    copy_s = time.perf_counter() - t0
    warehouse = work / f"warehouse-{parts}"
    table = NightlyTable.of("local.bench.scores", str(warehouse))
    t0 = time.perf_counter()
    commit_night(table, output)
    first_s = time.perf_counter() - t0
    rerun = dataclasses.replace(output, run_id=f"bench-{parts}-rerun", created=bc.now_utc())
    (work / f"out-{parts}" / "_manifest.json").write_text(rerun.to_json(indent=2))  # another run of the night
    t0 = time.perf_counter()
    commit_night(table, rerun)
    replace_s = time.perf_counter() - t0
    metadata = next(warehouse.rglob("metadata"))
    return {"parts": parts, "rows": parts * rows, "copy_seconds": copy_s, "first_commit_seconds": first_s,
            "replace_commit_seconds": replace_s, "commit_over_copy": first_s / copy_s,
            "first_ms_per_part": 1000 * first_s / parts, "replace_ms_per_part": 1000 * replace_s / parts,
            "metadata_bytes": dir_bytes(metadata), "sqlite_bytes": sum(f.stat().st_size for f in
                                                                      warehouse.glob("*.db"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="100,1000,10000")
    parser.add_argument("--rows-per-part", type=int, default=20)
    parser.add_argument("--out", help="result JSON (default: benchmarks/results/<date>-table-commit-<cpu>.json)")
    args = parser.parse_args()
    bc.setup_env()
    started = bc.now_utc()
    machine = bc.machine_info()
    if warning := bc.contention_warning(machine):
        print(warning)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bertclf-table-bench-") as tmp:
        for parts in (int(p) for p in args.parts.split(",")):
            row = measure(parts, args.rows_per_part, Path(tmp))
            rows.append(row)
            print(f"{parts:>6} parts: copy {row['copy_seconds']:.1f}s, first commit {row['first_commit_seconds']:.1f}s "
                  f"({row['first_ms_per_part']:.2f} ms/part, {row['commit_over_copy']:.2f}x the copy), replace "
                  f"{row['replace_commit_seconds']:.1f}s; metadata {row['metadata_bytes'] / 1e6:.2f} MB, sqlite "
                  f"{row['sqlite_bytes'] / 1e3:.0f} kB", flush=True)
    if len(rows) > 1:  # the growth exponent of each phase in parts (1.0: linear)
        first, last = rows[0], rows[-1]
        span = math.log(last["parts"] / first["parts"])
        for key in ("copy_seconds", "first_commit_seconds", "replace_commit_seconds", "metadata_bytes"):
            exponent = math.log(last[key] / first[key]) / span
            print(f"growth exponent of {key}: {exponent:.2f}")
    path = bc.result_path("table-commit", machine, started, args.out)
    bc.write_json(path, {"benchmark": "table_commit", "started": started, "machine": machine,
                         "versions": bc.versions(), "rows_per_part": args.rows_per_part, "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
