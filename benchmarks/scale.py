"""Benchmark: what grows with the corpus in `bertclf score`, measured at 10^3, 10^4 and 10^5 units (issue 34).

    python benchmarks/scale.py [--sizes 300,1000,10000,100000] [--score-max 10000] [--storage local,s3]
                               [--layouts row_groups,files] [--reuse-texts 1000000,10000000] [--resume-size 1000]

The model is a stand-in: a random 1-layer BERT (hidden 32) built here with bertclf.dev's builders, so the costs
that grow with the number of units (listing, footers, planning, leases, per-part commits, the manifest check,
the reuse indexes, S3 requests) are what is timed, not the encoder. A unit is one row group of ROWS_PER_UNIT
rows: layout `files` has one file per unit, layout `row_groups` files of 100 row groups each.

For each storage (local disk, and moto's S3 server on 127.0.0.1), layout and size:
- `score` (sizes up to --score-max): `bertclf.scoring.run` in a child process, from nothing to _SUCCESS;
- `commit` (every size): the same run over an output whose parts all exist (from the scored run, or written here
  from a real part with its footer stats renamed per unit when the size was not scored): every phase but scoring,
  through the same entry point, so 10^5 units are measured without scoring 10^6 rows on 2 cores.
Each child reports its phases twice: `manifest.timings` (the driver's own) and the library functions timed from
outside (wrapped by name in the driver's namespace, where they exist), plus its peak RSS per phase (the driver is
the child process: Ray's workers are other processes). S3 requests are counted at the server: moto's request log,
split into phases by HEAD requests for `__mark__/<phase>` keys the child sends at each phase boundary.
Then: the growth exponent of each phase (least-squares slope of log time over log units), the reuse index load
(`bertclf.scoring.reuse.load_previous`) at --reuse-texts distinct texts against the loader it replaced, and a
run killed (SIGKILL) once half its units are committed, then resumed.
Results: one JSON (default benchmarks/results/<date>-scale-<cpu class>.json).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common as bc

bc.setup_env()

ROWS_PER_UNIT = 10  # rows per row group = per unit: short texts, so per-unit costs dominate
GROUPS_PER_FILE = 100  # layout row_groups
VARIANTS = 32  # distinct input files whose bytes are copied round-robin (writing 10^5 files stays fast)
BUCKET = "bertclf-scale"
LABELS = 3  # the synthetic label space of bertclf.dev


# ---------------------------------------------------------------------------------------------------------- setup

def tiny_checkpoint(workdir: Path) -> str:
    """A random 1-layer BERT (hidden 32) over bertclf.dev's synthetic words, saved as a bertclf checkpoint."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from bertclf.dev.synthetic import WORDS
    from bertclf.dev.tiny_model import save_tiny_checkpoint

    ckpt = workdir / "checkpoint"
    if (ckpt / "bertclf.json").exists():
        return str(ckpt)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + list("abcdefghijklmnopqrstuvwxyz"))}
    base = workdir / "tiny_bert_1layer"
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(base, safe_serialization=True)
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(base)
    save_tiny_checkpoint(ckpt, base, "multi_label", [0.5] * LABELS)
    return str(ckpt)


def variant_bytes(layout: str) -> list[bytes]:
    """VARIANTS Parquet files of one layout (ids and texts from bertclf.dev.synthetic), as bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertclf.dev.synthetic import make_rows

    groups = 1 if layout == "files" else GROUPS_PER_FILE
    out = []
    for v in range(VARIANTS):
        rows = make_rows(groups * ROWS_PER_UNIT, seed=1000 + v, multi_label=True)
        table = pa.Table.from_pylist([{"id": r["id"], "text": r["text"]} for r in rows])
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=ROWS_PER_UNIT)
        out.append(buf.getvalue())
    return out


def put_objects(root: str, items: list[tuple[str, bytes]], threads: int = 16) -> None:
    """Write (relative name, bytes) under a local directory or s3:// prefix (setup: not timed as driver work)."""
    from bertclf import storage

    if not storage.is_s3(root):
        for name, data in items:
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        return
    fs, base = storage.resolve(root)

    def put(item):
        name, data = item
        with fs.open_output_stream(f"{base}/{name}") as f:
            f.write(data)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, items))


