"""Shared helpers for the benchmarks (benchmarks/score.py, benchmarks/train.py): benchmark-only code.

Machine facts and CPU class, the precision a run uses and its matmul peak, a Ray cluster the benchmark owns,
a memory sampler over the benchmark's processes, subprocess runs, GoEmotions slices and the result JSON.
Nothing here is used by the bertclf package; tables are printed by benchmarks/report.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
DEFAULT_RUNS_DIR = REPO / "runs"  # git-ignored scratch: data slices, checkpoints, outputs
RESULTS_DIR = REPO / "benchmarks" / "results"  # committed: one JSON per recorded run
# flags that decide how fast (and whether natively) bf16 and fp32 matmuls run; "bf16"/"asimd"/"sve" are ARM's
RELEVANT_FLAGS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
                  "bf16", "asimd", "sve"}


def setup_env() -> None:
    """The environment every Ray benchmark needs; set before ray is imported (a no-op where already set)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def import_psutil():
    """psutil from the environment, else the copy Ray vendors (importing ray puts it on sys.path)."""
    import importlib

    try:
        return importlib.import_module("psutil")
    except ImportError:
        importlib.import_module("ray")  # adds ray/thirdparty_files to sys.path
        return importlib.import_module("psutil")


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def machine_info() -> dict:
    """CPU model, class, flags, cores and memory of the machine this runs on, and how busy it was at start."""
    from bertclf.resources import cpu_class, cpu_flags, cpu_has_native_bf16

    model, flags = cpu_flags()
    psutil = import_psutil()
    return {
        "cpu_model": model,
        "cpu_class": cpu_class(),  # capped at what torch uses here (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA)
        "cpu_class_by_flags": cpu_class(flags),
        "native_bf16": cpu_has_native_bf16(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_flags_bf16": sorted(flags & RELEVANT_FLAGS),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_busy_at_start": round(psutil.cpu_percent(interval=2.0) / 100, 3),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def contention_warning(machine: dict) -> str | None:
    """A warning when the machine was already busy when the benchmark started (numbers not representative).

    With every core already taken, multi-threaded torch (the baselines: one process, all cores) loses far more
    than single-threaded Ray workers do: OpenMP threads wait on each other at every op while descheduled.
    Judged by the CPU use measured over 2 s at start, not the load average, which lags by minutes.
    """
    busy = machine["cpu_busy_at_start"]
    if busy < 0.2:
        return None
    msg = (f"the machine was busy when this benchmark started ({busy:.0%} of {machine['logical_cores']} cores in "
           f"use over 2 s): throughputs and speedups are not representative; re-run idle")
    print(f"[bench] WARNING: {msg}", flush=True)
    return msg


def versions() -> dict:
    from bertclf.model.checkpoint import versions as lib_versions

    out = lib_versions()
    try:
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    return out


def precision_for(setting: str | None, checkpoint=None) -> str:
    """The precision bertclf runs at on this CPU for a config's `precision` (auto/bf16/fp32/int8): the library
    decides, with the checkpoint's gate record where auto reads it (`checkpoint`: a LoadedCheckpoint)."""
    from bertclf.model.precision import read_gates, record_needed, resolve

    setting = setting or "auto"
    gates = (read_gates(checkpoint.uri, checkpoint.fingerprint())
             if checkpoint is not None and record_needed(setting, "cpu") else {})
    return resolve(setting, "cpu", gates)


def can_time(precision: str) -> bool:
    """Whether a matmul peak is measured for `precision`: fp32, and bf16 where the CPU runs it natively (emulated,
    a 2048² matmul takes minutes); int8 has no such peak here."""
    from bertclf.resources import cpu_has_native_bf16

    return precision == "fp32" or (precision == "bf16" and cpu_has_native_bf16())


def matmul_peak_gflops(dtype_name: str, n: int = 2048, trials: int = 7, min_seconds: float = 0.25,
                       threads: int | None = None) -> float:
    """Best-of-`trials` GFLOP/s of an n x n matmul with torch on `threads` (all cores) (2*n^3 FLOPs per matmul)."""
    import torch

    if not can_time(dtype_name):
        raise ValueError(f"{dtype_name} is emulated on this CPU: its matmul peak is not measured")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(2):  # warm-up: thread pool, oneDNN kernels
        torch.matmul(a, b, out=out)
    t0 = time.perf_counter()
    torch.matmul(a, b, out=out)
    reps = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-6)))
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        seconds = time.perf_counter() - t0
        best = max(best, 2 * n**3 * reps / seconds / 1e9)
    return best


