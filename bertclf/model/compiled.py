"""A checkpoint's forward pass compiled once per node by AOTInductor, cached, and shared by every actor there.

Eager PyTorch spends a third of a short-text forward outside the matmuls (softmax, GELU, LayerNorm, casts);
inductor fuses those and, with frozen weights, pre-packs the matmul weights for oneDNN. `torch.compile` in
each actor paid its compile time in every actor of every run; here the first actor on a node exports and
compiles the graph for this checkpoint, torch version, CPU class and precision, commits it under one name
in the node's cache, and every later actor (and run) only loads it. Actors that find a compile in progress
score eagerly and switch when the graph lands. Any failure leaves the eager model in charge.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what goes into a compiled graph changes, so old cache entries are never loaded
MIN_PARAMETERS_FOR_AUTO = 5_000_000  # below this a forward is too cheap for a compile to pay back
EAGER_CPU_CLASSES = frozenset({"avx2"})  # auto stays eager here: the compiled fp32 graph ran slower than eager

CompiledForward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cache_dir() -> Path:
    """BERTCLF_COMPILE_CACHE, else ~/.cache/bertclf/compiled (one per node: the graph is native code)."""
    return Path(os.environ.get("BERTCLF_COMPILE_CACHE") or Path.home() / ".cache" / "bertclf" / "compiled")


def wanted(setting: str, model, device_type: str, cpu: str | None = None) -> bool:
    """compile: on / off / auto (a model big enough for the compile to pay back, on a CPU class where the graph
    beats eager; `cpu`: this machine's class unless given); CPU actors only: the graph is compiled for this CPU,
    and GPUs run their own fused kernels (SDPA, bf16) eagerly."""
    if device_type != "cpu" or setting == "off":
        return False
    if setting == "on":
        return True
    if sum(p.numel() for p in model.parameters()) < MIN_PARAMETERS_FOR_AUTO:
        return False
    from bertclf.resources import cpu_class

    return (cpu or cpu_class()) not in EAGER_CPU_CLASSES


def cache_key(fingerprint: str, bf16: bool, max_rows: int, max_length: int) -> str:
    """What the compiled code depends on: the weights, torch, the CPU's instruction set and the shapes."""
    from bertclf.resources import cpu_class

    parts = [f"format={FORMAT}", fingerprint, torch.__version__, cpu_class(), "bf16" if bf16 else "fp32",
             f"rows<={max_rows}", f"len<={max_length}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


class _Logits(torch.nn.Module):
    """The model as (input_ids, attention_mask) -> float32 logits, with the precision baked in."""

    def __init__(self, model, bf16: bool):
        super().__init__()
        self.model, self.bf16 = model, bf16

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


def compile_package(model, path: Path, *, bf16: bool, max_rows: int, max_length: int, pad_id: int) -> None:
    """Export the model with dynamic batch and sequence sizes and compile it with AOTInductor into `path`."""
    from torch.export import Dim, export

    rows, length = max(2, min(8, max_rows)), max(3, min(16, max_length))
    example = (torch.full((rows, length), pad_id, dtype=torch.long), torch.ones(rows, length, dtype=torch.long))
    batch = Dim("batch", min=1, max=max(2, max_rows))
    seq = Dim("seq", min=1, max=max(3, max_length))
    with torch.inference_mode():
        program = export(_Logits(model, bf16).eval(), example,
                         dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs={"freezing": True})


class CompiledGraph:
    """The cached compiled forward for one checkpoint on this node, or a promise of it while it compiles."""

    def __init__(self, key: str):
        self.path = cache_dir() / f"{key}.pt2"
        self.forward: CompiledForward | None = None

    def load_if_ready(self) -> CompiledForward | None:
        """The compiled forward once it is in the cache (a cheap check before each unit)."""
        if self.forward is None and self.path.exists():
            t0 = time.perf_counter()
            self.forward = torch._inductor.aoti_load_package(str(self.path))
            log.info("compiled graph loaded from %s in %.1fs", self.path, time.perf_counter() - t0)
        return self.forward

    def build_if_missing(self, model, **shapes) -> None:
        """Compile into the cache unless it is there or another process on this node is building it.

        The lock is taken without waiting: an actor that finds it held scores eagerly meanwhile.
        """
        failed = self.path.with_suffix(".failed")
        if self.path.exists():
            return
        if failed.exists():  # compiling this graph failed on this node before: don't pay for it again each run
            raise RuntimeError(f"an earlier compile failed ({failed}): {failed.read_text().strip()[:500]}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("compiled graph %s is being built by another process: eager until it lands", self.path.name)
                return
            if self.path.exists():  # finished while we were getting here
                return
            t0 = time.perf_counter()
            staging = self.path.with_name(f".{self.path.stem}.{os.getpid()}.pt2")
            try:
                compile_package(model, staging, **shapes)
                os.replace(staging, self.path)  # one name, committed whole: a half-written graph is never loaded
            except Exception as exc:
                failed.write_text(f"{type(exc).__name__}: {exc}\n")
                raise
            finally:
                staging.unlink(missing_ok=True)
            log.info("compiled graph built in %.1fs: %s", time.perf_counter() - t0, self.path)