def corpus(root: str, layout: str, units: int) -> dict:
    """`units` units of ROWS_PER_UNIT rows under root (kept between runs when complete: `_corpus.json`)."""
    from bertclf import storage

    marker = storage.join(root, "_corpus.json")
    want = {"layout": layout, "units": units, "rows_per_unit": ROWS_PER_UNIT}
    if storage.exists(marker) and json.loads(storage.read_bytes(marker)) == want:
        return {**want, "rows": units * ROWS_PER_UNIT, "written_seconds": 0.0}
    if storage.is_s3(root):
        storage.delete(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    variants = variant_bytes(layout)
    files = units if layout == "files" else math.ceil(units / GROUPS_PER_FILE)
    if layout == "row_groups" and units % GROUPS_PER_FILE:
        raise SystemExit(f"layout row_groups needs units in multiples of {GROUPS_PER_FILE}")
    # 100 files per folder, as a partitioned upstream writes them
    put_objects(root, [(f"d{k // 1000:04d}/part-{k:06d}.parquet", variants[k % VARIANTS]) for k in range(files)])
    storage.write_bytes(marker, json.dumps(want).encode())
    seconds = time.perf_counter() - t0
    print(f"[bench] corpus {root}: {files} file(s), {units} unit(s), {units * ROWS_PER_UNIT} rows in {seconds:.1f}s",
          flush=True)
    return {**want, "files": files, "rows": units * ROWS_PER_UNIT, "written_seconds": seconds}


def fabricate_parts(ckpt: str, inputs: str, output: str, template: str) -> dict:
    """Every unit's part, committed as the actors commit theirs but without scoring: a real part (`template`, a
    part URI) with its footer stats renamed to each unit. Setup for the `commit` measurement of sizes not scored."""
    import dataclasses

    import pyarrow.parquet as pq

    from bertclf import storage
    from bertclf.scoring.actor import PART_CHECKPOINT_KEY, PART_RUN_KEY, PART_STATS_KEY, read_part_stats
    from bertclf.units import cut_units, read_footers

    t0 = time.perf_counter()
    stats = read_part_stats(template)
    fs, path = storage.resolve(template)
    with fs.open_input_file(path) as f:
        table = pq.read_table(f)
    files = storage.list_parquet_files(inputs)
    footers, _ = read_footers(files)
    units = cut_units(files, footers, ROWS_PER_UNIT)
    if storage.is_s3(output):
        storage.delete(output)
    else:
        shutil.rmtree(output, ignore_errors=True)

    def part(unit):
        s = dataclasses.replace(stats, unit=unit.name, input=unit.uri, row_groups=list(unit.row_groups),
                                rows_in=unit.num_rows, rows_out=unit.num_rows)
        meta = {**(table.schema.metadata or {}), PART_STATS_KEY.encode(): s.to_json().encode(),
                PART_CHECKPOINT_KEY.encode(): stats.checkpoint_sha256.encode(), PART_RUN_KEY.encode(): b"fabricated"}
        buf = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd")
        return unit.name, buf.getvalue()

    chunk = 5000
    for i in range(0, len(units), chunk):
        put_objects(output, [part(u) for u in units[i:i + chunk]])
    seconds = time.perf_counter() - t0
    print(f"[bench] fabricated {len(units)} part(s) in {output} ({seconds:.1f}s)", flush=True)
    return {"parts": len(units), "seconds": seconds, "template": template}


# ------------------------------------------------------------------------------------------- the child: one run

class Phases:
    """Inclusive wall time, calls and peak RSS per phase of one run, and S3 marks at each phase boundary."""

    def __init__(self, mark_prefix: str | None):
        self.mark_prefix = mark_prefix
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.peak_rss: dict[str, float] = {}
        self.stack: list[str] = ["setup"]
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.baseline_rss = self.rss_mb()
        self.lock = threading.Lock()
        threading.Thread(target=self._sample, daemon=True).start()

    def rss_mb(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = self.rss_mb()
            for name in list(self.stack):
                if rss > self.peak_rss.get(name, 0.0):
                    self.peak_rss[name] = rss

    def mark(self, name: str) -> None:
        if self.mark_prefix:
            from bertclf import storage

            fs, path = storage.resolve(f"{self.mark_prefix}/{name}")
            fs.get_file_info(path)  # one HEAD (and a LIST) that the server's log shows: the phase boundary

    def wrap(self, module, attr: str, phase: str, per_call: list[str] | None = None) -> bool:
        fn = getattr(module, attr, None)
        if fn is None:
            return False

        def timed(*args, **kwargs):
            with self.lock:
                n = self.calls.get(phase, 0)
                self.calls[phase] = n + 1
            name = per_call[n] if per_call and n < len(per_call) else phase
            nested = threading.current_thread() is not threading.main_thread()
            if not nested:
                self.stack.append(name)
                self.mark(name)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - t0
                with self.lock:
                    self.seconds[name] = self.seconds.get(name, 0.0) + seconds
                if not nested:
                    self.stack.pop()
                    self.mark(f"after-{name}")

        setattr(module, attr, timed)
        return True

    def stop(self) -> dict:
        self._stop.set()
        return {"seconds": {k: round(v, 4) for k, v in self.seconds.items()}, "calls": self.calls,
                "peak_rss_mb": {k: round(v, 1) for k, v in self.peak_rss.items()},
                "baseline_rss_mb": round(self.baseline_rss, 1),
                "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def instrument(phases: Phases) -> list[str]:
    """Wrap the driver's library calls by name (the driver is being rewritten: missing names are skipped)."""
    import bertclf.scoring.driver as driver
    import bertclf.scoring.lease as lease
    import bertclf.scoring.manifest as manifest
    from bertclf import storage
    from bertclf.scoring.parts import PartsFold

    wrapped = []
    for module, attr, phase, per_call in [
        (storage, "list_parquet_files", "list", None),
        (driver, "read_footers", "footers", None),
        (driver, "_check_columns", "check_columns", None),
        (driver, "check_before_ray", "check_inputs", None),
        (storage, "check_writable", "check_writable", None),
        (lease, "acquire", "lease_acquire", None),
        (driver, "fold_existing", "resume_footers", None),  # a resume's parts: read, checked and folded once
        (driver, "fold_scored", "commit_footers", None),  # this run's parts, read back for the commit
        (driver, "unit_plan", "unit_plan", None),
        (driver, "_unit_plan", "unit_plan", None),
        (driver, "connect", "ray_connect", None),
        (driver, "cut_units", "cut_units", None),
        (driver, "_reuse_source", "reuse_source", None),
        (driver, "_score_units", "score", None),
        (driver, "commit", "commit", None),
        (PartsFold, "check", "commit.check_parts", None),
        (manifest, "previous_manifest", "commit.previous_manifest", None),
        (lease, "release", "lease_release", None),
    ]:
        if phases.wrap(module, attr, phase, per_call):
            wrapped.append(f"{module.__name__}.{attr}")
    return wrapped


def child(spec: dict) -> dict:
    """One scoring run (spec: checkpoint, input, output, mark_prefix), its phases and what it wrote."""
    from bertclf import storage

    phases = Phases(spec.get("mark_prefix"))
    from bertclf import scoring
    from bertclf.config import ScoreConfig
    from bertclf.records import Manifest
    from bertclf.scoring import drift
    from bertclf.scoring.parts import part_names
    from bertclf.scoring.reuse import INDEX_DIR

    wrapped = instrument(phases)
    cfg = ScoreConfig(checkpoint=spec["checkpoint"], input=spec["input"], output=spec["output"], id_column="id",
                      rows_per_unit=ROWS_PER_UNIT, reuse="none", num_actors=spec.get("num_actors"))
    phases.stack = ["run"]
    phases.mark("run")
    t0 = time.perf_counter()
    summary = scoring.run(cfg)
    wall = time.perf_counter() - t0
    phases.mark("after-run")
    phases.stack = ["after"]
    # what a next night's drift check and a resume read: the manifest of this size, parsed, then compared
    t1 = time.perf_counter()
    raw = storage.read_bytes(storage.join(summary.output, "_manifest.json"))
    manifest = Manifest.from_json(raw)
    read_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    drift.compare(manifest.predicted_label_distribution, manifest.score_histograms,
                  manifest.predicted_label_distribution, manifest.score_histograms, summary.output, 0.2, 0.05)
    compare_seconds = time.perf_counter() - t2
    fs, path = storage.resolve(storage.join(summary.output, INDEX_DIR))
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    index_bytes = sum(i.size or 0 for i in infos)
    parts = [i for i in fs.get_file_info(pafs.FileSelector(storage.resolve(summary.output)[1]))
             if storage.is_data_file(i.base_name)]
    parts_file = storage.join(summary.output, manifest.parts_file) if manifest.parts_file else None
    t3 = time.perf_counter()
    listed = len(part_names(summary.output, manifest))
    parts_list_seconds = time.perf_counter() - t3
    return {"wall_seconds": wall, "rows": summary.rows_out, "units_scored": summary.units_scored,
            "units_skipped": summary.units_skipped, "manifest_timings": manifest.timings,
            "phases": phases.stop(), "wrapped": wrapped,
            "manifest_bytes": len(raw), "manifest_parts": len(manifest.parts), "parts_listed": listed,
            "parts_file_bytes": len(storage.read_bytes(parts_file)) if parts_file else 0,
            "parts_list_read_seconds": parts_list_seconds,
            "drift_read_manifest_seconds": read_seconds, "drift_compare_seconds": compare_seconds,
            "reuse_index_files": len(infos), "reuse_index_bytes": index_bytes,
            "part_files": len(parts), "part_bytes": sum(i.size or 0 for i in parts), "output": summary.output}


# --------------------------------------------------------------------------------------- S3 requests at moto

REQUEST = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/[\d.]+"')
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours the lines of non-200 answers (404, 206)


def request_kind(method: str, target: str) -> str:
    path, _, query = target.partition("?")
    key = path.split("/", 2)[2] if path.count("/") >= 2 else ""
    if not key or "list-type" in query or "prefix=" in query:
        return f"{method} list"
    name = key.rsplit("/", 1)[-1]
    if key.endswith("/"):
        return f"{method} directory marker"  # pyarrow keeps a deleted file's folder with an empty "dir/" object
    if "/_reuse/" in key:
        return f"{method} _reuse index"
    if name.startswith(("_lease", "_plan", "_manifest", "_SUCCESS", ".bertclf-write-probe")):
        return f"{method} {name.split('.json')[0].split('-')[0]}"
    if key.startswith("corpus/"):
        return f"{method} input"
    if key.startswith("checkpoint/"):
        return f"{method} checkpoint"
    return f"{method} part"


def count_requests(log_path: Path, offset: int) -> dict:
    """Requests in moto's log after `offset`, split by the child's phase marks: {phase: {kind: count}}."""
    time.sleep(1.0)  # the server's last lines
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    phase, out = "before", {}
    for line in text.splitlines():
        m = REQUEST.search(ANSI.sub("", line))
        if not m:
            continue
        method, target = m.groups()
        if "__mark__" in target:  # the child's phase marks: a HEAD and, for a missing key, a LIST
            if method == "HEAD":
                phase = target.split("/__mark__/", 1)[1].split("?")[0]
            continue
        kinds = out.setdefault(phase, {})
        kind = request_kind(method, target)
        kinds[kind] = kinds.get(kind, 0) + 1
    return out


# ------------------------------------------------------------------------------------------------ the parent

def run_child(spec: dict, workdir: Path, env: dict, kill_when=None, timeout: float = 3600) -> dict | None:
    """This file with --child in a fresh process (its own peak RSS and Ray); None when killed by `kill_when`."""
    spec_path = workdir / "child_spec.json"
    out_path = workdir / "child_result.json"
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result": str(out_path)}))
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(spec_path)], env={**os.environ, **env},
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if kill_when is not None and kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"child ran past {timeout}s: {spec}")
        time.sleep(0.2)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed with exit code {proc.returncode}: {spec}")
    return json.loads(out_path.read_text())


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y over log x (None with fewer than two positive points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / den, 3) if den else None


def phase_table(run: dict) -> dict[str, float]:
    """The driver's phases of one child run: manifest.timings where the driver records them, else the wrapped
    library functions; the wrapped functions are always listed as `fn:<name>`."""
    out = {k: v for k, v in (run.get("manifest_timings") or {}).items() if isinstance(v, (int, float))}
    out.update({f"fn:{k}": v for k, v in run["phases"]["seconds"].items()})
    out["drift:read_manifest_seconds"] = run["drift_read_manifest_seconds"]
    out["wall_seconds"] = run["wall_seconds"]
    return out


def exponents(series: list[dict], key: str = "units") -> dict[str, float | None]:
    """Per phase, the log-log slope over the runs of one series."""
    names = sorted({k for r in series for k in r["phase_seconds"]})
    return {name: slope([r[key] for r in series], [r["phase_seconds"].get(name) for r in series]) for name in names}


def write_previous_index(workdir: Path, texts: int, root: str, parts_rows: int = 20_000) -> dict:
    """A previous night's reuse index of `texts` distinct random texts in parts of `parts_rows`, written with the
    reuse module's own writer under `root`/reuse-<texts> (kept for the next run while its marker matches)."""
    import numpy as np

    from bertclf import storage
    from bertclf.scoring.reuse import HASH_DTYPE, INDEX_DIR, INDEX_ROW_GROUP, ScoredTexts, write_index

    parts = max(1, math.ceil(texts / parts_rows))
    output = storage.join(root, f"reuse-{texts}")
    marker = storage.join(output, "_bench.json")
    names = [f"part-{k:05d}.parquet" for k in range(parts)]
    written = {"texts": texts, "row_group": INDEX_ROW_GROUP}
    t0 = time.perf_counter()
    if not (storage.exists(marker) and json.loads(storage.read_bytes(marker)) == written):
        rng = np.random.default_rng(texts)
        tmp = workdir / "index.parquet"
        bounds = [round(k * texts / parts) for k in range(parts + 1)]
        for k, name in enumerate(names):
            n = bounds[k + 1] - bounds[k]
            keys = np.unique(rng.integers(0, 256, size=(n, 16), dtype=np.uint8).view(HASH_DTYPE).reshape(-1))
            probs = rng.random((len(keys), LABELS), dtype=np.float32)
            write_index(str(tmp), ScoredTexts(LABELS, keys, probs), {"bench": True, "precision_used": "fp32"})
            storage.upload_file(tmp, storage.join(output, INDEX_DIR, name))
        storage.write_bytes(marker, json.dumps(written).encode())
    seconds = time.perf_counter() - t0
    fs, path = storage.resolve(storage.join(output, INDEX_DIR))
    from pyarrow import fs as pafs

    index_bytes = sum(i.size or 0 for i in fs.get_file_info(pafs.FileSelector(path)))
    return {"output": output, "names": names, "texts": texts, "parts": parts, "index_bytes": index_bytes,
            "written_seconds": round(seconds, 1)}


def reuse_load(workdir: Path, texts: int, root: str, parts_rows: int = 20_000) -> dict:
    """The previous night's index (write_previous_index) loaded whole as one process loads it, in a child process
    (its peak RSS), against the loader before the 2026-12-06 change (np.unique over the concatenated parts)."""
    index = write_previous_index(workdir, texts, root, parts_rows)
    output, names = index["output"], index["names"]
    out = {k: v for k, v in index.items() if k not in ("output", "names")}
    for loader in ("library", "before"):
        spec = {"mode": "reuse", "output": output, "parts": names, "loader": loader}
        out[loader] = run_child(spec, workdir, {}, timeout=1200)
        print(f"[bench] reuse load {texts} texts ({root.split(':')[0]}) {loader}: "
              f"{out[loader]['seconds']:.2f}s, peak RSS +{out[loader]['rss_growth_mb']:.0f} MiB "
              f"(index {out[loader]['nbytes_mb']:.0f} MiB)", flush=True)
    out["speedup"] = round(out["before"]["seconds"] / out["library"]["seconds"], 2)
    return out


class NoOpScorer:
    """A scoring actor that scores nothing: what the driver's Ray Data pipeline costs per unit by itself."""

    def __call__(self, batch):
        return {"result": [str(u)[:16] for u in batch["unit"]]}


def ray_floor_child(spec: dict) -> dict:
    """The driver's pipeline shape (one block per unit, an actor pool taking one unit at a time, results as they
    land) with actors that do nothing, over `units` units: Ray Data's own cost per unit."""
    import ray
    import ray.data

    from bertclf.records import WorkUnit

    units = [WorkUnit(f"/data/part-{k // 100:06d}.parquet", (k % 100,), ROWS_PER_UNIT, k // 100)
             for k in range(spec["units"])]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.range(2, override_num_blocks=2).map_batches(lambda b: b).materialize()  # Ray Data's helper actors
    t0 = time.perf_counter()
    items = [{"unit": u.to_json()} for u in units]
    build = time.perf_counter() - t0
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(NoOpScorer, batch_size=1, num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(size=2, max_tasks_in_flight_per_actor=1))
    t1 = time.perf_counter()
    first, n = None, 0
    for batch in ds.iter_batches(batch_size=None, prefetch_batches=0):
        n += len(batch["result"])
        first = first or time.perf_counter() - t1
    seconds = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ray.shutdown()
    return {"units": n, "items_seconds": round(build, 3), "pipeline_seconds": round(seconds, 2),
            "first_result_seconds": round(first or 0.0, 2), "ms_per_unit": round(1000 * seconds / max(1, n), 2),
            "driver_ru_maxrss_mb": round(rss, 1)}


def reuse_child(spec: dict) -> dict:
    import numpy as np

    from bertclf.records import ReuseSource
    from bertclf.scoring import reuse

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page / 2**20

    peak = [rss()]
    base = peak[0]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.01):
            peak[0] = max(peak[0], rss())

    threading.Thread(target=sample, daemon=True).start()
    source = ReuseSource(output=spec["output"], parts=spec["parts"], rows=0)
    key = {"bench": True}
    t0 = time.perf_counter()
    if spec["loader"] == "library":
        loaded, skipped = reuse.load_previous(source, key, LABELS)
        texts = loaded["fp32"]
    else:  # the loader before 2026-12-06: every part's arrays, concatenated, then np.unique
        keys, probs = [], []
        with ThreadPoolExecutor(8) as pool:
            for _, k, p in pool.map(lambda n: reuse.read_index(f"{spec['output']}/_reuse/{n}", LABELS),
                                    spec["parts"]):
                keys.append(k)
                probs.append(p)
        texts = reuse.ScoredTexts(LABELS)
        allk = np.concatenate(keys)
        texts.keys, first = np.unique(allk, return_index=True)
        texts.probs = np.concatenate(probs)[first]
        texts.from_previous = np.ones(len(texts.keys), bool)
        skipped = []
    seconds = time.perf_counter() - t0
    probe = texts.keys[:: max(1, len(texts) // 1000)]
    t1 = time.perf_counter()
    found, _ = texts.lookup(probe)
    lookup = time.perf_counter() - t1
    stop.set()
    assert found.all() and not skipped and bool(np.all(texts.keys[1:] > texts.keys[:-1]))
    return {"seconds": round(seconds, 3), "distinct": len(texts), "nbytes_mb": round(texts.nbytes / 2**20, 1),
            "peak_rss_mb": round(peak[0], 1), "rss_growth_mb": round(peak[0] - base, 1),
            "lookup_1000_seconds": round(lookup, 4)}


def one_size(args, storage_kind: str, layout: str, units: int, ckpt: str, workdir: Path, roots: dict,
             moto_log: Path | None, template: dict) -> dict:
    from bertclf import storage

    root = roots[storage_kind]
    inputs = storage.join(root, "corpus", f"{layout}-{units}")
    info = corpus(inputs, layout, units)
    env = {}
    mark = storage.join(root, "__mark__") if storage_kind == "s3" else None
    result = {"storage": storage_kind, "layout": layout, "units": units, "rows": info["rows"], "corpus": info}
    output = storage.join(root, "scores", f"{layout}-{units}")
    scored = units <= min(args.score_max if storage_kind == "local" else args.s3_score_max,
                          args.score_max_files if layout == "files" else units)
    if scored:
        if storage.is_s3(output):
            storage.delete(output)
        else:
            shutil.rmtree(output, ignore_errors=True)
        offset = moto_log.stat().st_size if moto_log else 0
        run = run_child({"mode": "score", "checkpoint": ckpt, "input": inputs, "output": output,
                         "mark_prefix": mark}, workdir, env)
        if moto_log:
            run["s3_requests"] = count_requests(moto_log, offset)
        result["score"] = run
        template.setdefault("part", storage.join(output, sorted(
            n for n in storage.list_names(output) if n.endswith(".parquet"))[0]))
        print(f"[bench] {storage_kind} {layout} {units} units scored: {run['wall_seconds']:.1f}s "
              f"(timings {json.dumps({k: round(v, 2) for k, v in run['manifest_timings'].items()})}), driver peak RSS "
              f"{max(run['phases']['peak_rss_mb'].values()):.0f} MiB", flush=True)
        for name in ("_SUCCESS", "_manifest.json"):  # the same output, every part present: the commit-only run
            storage.delete(storage.join(output, name))
    else:
        result["fabricated"] = fabricate_parts(ckpt, inputs, output, template["part"])
    offset = moto_log.stat().st_size if moto_log else 0
    run = run_child({"mode": "score", "checkpoint": ckpt, "input": inputs, "output": output, "mark_prefix": mark},
                    workdir, env)
    if moto_log:
        run["s3_requests"] = count_requests(moto_log, offset)
    result["commit"] = run
    print(f"[bench] {storage_kind} {layout} {units} units, commit-only: {run['wall_seconds']:.1f}s "
          f"(timings {json.dumps({k: round(v, 2) for k, v in run['manifest_timings'].items()})}), driver peak RSS "
          f"{max(run['phases']['peak_rss_mb'].values()):.0f} MiB, manifest {run['manifest_bytes'] / 2**20:.1f} MiB",
          flush=True)
    for key in ("score", "commit"):
        if key in result:
            r = result[key]
            r["phase_seconds"] = phase_table(r)
            if "s3_requests" in r:
                total = sum(sum(v.values()) for v in r["s3_requests"].values())
                r["s3_requests_total"] = total
                r["s3_requests_per_1000_rows"] = round(1000 * total / info["rows"], 1)
    return result


def resume_check(args, ckpt: str, workdir: Path, roots: dict, full: dict | None) -> dict:
    """A local run SIGKILLed once half its units are committed, then resumed: the resume's time against the full
    run's, and the work that was left."""
    from bertclf import storage

    units = args.resume_size
    inputs = storage.join(roots["local"], "corpus", f"row_groups-{units}")
    corpus(inputs, "row_groups", units)
    output = storage.join(roots["local"], "scores", f"resume-{units}")
    shutil.rmtree(output, ignore_errors=True)

    def half_done() -> bool:
        try:
            return sum(n.endswith(".parquet") for n in os.listdir(output)) >= units // 2
        except FileNotFoundError:
            return False

    spec = {"mode": "score", "checkpoint": ckpt, "input": inputs, "output": output}
    t0 = time.perf_counter()
    assert run_child(spec, workdir, {}, kill_when=half_done) is None
    killed_after = time.perf_counter() - t0
    parts_at_kill = sum(n.endswith(".parquet") for n in os.listdir(output))
    time.sleep(2.0)  # the private Ray's reaper
    resumed = run_child(spec, workdir, {})
    resumed["phase_seconds"] = phase_table(resumed)
    out = {"units": units, "killed_after_seconds": killed_after, "parts_at_kill": parts_at_kill,
           "resume": resumed, "remaining_share": resumed["units_scored"] / units}
    if full:
        fs, rs = full["phase_seconds"], resumed["phase_seconds"]
        out["full_run_wall_seconds"] = fs["wall_seconds"]
        out["resume_over_full_wall"] = round(rs["wall_seconds"] / fs["wall_seconds"], 3)
        if fs.get("scoring_seconds") and rs.get("scoring_seconds"):
            out["resume_over_full_scoring"] = round(rs["scoring_seconds"] / fs["scoring_seconds"], 3)
    print(f"[bench] resume after SIGKILL at {parts_at_kill}/{units} parts: {resumed['units_scored']} unit(s) "
          f"scored in {resumed['wall_seconds']:.1f}s (full run {out.get('full_run_wall_seconds', 0):.1f}s)",
          flush=True)
    return out


def git_state() -> dict:
    """The commit measured, and the library files changed on top of it (others work in the same tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=bc.REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "changed": git("status", "--short", "bertclf").splitlines()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="300,1000,10000,100000", help="units per corpus")
    p.add_argument("--score-max", type=int, default=10000, help="the largest size scored locally (larger: commit only)")
    p.add_argument("--s3-score-max", type=int, default=1000, help="the largest size scored on S3")
    p.add_argument("--score-max-files", type=int, default=1000, help="the largest size scored in layout files")
    p.add_argument("--storage", default="local,s3")
    p.add_argument("--layouts", default="row_groups,files")
    p.add_argument("--s3-max-files", type=int, default=10000, help="skip S3 corpora of more input files than this")
    p.add_argument("--s3-max-units", type=int, default=10000, help="skip S3 sizes over this (fabricated parts)")
    p.add_argument("--reuse-texts", default="1000000,10000000", help="distinct texts of the previous night's index")
    p.add_argument("--reuse-s3-max", type=int, default=1000000, help="the largest index also loaded from S3")
    p.add_argument("--resume-size", type=int, default=1000, help="units of the killed-and-resumed run (0: skip)")
    p.add_argument("--ray-floor-sizes", default="1000,5000", help="units through the pipeline with no-op actors")
    p.add_argument("--workdir", default=str(bc.DEFAULT_RUNS_DIR / "bench_scale"))
    p.add_argument("--json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        result = {"reuse": reuse_child, "ray_floor": ray_floor_child, "score": child}[spec["mode"]](spec)
        Path(spec["result"]).write_text(json.dumps(result, default=str))
        return 0
    started = bc.now_utc()
    machine = bc.machine_info()
    warnings = [w for w in [bc.contention_warning(machine)] if w]
    workdir = Path(args.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    kinds = [s for s in args.storage.split(",") if s]
    layouts = [s for s in args.layouts.split(",") if s]
    ckpt = tiny_checkpoint(workdir)
    roots = {"local": str(workdir / "local")}
    moto, moto_log = None, None
    if "s3" in kinds or any(int(t) <= args.reuse_s3_max for t in args.reuse_texts.split(",") if t):
        import boto3

        from bertclf.dev.ports import free_port, wait_for_port
        from bertclf.dev.servers import s3_env, start_moto

        port = free_port()
        moto_log = workdir / "moto.log"
        moto = start_moto(port, moto_log)
        if not wait_for_port(port, 30, moto):
            raise SystemExit("moto did not start")
        os.environ.update(s3_env(f"http://127.0.0.1:{port}"))
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket=BUCKET)
        roots["s3"] = f"s3://{BUCKET}"
    results, template = [], {}
    try:
        for kind in kinds:
            for layout in layouts:
                for units in sizes:
                    files = units if layout == "files" else units // GROUPS_PER_FILE
                    if kind == "s3" and (files > args.s3_max_files or units > args.s3_max_units):
                        print(f"[bench] skipping s3 {layout} {units}: over --s3-max-files or --s3-max-units",
                              flush=True)
                        continue
                    results.append(one_size(args, kind, layout, units, ckpt, workdir, roots, moto_log, template))
        growth = {}
        for kind in kinds:
            for layout in layouts:
                series = [r for r in results if r["storage"] == kind and r["layout"] == layout]
                growth[f"{kind}/{layout}/commit"] = exponents([{**r["commit"], "units": r["units"]} for r in series])
                scored = [{**r["score"], "units": r["units"]} for r in series if "score" in r]
                if len(scored) >= 2:
                    growth[f"{kind}/{layout}/score"] = exponents(scored)
        reuse_loads = []
        for texts in [int(t) for t in args.reuse_texts.split(",") if t]:
            reuse_loads.append({"storage": "local", **reuse_load(workdir, texts, roots["local"])})
            if "s3" in roots and texts <= args.reuse_s3_max:
                reuse_loads.append({"storage": "s3", **reuse_load(workdir, texts, roots["s3"])})
        floor = []
        for units in [int(t) for t in args.ray_floor_sizes.split(",") if t]:
            floor.append(run_child({"mode": "ray_floor", "units": units}, workdir, {}, timeout=1200))
            print(f"[bench] Ray Data floor, {units} units through no-op actors: {floor[-1]['pipeline_seconds']}s "
                  f"({floor[-1]['ms_per_unit']} ms per unit)", flush=True)
        if len(floor) >= 2:
            growth["ray_data_floor"] = {"pipeline_seconds": slope([f["units"] for f in floor],
                                                                  [f["pipeline_seconds"] for f in floor])}
        full = next((r["score"] for r in results if r["storage"] == "local" and r["layout"] == "row_groups"
                     and r["units"] == args.resume_size and "score" in r), None)
        resume = resume_check(args, ckpt, workdir, roots, full) if args.resume_size else None
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=30)
    machine["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"benchmark": "scale", "date": started, "finished": bc.now_utc(), "warning": "; ".join(warnings) or None,
              "cpu_class": machine["cpu_class"], "machine": machine, "versions": bc.versions(), "checkpoint": ckpt,
              "git": git_state(), "rows_per_unit": ROWS_PER_UNIT, "groups_per_file": GROUPS_PER_FILE,
              "args": vars(args),
              "runs": results, "growth_exponents": growth, "reuse_load": reuse_loads, "ray_data_floor": floor,
              "resume": resume}
    bc.write_json(bc.result_path("scale", machine, started, args.json), result)
    for name, table in growth.items():
        print(f"[bench] growth exponents {name}: " + ", ".join(f"{k} {v}" for k, v in table.items() if v is not None),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
