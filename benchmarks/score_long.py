"""Benchmark: scoring long documents with `bertclf.scoring.run` -- units cut by their texts' bytes against whole
row groups (the plan before long documents were sized by work), and the blend's cost against the same checkpoint
without its baseline -- on one local Ray, each variant on the same warm cluster, in one run.

    python benchmarks/score_long.py --checkpoint runs/ng-blend/best \\
        --input ../shared/data/newsgroups20/validation.parquet --long-text chunk

Variants: `row groups` (whole row groups only: one file of one row group is one unit), `text bytes` (bertclf's
plan), `text bytes, no blend` (a copy of the checkpoint whose bertclf.json says the blend is off). Rows/s is
rows over the wall time around `scoring.run`; the ratios are printed and written to
benchmarks/results/<date>-score-long-<cpu class>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as bc  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="Parquet file(s) of long texts (a text and an id column)")
    p.add_argument("--long-text", default="checkpoint", choices=["checkpoint", "truncate", "chunk"])
    p.add_argument("--json", help="result file")
    args = p.parse_args(argv)
    bc.setup_env()
    from bertclf import scoring
    from bertclf.config import ScoreConfig
    from bertclf.scoring import read_manifest

    machine, started = bc.machine_info(), bc.now_utc()
    session, _ = bc.start_ray()
    bc.warm_ray_data()
    work = Path(tempfile.mkdtemp(prefix="bertclf-score-long-"))
    unblended = work / "unblended"
    shutil.copytree(args.checkpoint, unblended)
    meta = json.loads((unblended / "bertclf.json").read_text())
    blends = bool(meta.get("blend") and meta["blend"]["used"])
    if blends:
        meta["blend"] = {**meta["blend"], "used": False, "weight": 1.0, "thresholds": None}
        (unblended / "bertclf.json").write_text(json.dumps(meta))
    variants = [("row groups", args.checkpoint, "off"), ("text bytes", args.checkpoint, "auto")]
    if blends:
        variants.append(("text bytes, no blend", str(unblended), "auto"))
    runs = {}
    try:
        for name, ckpt, units_by_text in variants:
            output = work / name.replace(" ", "_").replace(",", "")
            t0 = time.perf_counter()
            scoring.run(ScoreConfig(checkpoint=ckpt, input=args.input, output=str(output), long_text=args.long_text,
                                    compile="off", units_by_text=units_by_text))
            wall = time.perf_counter() - t0
            manifest = read_manifest(str(output))
            runs[name] = {"rows": manifest.rows_out, "wall_seconds": round(wall, 1),
                          "rows_per_s": round(manifest.rows_out / wall, 2), "units": manifest.units.total,
                          "windows": manifest.to_dict().get("windows_scored")}
            print(f"[bench] {name}: {manifest.rows_out} rows in {wall:.1f}s, {runs[name]['rows_per_s']} rows/s, "
                  f"{manifest.units.total} unit(s)", flush=True)
    finally:
        bc.stop_ray()
        shutil.rmtree(work, ignore_errors=True)
    ratios = {"text bytes / row groups": round(runs["text bytes"]["rows_per_s"] / runs["row groups"]["rows_per_s"],
                                               2)}
    if blends:
        ratios["blend / no blend"] = round(runs["text bytes"]["rows_per_s"]
                                           / runs["text bytes, no blend"]["rows_per_s"], 3)
    print(f"[bench] ratios: {ratios}", flush=True)
    result = {"benchmark": "score_long", "date": started[:10], "started": started, "cpu_class": machine["cpu_class"],
              "machine": machine, "checkpoint": args.checkpoint, "input": args.input, "long_text": args.long_text,
              "blends": blends, "runs": runs, "ratios": ratios, "session": session, "versions": bc.versions()}
    path = Path(args.json) if args.json else bc.RESULTS_DIR / f"{started[:10]}-score-long-{machine['cpu_class']}.json"
    bc.write_json(path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