def in_existing_cluster() -> bool:
    """True under `ray job submit` or with RAY_ADDRESS set: use that cluster, don't start (or stop) one."""
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID")
                or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def start_ray(include_dashboard: bool = False) -> tuple[str, float]:
    """A local Ray the benchmark owns (all cores), or the job's cluster; returns (session dir, seconds).

    address="local": a cluster someone else started on this machine is never joined by accident. Training
    asks for the dashboard: without its state API Ray Train's placement-group cleaner warns every second.
    """
    import ray

    t0 = time.perf_counter()
    if not ray.is_initialized():
        if in_existing_cluster():
            ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=True)
        else:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=include_dashboard,
                     log_to_driver=True)
    seconds = time.perf_counter() - t0
    node = ray._private.worker._global_node
    session = node.get_session_dir_path() if node is not None else ""
    return session, seconds


def warm_ray_data() -> float:
    """Create Ray Data's cluster-wide helper actors now; returns the seconds it took.

    They (the stats actor, the autoscaling coordinator, the actor-location tracker) are detached: on a standing
    cluster the first Ray Data job creates them and every later job reuses them. A benchmark that starts its
    own Ray would otherwise time their start-up inside its first run, where their imports compete with the
    scoring actors for the cores (benchmarks/results/NOTES.md has the measurement).
    """
    import ray.data

    t0 = time.perf_counter()
    ray.data.range(2, override_num_blocks=2).map_batches(lambda batch: batch).materialize()
    return time.perf_counter() - t0


