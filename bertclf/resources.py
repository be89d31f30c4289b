"""Resource planning: how many CPUs/GPUs each train worker, data stage and scoring actor gets.

A train worker holds its CPUs while Ray Data still needs CPU to read and encode; on a small node a naive
plan (2 workers x 1 CPU on 2 cores) starves the data pipeline and hangs with no error. The plan leaves
the data stages a share and says what it chose.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

MIN_DATA_CPUS = 0.2


@dataclass(frozen=True)
class TrainPlan:
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    torch_threads: int
    data_cpus: float  # num_cpus of each Ray Data read/map task

    def describe(self) -> str:
        device = "1 GPU + " if self.use_gpu else ""
        return (f"{self.num_workers} train worker(s) x ({device}{self.cpus_per_worker:g} CPU, "
                f"{self.torch_threads} torch thread(s)); Ray Data tasks {self.data_cpus:g} CPU each")


@dataclass(frozen=True)
class ScorePlan:
    num_actors: int
    use_gpu: bool
    cpus_per_actor: float
    torch_threads: int

    def describe(self) -> str:
        device = "1 GPU + " if self.use_gpu else ""
        return (f"{self.num_actors} scoring actor(s) x ({device}{self.cpus_per_actor:g} CPU, "
                f"{self.torch_threads} torch thread(s))")


def plan_training(cluster: dict[str, float], num_workers: int, use_gpu: str = "auto",
                  cpus_per_worker: float | None = None) -> TrainPlan:
    """Workers and their CPUs/GPUs from what the cluster has; GPU workers whenever GPUs are there (auto)."""
    cpus = float(cluster.get("CPU", 0))
    gpus = float(cluster.get("GPU", 0))
    gpu = gpus >= 1 if use_gpu == "auto" else use_gpu == "true"
    if gpu and gpus < num_workers:
        raise ValueError(f"{num_workers} GPU workers requested but the cluster has {gpus:g} GPU(s)")
    if cpus_per_worker is None:
        fair = (cpus - min(1.0, cpus * 0.25)) / num_workers  # a quarter of the CPUs, at most 1, for Ray Data
        cpus_per_worker = math.floor(min(fair, 4.0 if gpu else 8.0) * 4) / 4  # quarters keep the sums exact
    leftover = cpus - cpus_per_worker * num_workers
    if cpus_per_worker <= 0 or leftover < MIN_DATA_CPUS:
        raise ValueError(
            f"{num_workers} worker(s) x {cpus_per_worker:g} CPU does not fit a cluster with {cpus:g} CPU(s) while "
            f"leaving {MIN_DATA_CPUS} CPU for reading data (Ray Data would starve and training hang); "
            "lower num_workers or cpus_per_worker")
    data_cpus = max(0.1, min(1.0, leftover / 2))
    threads = max(1, int(round(cpus_per_worker)))
    return TrainPlan(num_workers, gpu, cpus_per_worker, threads, round(data_cpus, 2))


def plan_scoring(cluster: dict[str, float], num_actors: int | None = None,
                 cpus_per_actor: float | None = None) -> ScorePlan:
    """One actor per GPU; on CPU-only clusters, actors that together use every CPU."""
    cpus = float(cluster.get("CPU", 0))
    gpus = int(cluster.get("GPU", 0))
    if gpus >= 1:
        n = num_actors or gpus
        per = cpus_per_actor or max(0.25, math.floor(min(4.0, cpus / n) * 4) / 4)
        if n > gpus or n * per > cpus:
            raise ValueError(f"{n} GPU scoring actor(s) x {per:g} CPU do not fit a cluster with {gpus} GPU(s) and "
                             f"{cpus:g} CPU(s)")
        return ScorePlan(n, True, per, max(1, int(per)))
    per = cpus_per_actor or float(os.environ.get("BERTCLF_CPUS_PER_ACTOR", 1))
    n = num_actors or max(1, int(cpus // per))
    if n * per > cpus:
        raise ValueError(f"{n} scoring actor(s) x {per:g} CPU does not fit a cluster with {cpus:g} CPU(s)")
    return ScorePlan(n, False, per, max(1, int(per)))


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 matmuls run several times faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device_type: str) -> bool:
    """bf16 autocast: always when asked, never for fp32; auto = GPUs that support it and native-bf16 CPUs."""
    if precision != "auto":
        return precision == "bf16"
    if device_type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()
