"""The product on one GPU (issue 31, docs/gpu.md): a local Ray head, then the real commands, `bertclf train`,
`report`, `score` (with the GPU's busy share sampled) and `serve` under concurrent clients, with a model-only rows/s
of the same checkpoint, all in one run, because the GPU machine is lent for minutes. Called by cluster/gpu_check.sh.

    python cluster/gpu_check.py run --out DIR [--cpu]    # --cpu: the same steps with tiny sizes on a CPU machine
    python cluster/gpu_check.py install-check --out DIR  # run 1: what the carried wheels import, the GPU, versions

Every step's outcome, timings and figures go into DIR/gpu_check.json (rewritten after each step, so a run cut by
its time limit still reports what it did); each command's output into DIR/<step>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "cluster"), str(REPO / "benchmarks")]

from bertclf.dev.ports import free_port  # noqa: E402

LOG_CAP_BYTES = 15 * 2**20  # a file under $OUT comes back only under 16 MiB
BERTCLF = [sys.executable, "-m", "bertclf.cli"]


def say(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Check:
    """The run's record: one JSON written after every step, and a deadline the steps share."""

    def __init__(self, out: Path, deadline_s: float, mode: str) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline_s
        self.result: dict[str, Any] = {"check": "gpu", "mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime()),
                                       "steps": {}}
        self.failed = False

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        tmp.replace(self.out / "gpu_check.json")

    def step(self, name: str, fn, *args, **kwargs) -> Any:
        """Run one step, record ok/seconds/figures or the error; later steps still run where they can."""
        say(f"step {name} ({self.left():.0f} s left)")
        t0 = time.monotonic()
        entry: dict[str, Any] = {}
        value = None
        try:
            value = fn(*args, **kwargs)
            entry.update(ok=True, **(value if isinstance(value, dict) else {}))
        except Exception as exc:  # noqa: BLE001 - a failing step is a finding; the JSON says which and why
            self.failed = True
            entry.update(ok=False, error=f"{type(exc).__name__}: {exc}"[-4000:],
                         traceback=traceback.format_exc()[-4000:])
            say(f"step {name} FAILED: {type(exc).__name__}: {exc}"[:2000])
        entry["seconds"] = round(time.monotonic() - t0, 1)
        self.result["steps"][name] = entry
        self.write()
        say(f"step {name}: {'ok' if entry['ok'] else 'failed'} in {entry['seconds']} s")
        return value if entry["ok"] else None


def run_logged(args: list[str], log: Path, timeout_s: float, env: dict | None = None) -> float:
    """Run a command with its output appended to `log`; raise naming the log when it fails or overruns."""
    say(f"$ {' '.join(args)}  (log {log.name}, limit {timeout_s:.0f} s)")
    t0 = time.monotonic()
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(args)}\n".encode())
        f.flush()
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGINT)  # the command's own process group: Ray drivers clean up on SIGINT
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            what = args[3] if len(args) > 3 else args[0]
            raise TimeoutError(f"{what} ran past {timeout_s:.0f} s; see {log.name}") from exc
    cap_log(log)
    if rc:
        tail = log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"exit code {rc}; see {log.name}; last output:\n{tail}")
    return time.monotonic() - t0


def cap_log(log: Path) -> None:
    """Keep a log's last LOG_CAP_BYTES: a bigger file would not come back."""
    if log.exists() and log.stat().st_size > LOG_CAP_BYTES:
        data = log.read_bytes()[-LOG_CAP_BYTES:]
        log.write_bytes(b"[... cut: only the last 15 MiB kept]\n" + data)


# --- steps ---------------------------------------------------------------------------------------------------------