def stop_ray() -> None:
    """Disconnect; a local cluster started by start_ray() goes down with it (never `ray stop`)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


class MemorySampler:
    """Peak memory of this benchmark: this process, its descendants, and the Ray processes of its session.

    Every `interval` s the RSS of the tracked processes is summed (the peak of that sum is reported); every
    `pss_every`-th sample also PSS, which counts shared pages (torch libraries, object store) once, not once
    per process: the closer figure for "memory this job needs". Tracked: this process and its descendants (a
    local Ray's processes), plus processes whose command line names the Ray session directory, and theirs.
    """

    def __init__(self, session_dir: str = "", interval: float = 0.5, pss_every: int = 4):
        self.psutil = import_psutil()
        self.session_dir = session_dir
        self.interval = interval
        self.pss_every = pss_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._names: dict[int, str] = {}
        self.cpu_seconds = 0.0  # the sampler's own CPU time: it runs on the cores it measures
        self.peak_rss = self.peak_pss = self.peak_procs = self.samples = 0
        self.top_at_peak: list[tuple[str, float]] = []

    def _pids(self) -> set[int]:
        ps = self.psutil
        children: dict[int, list[int]] = {}
        roots = {os.getpid()}
        for p in ps.process_iter(["pid", "ppid", "cmdline"]):
            children.setdefault(p.info["ppid"], []).append(p.info["pid"])
            if self.session_dir and self.session_dir in " ".join(p.info["cmdline"] or ()):
                roots.add(p.info["pid"])
        out: set[int] = set()
        stack = list(roots)
        while stack:
            pid = stack.pop()
            if pid in out:
                continue
            out.add(pid)
            stack.extend(children.get(pid, ()))
        return out

    def rss_now_mb(self) -> float:
        """The summed RSS of the tracked processes right now (peaks untouched)."""
        total = 0
        for pid in self._pids():
            try:
                total += self.psutil.Process(pid).memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
        return round(total / 2**20, 1)

    def sample(self) -> None:
        ps = self.psutil
        with_pss = self.samples % self.pss_every == 0
        rss = pss = 0
        per: list[tuple[str, float]] = []
        for pid in self._pids():
            try:
                p = ps.Process(pid)
                if with_pss:
                    info = p.memory_full_info()
                    pss += info.pss
                else:
                    info = p.memory_info()
                rss += info.rss
                if pid not in self._names:
                    self._names[pid] = f"{pid}:{(p.cmdline() or [p.name()])[0][:40]}"
                per.append((self._names[pid], info.rss / 2**20))
            except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
                continue
        self.samples += 1
        if rss > self.peak_rss:
            self.peak_rss, self.peak_procs = rss, len(per)
            self.top_at_peak = sorted(per, key=lambda kv: -kv[1])[:8]
        self.peak_pss = max(self.peak_pss, pss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.thread_time()
            self.sample()
            self.cpu_seconds += time.thread_time() - t0
            self._stop.wait(self.interval)

    def start(self) -> MemorySampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return {"peak_rss_mb": round(self.peak_rss / 2**20, 1), "peak_pss_mb": round(self.peak_pss / 2**20, 1),
                "processes_at_peak": self.peak_procs, "samples": self.samples,
                "interval_s": self.interval, "sampler_cpu_seconds": round(self.cpu_seconds, 2),
                "largest_at_peak_mb": [[name, round(mb, 1)] for name, mb in self.top_at_peak]}


def run_python(args: list[str], env: dict | None = None) -> None:
    """Run `python <args>` with this interpreter, output passed through; raise when it fails."""
    cmd = [sys.executable, *args]
    print(f"[bench] $ {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"subprocess failed with exit code {proc.returncode}: {' '.join(cmd)}")


def result_path(benchmark: str, machine: dict, started: str, given: str | None = None) -> Path:
    """--json when given, else benchmarks/results/<date>-<benchmark>-<cpu class>[-k].json (never overwritten)."""
    if given:
        return Path(given).expanduser().resolve()
    stem = f"{started[:10]}-{benchmark}-{machine['cpu_class']}"
    path, k = RESULTS_DIR / f"{stem}.json", 2
    while path.exists():
        path, k = RESULTS_DIR / f"{stem}-{k}.json", k + 1
    return path


def write_json(path: str | Path, result: dict) -> None:
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"[bench] wrote {path}", flush=True)


def read_goemotions(data_dir: str | Path, split: str, columns: list[str]):
    import pyarrow.parquet as pq

    path = Path(data_dir) / "goemotions" / f"{split}.parquet"
    if not path.exists():
        raise SystemExit(f"GoEmotions {split} split not found at {path}; pass --data-dir <dir holding goemotions/>")
    return pq.read_table(path, columns=columns)


def write_corpus(data_dir: str | Path, out_dir: Path, rows: int, files: int, row_group_rows: int) -> list[int]:
    """`rows` GoEmotions train texts (repeated as needed, ids `<id>-<k>`) in `files` Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = read_goemotions(data_dir, "train", ["id", "text"])
    n = source.num_rows
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    table = source.take(pa.array([i % n for i in range(rows)], pa.int64()))
    ids = pa.array([f"{rid}-{i // n}" for i, rid in enumerate(table["id"].to_pylist())], pa.string())
    table = pa.table({"id": ids, "text": table["text"]})
    files = max(1, min(files, rows))
    bounds = [round(k * rows / files) for k in range(files + 1)]
    sizes = []
    for k in range(files):
        part = table.slice(bounds[k], bounds[k + 1] - bounds[k])
        pq.write_table(part, out_dir / f"part-{k:04d}.parquet", row_group_size=row_group_rows)
        sizes.append(part.num_rows)
    return sizes


def train_checkpoint(data_dir: str | Path, workdir: Path, run_dir: Path, train_rows: int, validation_rows: int
                     ) -> tuple[str, float]:
    """A brief 1-epoch bertclf training run on the first `train_rows` GoEmotions rows: (best URI, seconds)."""
    import pyarrow.parquet as pq

    from bertclf import training
    from bertclf.config import TrainConfig

    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    table = read_goemotions(data_dir, "train", ["text", "labels"]).slice(0, train_rows)
    pq.write_table(table, data / "train.parquet")
    pq.write_table(validation_slice(data_dir, validation_rows, table), data / "validation.parquet")
    shutil.rmtree(run_dir, ignore_errors=True)  # an old ray_train/ there would be resumed, not retrained
    cfg = TrainConfig(train=str(data / "train.parquet"), validation=str(data / "validation.parquet"),
                      output=str(run_dir), epochs=1, num_workers=2, max_length=64, learning_rate=1e-4)
    print(f"[bench] training a checkpoint: {train_rows} train / {validation_rows} validation rows, 1 epoch -> "
          f"{run_dir / 'best'}", flush=True)
    start_ray(include_dashboard=True)  # Ray Train's placement-group cleaner polls the state API
    t0 = time.perf_counter()
    result = training.run(cfg)
    seconds = time.perf_counter() - t0
    if not in_existing_cluster():
        stop_ray()  # the baseline that follows gets the cores to itself
    return result.best_uri, seconds


def validation_slice(data_dir: str | Path, rows: int | None, train_table):
    """The first `rows` validation rows (all when None) whose labels all occur in `train_table`.

    bertclf rejects validation labels the training data never shows, which a small train slice can miss.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    known = set(pc.unique(pc.list_flatten(train_table["labels"])).to_pylist())
    table = read_goemotions(data_dir, "validation", ["text", "labels"])
    keep = pa.array([set(labels) <= known for labels in table["labels"].to_pylist()])
    table = table.filter(keep)
    return table if rows is None else table.slice(0, rows)
