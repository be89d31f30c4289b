"""The cluster and how to use it: connect to Ray, plan CPUs/GPUs for train workers, data stages and scoring
actors, and choose the precision the hardware runs natively.

A train worker holds its CPUs while Ray Data still needs CPU to read and encode; on a small node a naive
plan (2 workers x 1 CPU on 2 cores) starves the data pipeline and hangs with no error. The plan leaves
the data stages a share and says what it chose.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
from dataclasses import dataclass

from bertclf import logs, progress, storage
from bertclf.errors import ConfigError

log = logging.getLogger(__name__)

# Settings of this process that Ray workers need too (driver-only variables don't reach them).
WORKER_ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "BERTCLF_S3_RETRIES", "BERTCLF_IO_ATTEMPTS",
                   "BERTCLF_IO_RETRY_DELAY", "BERTCLF_IO_DEADLINE_S", logs.LEVEL_ENV, progress.EVERY_ENV)
# Run by Ray in every worker process of the run (Ray Train workers, Ray Data tasks and actors) before any task:
# bertclf's log format and level there too.
LOG_SETUP_HOOK = "bertclf.logs.setup_worker"

SETUP_HOOK_ENV_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"  # how Ray carries a hook inside env_vars

MIN_DATA_CPUS = 0.2


@dataclass(frozen=True)
class TrainPlan:
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    torch_threads: int
    data_cpus: float  # num_cpus of each Ray Data read/map task
    max_tokens_per_batch: int | None = None  # a training micro-batch's padded tokens; None: the worker plans it

    def describe(self) -> str:
        device = "1 GPU + " if self.use_gpu else ""
        return (f"{self.num_workers} train worker(s) x ({device}{self.cpus_per_worker:g} CPU, "
                f"{self.torch_threads} torch thread(s)); Ray Data tasks {self.data_cpus:g} CPU each")


# Micro-batch token budgets (tokens, rows): a CPU core is saturated by small batches, a GPU wants large ones.
CPU_BATCH_BUDGET = (2048, 64)
GPU_BATCH_BUDGET = (65536, 1024)
TOKENIZERS_PER_GPU = 12  # at most, CPU tokenizer actors feeding each GPU actor (benchmarks/README.md: "GPU sizing")


@dataclass(frozen=True)
class ScorePlan:
    num_actors: int
    use_gpu: bool
    cpus_per_actor: float
    torch_threads: int
    max_tokens_per_batch: int = CPU_BATCH_BUDGET[0]
    max_batch_rows: int = CPU_BATCH_BUDGET[1]
    tokenizers: int = 0  # CPU actors of a separate tokenize stage; 0: each scoring actor tokenizes its own units

    def describe(self) -> str:
        device = "1 GPU + " if self.use_gpu else ""
        stage = (f"; tokenize stage: {self.tokenizers} CPU actor(s) x 1 CPU sending token ids" if self.tokenizers
                 else "; each actor reads and tokenizes its own units")
        return (f"{self.num_actors} scoring actor(s) x ({device}{self.cpus_per_actor:g} CPU, "
                f"{self.torch_threads} torch thread(s)), micro-batches of <= {self.max_tokens_per_batch} tokens / "
                f"{self.max_batch_rows} rows{stage}")


def connect(address: str | None = None) -> dict[str, float]:
    """Join the cluster this process belongs to, or start a local one; returns its total resources.

    Without an address (argument or RAY_ADDRESS): the `ray start` cluster recorded on this host when it answers,
    as ray.init() would choose but said plainly (Ray warns "Found multiple active Ray instances" when other Rays
    run here), else a private Ray of this run's own: ray.init() alone tries a dead cluster's record for minutes.
    Workers are told which cluster is theirs: Ray's state API, which Ray Train's placement-group cleaner polls
    from a worker, looks the cluster up afresh (RAY_ADDRESS, the record, any Ray on the host) and, pointed at
    another cluster, finds no controller there and removes the run's placement group.
    Driver-only environment variables don't reach workers of a `ray start` cluster, so the non-secret AWS settings
    (endpoint, region) and the HF settings of this process go to the workers through runtime_env (unless a job
    already set one). AWS credentials never do: Ray writes a runtime_env into its session logs. Workers take them
    from their node, as AWS tools do: a private Ray's raylet inherits this process's environment, a `ray start`
    cluster the environment it was started with (cluster/local.py), a cluster its instance profile or IRSA.
    """
    import ray

    if not ray.is_initialized():
        in_job = bool(os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
        address = address or os.environ.get("RAY_ADDRESS") or _running_local_cluster()
        env = storage.without_credentials(
            {**storage.aws_env(), **{k: os.environ[k] for k in WORKER_ENV_VARS if k in os.environ}})
        if address and not in_job and any(os.environ.get(k) for k in storage.AWS_CREDENTIAL_VARS):
            log.info("ray: this process's AWS credentials are not sent to the cluster's workers; they use their "
                     "node's (the `ray start` environment, a profile, an instance profile or IRSA)")
        kwargs: dict = {"address": address or "local", "log_to_driver": True}
        if not address:
            log.info("ray: no RAY_ADDRESS and no running `ray start` cluster on this host: starting a private Ray")
            kwargs["dashboard_port"] = _free_port()
            env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{kwargs['dashboard_port']}"
        elif "://" not in address and address != "auto":
            env["RAY_ADDRESS"] = address
        kwargs["runtime_env"] = {"worker_process_setup_hook": LOG_SETUP_HOOK, "env_vars": env} if not in_job \
            else _job_additions({k: env[k] for k in (logs.LEVEL_ENV, progress.EVERY_ENV) if k in env})
        ray.init(**kwargs)
        if not address:
            reap_when_gone(ray._private.worker._global_node.get_session_dir_path())
    resources = ray.cluster_resources()
    log.info("ray: connected, cluster resources CPU=%s GPU=%s", resources.get("CPU", 0), resources.get("GPU", 0))
    return resources


# A private Ray's GCS and raylet die with their driver (Ray starts them with PDEATHSIG), but the raylet's
# DashboardAgent and RuntimeEnvAgent, on finding their raylet killed, first try to report it to the dead GCS with a
# 60 s timeout: after a kill -9 of the driver they outlived it by 60-90 s. This watcher, a separate process polling
# the driver's pid (and its start time: a reused pid is not the driver), kills whatever of the session is left
# once the driver has ended, by any means (after a normal exit ray.shutdown() has already stopped it all).
_REAPER = r"""
import os, signal, sys, time
driver, session = int(sys.argv[1]), sys.argv[2]
def stat(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "gone", None
started = stat(driver)[1]
while True:
    state, start = stat(driver)
    if state in ("gone", "Z", "X") or start != started:
        break
    time.sleep(0.5)
def in_session(pid):
    try:
        words = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                words.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    except OSError:
        return False
    values = [w.split("=", 1)[1] if w.startswith("-") and "=" in w else w for w in words]
    return any(v == session or v.startswith(session + "/") for v in values)
for _ in range(3):
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (os.getpid(), driver)]:
        if in_session(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    time.sleep(0.5)
"""


def reap_when_gone(session_dir: str) -> None:
    """Start the watcher that stops what is left of this driver's private Ray (`session_dir`) once the driver has
    ended, kill -9 included (Linux: it reads /proc)."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        return
    # its own session: Ctrl-C in the terminal doesn't stop it before the driver has ended
    _REAPERS.append(subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid()), session_dir],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, close_fds=True))