def environment(gpu: bool) -> dict:
    import ray
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "cpus": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "ray": ray.__version__, "ray_file": ray.__file__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), gpu_memory_gib=round(
            torch.cuda.get_device_properties(0).total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    elif gpu:
        raise RuntimeError("no CUDA device visible to torch: run with --cpu for the CPU dry run")
    say(f"environment: {json.dumps(info)}")
    return info


def fp32_model(carried: Path, dest: Path) -> dict:
    """The carried bf16 weights upcast to fp32: transformers 5 keeps a bf16 file's dtype, and training wants fp32
    master weights (bf16 autocast on top)."""
    from safetensors.torch import load_file, save_file

    if not (carried / "model.safetensors").is_file():
        raise FileNotFoundError(f"{carried}/model.safetensors missing: carry .carry/model (cluster/gpu_carry.py)")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(carried, dest, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(str(carried / "model.safetensors"))
    save_file({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()},
              str(dest / "model.safetensors"), metadata={"format": "pt"})
    return {"model_dir": str(dest), "tensors": len(tensors),
            "parameters": sum(v.numel() for v in tensors.values()), "carried_dtype": str(next(iter(tensors.values()))
                                                                                     .dtype)}


def slice_data(data: Path, work: Path, train_rows: int | None, eval_rows: int | None) -> dict[str, str]:
    """GoEmotions paths, cut to the first rows where a dry run asks for fewer."""
    import pyarrow.parquet as pq

    src = data / "goemotions"
    paths = {}
    for split, rows in (("train", train_rows), ("validation", eval_rows), ("test", eval_rows)):
        path = src / f"{split}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: carry .carry/data (cluster/gpu_carry.py)")
        if rows:
            out = work / "data" / f"{split}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pq.read_table(path).slice(0, rows), out)
            path = out
        paths[split] = str(path)
    return paths


class RayHead:
    """`ray start --head --block` in its own process group, stopped by that process's id (never `ray stop`, which
    would stop every Ray on a shared host)."""

    def __init__(self, work: Path, log: Path, gpus: int, cpus: int | None) -> None:
        self.temp_dir = Path(f"/tmp/ray-gpucheck-{os.getpid()}")
        self.port = free_port()
        args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                "--node-ip-address=127.0.0.1", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={free_port()}", "--include-dashboard=true",
                f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                f"--num-gpus={gpus}", "--disable-usage-stats", f"--temp-dir={self.temp_dir}"]
        if cpus:
            args.append(f"--num-cpus={cpus}")
        say(f"$ {' '.join(args)}  (log {log.name})")
        self.log = open(log, "ab")  # noqa: SIM115 - open while the head runs
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.address = f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 90) -> dict:
        import ray

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}; see ray.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                ray.init(address=self.address, log_to_driver=False)
                resources = ray.cluster_resources()
                ray.shutdown()
                if resources.get("CPU"):
                    return {"address": self.address, "resources": {k: v for k, v in resources.items()
                                                                   if k in ("CPU", "GPU", "memory")}}
            except (OSError, ConnectionError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Ray head at {self.address} not ready in {timeout_s} s; see ray.log")

    def stop(self) -> None:
        """SIGTERM this head's processes (found by its --temp-dir, with their descendants: the workers), SIGKILL
        what is left after a grace period; `ray start --block` alone is slow to stop them."""
        from local import ray_pids, stop_pids

        stop_pids(ray_pids(self.temp_dir) | {self.proc.pid}, grace_s=15)
        self.proc.poll()
        self.log.close()


def train(cfg: argparse.Namespace, data: dict[str, str], model_dir: str, out_dir: Path, log: Path, env: dict,
          check: Check) -> dict:
    args = [*BERTCLF, "train", "--config", str(REPO / "jobs/configs/goemotions.yaml"), "--train", data["train"],
            "--validation", data["validation"], "--model", model_dir, "--output", str(out_dir),
            "--epochs", str(cfg.epochs), "--num-workers", "1", "--precision", cfg.precision,
            "--use-gpu", "true" if cfg.gpu else "false"]
    seconds = run_logged(args, log, min(cfg.train_limit_s, check.left() - 60), env)
    history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best = json.loads((out_dir / "best" / "bertclf.json").read_text())
    epochs = [{k: h.get(k) for k in ("epoch", "train_loss", "val_loss", "f1_macro", "f1_micro", "samples_per_s",
                                     "tokens_per_s", "train_seconds", "first_batch_seconds", "data_wait_seconds")}
              for h in history]
    return {"command_seconds": round(seconds, 1), "epochs": epochs, "best_epoch": best.get("epoch"),
            "samples_per_s_mean": round(sum(e["samples_per_s"] or 0 for e in epochs) / max(1, len(epochs)), 1),
            "checkpoint": str(out_dir / "best")}


def report(cfg: argparse.Namespace, ckpt: str, test: str, out_dir: Path, log: Path, env: dict, check: Check) -> dict:
    args = [*BERTCLF, "report", "--checkpoint", ckpt, "--data", test, "--output", str(out_dir), "--tracking", "none"]
    seconds = run_logged(args, log, min(cfg.step_limit_s, check.left() - 20), env)
    numbers = json.loads((out_dir / "report.json").read_text())
    return {"command_seconds": round(seconds, 1), "test_headline": numbers.get("headline"),
            "test_rows": numbers.get("rows")}


def write_corpus(data_dir: str, out_dir: Path, rows: int, files: int = 8, row_group_rows: int = 5000) -> dict:
    """`rows` GoEmotions train texts repeated (ids made unique) in `files` Parquet files: the scoring corpus,
    made here rather than carried (benchmarks/common.write_corpus, the scoring benchmark's own corpus)."""
    import common

    sizes = common.write_corpus(data_dir, out_dir, rows, files, row_group_rows)
    return {"rows": sum(sizes), "files": len(sizes), "row_group_rows": row_group_rows, "path": str(out_dir)}


def model_only(ckpt: str, corpus: str, gpu: bool, rows: int) -> dict:
    """rows/s of the checkpoint's forward alone (Predictor on token ids, the scoring plan's micro-batch budget),
    in this process, as the baseline for the scoring pipeline's end-to-end rows/s."""
    import pyarrow.dataset as pads
    import torch

    from bertclf.model.inference import Predictor
    from bertclf.resources import CPU_BATCH_BUDGET, GPU_BATCH_BUDGET

    texts = pads.dataset(corpus, format="parquet").to_table(columns=["text"])["text"].to_pylist()[:rows]
    max_tokens, max_rows = GPU_BATCH_BUDGET if gpu else CPU_BATCH_BUDGET
    p = Predictor.load(ckpt, device="cuda" if gpu else "cpu", precision="auto", max_tokens=max_tokens,
                       max_rows=max_rows)
    t0 = time.perf_counter()
    ids = p.token_ids(texts)
    tokenize_s = time.perf_counter() - t0
    p.probabilities_for_ids(ids[:4096])  # warm-up: kernels, allocator
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    p.probabilities_for_ids(ids)  # returns host arrays: the device is done
    seconds = time.perf_counter() - t0
    return {"rows": len(ids), "bf16": p.bf16, "max_tokens": max_tokens, "max_rows": max_rows,
            "mean_tokens": round(sum(map(len, ids)) / max(1, len(ids)), 1), "seconds": round(seconds, 2),
            "rows_per_s": round(len(ids) / seconds, 1),
            "tokenizer_rows_per_s_one_process": round(len(ids) / tokenize_s, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None}


class GpuSampler:
    """GPU utilization (NVML: the share of time a kernel ran) every `interval` s in a thread."""

    def __init__(self, interval: float = 0.25) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (t, gpu %, memory MiB)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            mem = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
            self.samples.append((time.monotonic(), util.gpu, mem.used // 2**20))
            time.sleep(self.interval)

    def start(self) -> GpuSampler:
        self.thread.start()
        return self

    def stop(self) -> dict:
        self.stopping.set()
        self.thread.join()
        busy = [s for s in self.samples if s[1] > 0]
        if not busy:
            return {"samples": len(self.samples), "busy_share_whole_command": 0.0}
        first, last = busy[0][0], busy[-1][0]
        window = [s for s in self.samples if first <= s[0] <= last]  # from the first kernel to the last
        return {"samples": len(self.samples), "interval_s": self.interval,
                "busy_share_whole_command": round(sum(s[1] for s in self.samples) / 100 / len(self.samples), 3),
                "busy_share_scoring_window": round(sum(s[1] for s in window) / 100 / len(window), 3),
                "scoring_window_s": round(last - first, 1),
                "peak_memory_mib": max(s[2] for s in self.samples),
                "timeline_pct": [s[1] for s in self.samples][:: max(1, len(self.samples) // 400)]}


def score(cfg: argparse.Namespace, ckpt: str, corpus: str, out_dir: Path, log: Path, env: dict, check: Check) -> dict:
    args = [*BERTCLF, "score", "--checkpoint", ckpt, "--input", corpus, "--output", str(out_dir), "--overwrite",
            "--set", "dedupe=false", "--set", "reuse=none", "--precision", cfg.precision]
    sampler = GpuSampler().start() if cfg.gpu else None
    try:
        seconds = run_logged(args, log, min(cfg.score_limit_s, check.left() - 30), env)
    finally:
        gpu = sampler.stop() if sampler else None
    manifest = json.loads((out_dir / "_manifest.json").read_text())
    rows = manifest.get("rows_out")
    plan = [line.split("plan:", 1)[1].strip() for line in log.read_text(errors="replace").splitlines()
            if "plan:" in line]
    scoring_s = (manifest.get("timings") or {}).get("scoring_seconds")
    return {"command_seconds": round(seconds, 1), "rows": rows, "rows_per_s_command": round(rows / seconds, 1),
            "rows_per_s_scoring_phase": round(rows / scoring_s, 1) if scoring_s else None,
            "manifest_timings": manifest.get("timings"), "plan": plan[-3:], "gpu": gpu}


def serve(cfg: argparse.Namespace, ckpt: str, texts: list[str], log: Path, env: dict, check: Check) -> dict:
    """`bertclf serve` on the Ray head (1 GPU replica), concurrent clients at 1 and 32 texts per request."""
    from serve import load_run  # benchmarks/serve.py: the same client and figures as the CPU serve benchmark

    port = free_port()
    args = [*BERTCLF, "serve", "--checkpoint", ckpt, "--port", str(port), "--replicas", "1",
            "--gpus-per-replica", "1" if cfg.gpu else "0", "--precision", cfg.precision]
    say(f"$ {' '.join(args)}  (log {log.name})")
    with open(log, "ab") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + min(180, check.left() - 30)
        while not http_ok(f"{url}/healthz"):
            if proc.poll() is not None:
                raise RuntimeError(f"bertclf serve exited with {proc.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}/healthz not ready; see {log.name}")
            time.sleep(1)
        runs = []
        for size, requests in ((1, cfg.serve_requests), (32, max(50, cfg.serve_requests // 4))):
            load_run(url, texts, size, 2 * cfg.concurrency, cfg.concurrency, 30)  # warm-up
            limit = max(10.0, min(cfg.serve_seconds, (check.left() - 40) / 2))
            run = load_run(url, texts, size, requests, cfg.concurrency, limit)
            say(f"serve {size} text(s)/request: {json.dumps(run)}")
            runs.append(run)
        if any(r["failed"] or r["lost_answers"] for r in runs):
            raise RuntimeError(f"failed or lost answers: {runs}")
        return {"concurrency": cfg.concurrency, "runs": runs}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # serve_forever deletes the app on KeyboardInterrupt
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        cap_log(log)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - refused or 5xx while starting: not ready
        return False


# --- commands ------------------------------------------------------------------------------------------------------

def run(cfg: argparse.Namespace) -> int:
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(cfg.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    check = Check(out, cfg.deadline_s, "gpu" if cfg.gpu else "cpu-dry-run")
    check.result["settings"] = {k: v for k, v in vars(cfg).items() if k != "func"}
    check.step("environment", environment, cfg.gpu)
    model = check.step("model_fp32", fp32_model, Path(cfg.model), work / "model")
    data = check.step("data", slice_data, Path(cfg.data), work, cfg.train_rows, cfg.eval_rows)
    head = RayHead(work, out / "ray.log", 1 if cfg.gpu else 0, cfg.ray_cpus)
    env = {**os.environ, "RAY_ADDRESS": head.address}
    try:
        if not check.step("ray_head", head.wait_ready) or not model or not data:
            return finish(check)
        trained = check.step("train", train, cfg, data, model["model_dir"], work / "train", out / "train.log", env,
                             check)
        if not trained:
            return finish(check)
        ckpt = trained["checkpoint"]
        corpus = check.step("corpus", write_corpus, cfg.data, work / "corpus", cfg.score_rows)
        if corpus:
            check.step("model_only", lambda: json.loads(subprocess_json(
                ["model-only", "--checkpoint", ckpt, "--corpus", corpus["path"], "--rows", str(cfg.model_only_rows)]
                + ([] if cfg.gpu else ["--cpu"]), out / "model_only.log", min(cfg.step_limit_s, check.left() - 60))))
            scored = check.step("score", score, cfg, ckpt, corpus["path"], work / "scores", out / "score.log", env,
                                check)
            base = check.result["steps"].get("model_only", {})
            if scored and base.get("ok"):
                entry = check.result["steps"]["score"]
                entry["end_to_end_vs_model_only"] = round(scored["rows_per_s_command"] / base["rows_per_s"], 3)
                if scored["rows_per_s_scoring_phase"]:  # the actor pool's time alone, without Ray's start-up
                    entry["scoring_phase_vs_model_only"] = round(
                        scored["rows_per_s_scoring_phase"] / base["rows_per_s"], 3)
                check.write()
        import pyarrow.parquet as pq

        texts = pq.read_table(data["validation"], columns=["text"])["text"].to_pylist()
        check.step("serve", serve, cfg, ckpt, texts, out / "serve.log", env, check)
        check.step("report", report, cfg, ckpt, data["test"], work / "report", out / "report.log", env, check)
    finally:
        head.stop()
        cap_log(out / "ray.log")
    return finish(check)


def subprocess_json(args: list[str], log: Path, timeout_s: float) -> str:
    """This script's subcommand in a fresh process (its GPU memory is freed when it exits); its JSON line."""
    run_logged([sys.executable, str(Path(__file__).resolve()), *args], log, timeout_s)
    return log.read_text().strip().splitlines()[-1]


def finish(check: Check) -> int:
    check.result["ok"] = not check.failed and all(s.get("ok") for s in check.result["steps"].values())
    check.write()
    say(f"done: {'all steps ok' if check.result['ok'] else 'SOME STEPS FAILED'}; {check.out / 'gpu_check.json'}")
    return 0 if check.result["ok"] else 1


def install_check(cfg: argparse.Namespace) -> int:
    """Run 1: the carried wheels import (ray, its Train/Data/Serve and the dashboard's needs, bertclf's modules)."""
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, 120, "install")

    def imports() -> dict:
        import ray.dashboard.optional_deps  # noqa: F401 - what `ray start` needs for the dashboard
        import ray.data  # noqa: F401
        import ray.serve  # noqa: F401
        import ray.train.torch  # noqa: F401

        import bertclf.cli  # noqa: F401
        import bertclf.explain  # noqa: F401
        import bertclf.report.figures  # noqa: F401
        import bertclf.scoring.driver  # noqa: F401
        import bertclf.serve  # noqa: F401
        import bertclf.training.driver  # noqa: F401
        return {}

    check.step("environment", environment, not cfg.cpu)
    check.step("imports", imports)
    return finish(check)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the whole check")
    r.add_argument("--out", required=True, help="where gpu_check.json and the logs go ($OUT on the GPU machine)")
    r.add_argument("--work", default=str(REPO / ".gpu" / "work"), help="run directories, corpus, scores")
    r.add_argument("--model", default=str(REPO / ".carry" / "model"), help="the carried bf16 model directory")
    r.add_argument("--data", default=str(REPO / ".carry" / "data"), help="the carried data (goemotions/)")
    r.add_argument("--cpu", action="store_true", help="dry run on a CPU machine: tiny sizes, fp32, no GPU")
    r.add_argument("--epochs", type=int)
    r.add_argument("--train-rows", type=int, help="first rows of each split (default: all on the GPU)")
    r.add_argument("--eval-rows", type=int)
    r.add_argument("--score-rows", type=int)
    r.add_argument("--model-only-rows", type=int)
    r.add_argument("--serve-requests", type=int)
    r.add_argument("--serve-seconds", type=float)
    r.add_argument("--concurrency", type=int, help="serve clients (default 16 on the GPU)")
    r.add_argument("--ray-cpus", type=int, help="CPUs the Ray head offers (default: all)")
    r.add_argument("--deadline-s", type=float, help="the whole run's time (default 540 on the GPU: a run call "
                                                    "allows 600)")
    r.add_argument("--train-limit-s", type=float)
    r.add_argument("--step-limit-s", type=float)
    r.add_argument("--score-limit-s", type=float)
    m = sub.add_parser("model-only", help="model-only rows/s of a checkpoint (one JSON line)")
    m.add_argument("--checkpoint", required=True)
    m.add_argument("--corpus", required=True)
    m.add_argument("--rows", type=int, required=True)
    m.add_argument("--cpu", action="store_true")
    i = sub.add_parser("install-check", help="run 1: imports and versions")
    i.add_argument("--out", required=True)
    i.add_argument("--cpu", action="store_true")
    cfg = ap.parse_args(argv)

    if cfg.cmd == "model-only":
        print(json.dumps(model_only(cfg.checkpoint, cfg.corpus, not cfg.cpu, cfg.rows)), flush=True)
        return 0
    if cfg.cmd == "install-check":
        return install_check(cfg)
    cfg.gpu = not cfg.cpu
    # On the GPU the checkpoint's forward alone runs ~139,000 GoEmotions rows/s (README, H200): 200,000 rows
    # would be 1.5 s of GPU work against ~20 s of pipeline start, so the corpus is 1,000,000 rows.
    defaults = ({"epochs": 3, "score_rows": 1_000_000, "model_only_rows": 200_000, "serve_requests": 2000,
                 "serve_seconds": 40.0, "concurrency": 16, "deadline_s": 540.0, "train_limit_s": 300.0,
                 "step_limit_s": 150.0, "score_limit_s": 200.0}
                if cfg.gpu else
                {"epochs": 1, "train_rows": 256, "eval_rows": 128, "score_rows": 4000, "model_only_rows": 1000,
                 "serve_requests": 40, "serve_seconds": 15.0, "deadline_s": 1500.0, "train_limit_s": 600.0,
                 "step_limit_s": 400.0, "score_limit_s": 400.0, "concurrency": 4})
    for key, value in defaults.items():
        if getattr(cfg, key, None) is None:
            setattr(cfg, key, value)
    cfg.precision = "bf16" if cfg.gpu else "fp32"
    if cfg.score_rows and cfg.gpu and cfg.score_rows < 200_000:
        say(f"note: --score-rows {cfg.score_rows} is under the issue's 200,000")
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