_REAPERS: list = []  # the watchers started (a Popen collected while running would warn)


def _job_additions(env: dict[str, str]) -> dict:
    """What a `ray job submit` driver adds to its job's runtime_env: the log setup hook and the log settings, each
    only where the job's own runtime_env doesn't set it (Ray refuses to merge a key that both set)."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    job_env = job.get("env_vars") or {}
    added: dict = {}
    if "worker_process_setup_hook" not in job and SETUP_HOOK_ENV_VAR not in job_env:
        added["worker_process_setup_hook"] = LOG_SETUP_HOOK
    if env := {k: v for k, v in env.items() if k not in job_env}:
        added["env_vars"] = env
    return added


def _running_local_cluster() -> str | None:
    """The GCS address `ray start` recorded on this host (<Ray temp dir>/ray_current_cluster), if it answers."""
    from ray._private.utils import read_ray_address  # the record ray.init() itself reads when given no address

    recorded = read_ray_address()
    if not recorded:
        return None
    host, _, port = recorded.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
    except (OSError, ValueError):
        log.warning("ray: ignoring %s, recorded by a `ray start` cluster that no longer answers", recorded)
        return None
    log.info("ray: joining the `ray start` cluster on this host at %s", recorded)
    return recorded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan_training(cluster: dict[str, float], num_workers: int, use_gpu: bool | None = None,
                  cpus_per_worker: float | None = None) -> TrainPlan:
    """Workers and their CPUs/GPUs from what the cluster has; GPU workers whenever GPUs are there (None)."""
    cpus = float(cluster.get("CPU", 0))
    gpus = float(cluster.get("GPU", 0))
    gpu = gpus >= 1 if use_gpu is None else use_gpu
    if gpu and gpus < num_workers:
        raise ConfigError(f"{num_workers} GPU workers requested but the cluster has {gpus:g} GPU(s)")
    if cpus_per_worker is None:
        fair = (cpus - min(1.0, cpus * 0.25)) / num_workers  # a quarter of the CPUs, at most 1, for Ray Data
        cpus_per_worker = math.floor(min(fair, 4.0 if gpu else 8.0) * 4) / 4  # quarters keep the sums exact
    leftover = cpus - cpus_per_worker * num_workers
    if cpus_per_worker <= 0 or leftover < MIN_DATA_CPUS:
        raise ConfigError(
            f"{num_workers} worker(s) x {cpus_per_worker:g} CPU does not fit a cluster with {cpus:g} CPU(s) while "
            f"leaving {MIN_DATA_CPUS} CPU for reading data (Ray Data would starve and training hang); "
            "lower num_workers or cpus_per_worker")
    data_cpus = max(0.1, min(1.0, leftover / 2))
    threads = max(1, int(round(cpus_per_worker)))
    return TrainPlan(num_workers, gpu, cpus_per_worker, threads, round(data_cpus, 2))


def plan_scoring(cluster: dict[str, float], num_actors: int | None = None, cpus_per_actor: float | None = None,
                 tokenize_stage: str = "auto", max_tokens_per_batch: int | None = None,
                 max_batch_rows: int | None = None) -> ScorePlan:
    """Scoring actors, their micro-batch budget and where tokenizing runs, from what the cluster has.

    GPUs: one actor per GPU with 1 CPU to feed it, and (tokenize_stage auto or separate) CPU tokenizer actors,
    TOKENIZERS_PER_GPU per GPU as the CPUs allow, so the GPU never waits on the tokenizer. CPU-only clusters:
    actors that together use every CPU, each tokenizing its own units (fused), unless tokenize_stage is separate.
    """
    cpus = float(cluster.get("CPU", 0))
    gpus = int(cluster.get("GPU", 0))
    separate = tokenize_stage == "separate" or (tokenize_stage == "auto" and gpus >= 1)
    if gpus >= 1:
        n = num_actors or gpus
        per = cpus_per_actor or (1.0 if separate else max(0.25, math.floor(min(4.0, cpus / n) * 4) / 4))
        tokenizers = min(TOKENIZERS_PER_GPU * n, int(cpus - n * per)) if separate else 0
        if n > gpus or n * per > cpus or (separate and tokenizers < 1):
            spare = " and a CPU for the tokenize stage" if separate else ""
            raise ConfigError(f"{n} GPU scoring actor(s) x {per:g} CPU{spare} do not fit a cluster with {gpus} GPU(s) "
                              f"and {cpus:g} CPU(s)")
        budget = GPU_BATCH_BUDGET
    else:
        tokenizers = max(1, int(cpus // 8)) if separate else 0
        per = cpus_per_actor or 1.0
        n = num_actors or max(1, int((cpus - tokenizers) // per))
        if n * per + tokenizers > cpus:
            spare = f" and {tokenizers} tokenizer actor(s)" if tokenizers else ""
            raise ConfigError(f"{n} scoring actor(s) x {per:g} CPU{spare} do not fit a cluster with {cpus:g} CPU(s)")
        budget = CPU_BATCH_BUDGET
    return ScorePlan(n, gpus >= 1, per, max(1, int(per)), max_tokens_per_batch or budget[0],
                     max_batch_rows or budget[1], tokenizers)


@functools.cache
def cpu_flags() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of the first CPU in /proc/cpuinfo ("flags" on x86, "Features" on ARM)."""
    model, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key = line.split(":", 1)[0].strip()
        if key in ("model name", "Model") and model == "unknown":
            model = line.split(":", 1)[1].strip()
        if key in ("flags", "Features") and not flags:
            flags = line.split(":", 1)[1]
    return model, frozenset(flags.split())


CPU_CLASSES = ("avx2", "avx512", "avx512_bf16", "amx")  # x86 classes, weakest first


def cpu_class(flags: frozenset[str] | set[str] | None = None, arch: str | None = None) -> str:
    """The CPU's class by its best matmul instructions (amx, avx512_bf16, avx512, avx2), the arch off x86:
    what decides bf16 speed, and what code compiled for this CPU may use. For this machine (no `flags` given) it
    is capped at what torch can use in this process (`torch_cpu_ceiling`), so ATEN_CPU_CAPABILITY=avx2 with
    ONEDNN_MAX_CPU_ISA=AVX2 on an AVX512-BF16 host makes bertclf behave as on an AVX2-only CPU."""
    import platform

    ceiling = torch_cpu_ceiling() if flags is None else None
    flags = cpu_flags()[1] if flags is None else flags
    arch = arch or platform.machine()
    if arch not in ("x86_64", "AMD64", "i386", "i686"):
        return arch
    for name, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            if ceiling is None or (ceiling in CPU_CLASSES and CPU_CLASSES.index(name) <= CPU_CLASSES.index(ceiling)):
                return name
            return ceiling if ceiling in CPU_CLASSES else arch
    return arch


@functools.cache
def torch_cpu_ceiling() -> str | None:
    """The best CPU class torch's kernels use in this process: ATen's vector capability (ATEN_CPU_CAPABILITY lowers
    it) and oneDNN's bf16 support (ONEDNN_MAX_CPU_ISA lowers it); "none" for neither AVX2 nor AVX512, None where
    torch says nothing (no torch, or not x86)."""
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability().upper()
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (ImportError, AttributeError, RuntimeError):
        return None
    if capability == "AVX2":
        return "avx2"
    if capability.startswith("AVX512"):
        return "amx" if bf16 else "avx512"  # with oneDNN's bf16 the flags decide between the bf16 classes
    return "none" if capability in ("DEFAULT", "NO AVX") else None


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 matmuls run several times faster than fp32."""
    return cpu_class() in ("amx", "avx512_bf16")


def use_bf16(precision: str, device_type: str) -> bool:
    """bf16 autocast: always when asked, never for fp32; auto = GPUs that support it and native-bf16 CPUs. What a
    model runs at for inference (int8 too) is bertclf.model.precision.resolve, which asks this for bf16; training asks
    here directly, and int8 is no precision to train at."""
    if precision == "int8":
        raise ConfigError("precision int8 is for CPU inference (score, serve); train with auto, bf16 or fp32")
    if precision != "auto":
        return precision == "bf16"
    if device_type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


# the interface other modules, jobs and benchmarks use
__all__ = ["ScorePlan", "TrainPlan", "connect", "cpu_class", "cpu_flags", "cpu_has_native_bf16", "plan_scoring",
           "plan_training", "use_bf16"]
