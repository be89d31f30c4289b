"""Training memory: how many padded tokens one micro-batch may hold on a worker, planned from the model's shape,
the precision, the attention kernel and the worker's share of its node's memory.

Why: activation memory grows with rows x length (and rows x length^2 for eager attention), so a row count that
fits at 48 tokens (GoEmotions) takes ~8 GB per worker at 512 (news articles) and Ray's memory monitor kills
the workers mid-epoch. Cutting each batch into micro-batches by a token budget, with gradients accumulated
over them, keeps the optimizer's batch (and the learning-rate schedule) while memory stays within the share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bertclf.errors import ConfigError

GIB = 1024**3
MEMORY_USAGE_THRESHOLD = 0.95  # Ray's memory monitor kills workers above this share of a node's memory
SYSTEM_RESERVE_SHARE = 0.15    # of a node's memory, at least SYSTEM_RESERVE_MIN: raylet, GCS, driver, Ray Data
SYSTEM_RESERVE_MIN = 2 * GIB
RUNTIME_BYTES = int(1.2 * GIB)  # a Ray Train worker before its model: Python, torch, Ray, tokenizer
SAFETY = 0.75                   # plan activations to this share of what is left (allocator slack, fragmentation)
# what PyTorch really keeps per layer against the layer count below: 1.3-1.4x for the packaged model in eager and
# SDPA attention alike (benchmarks/memory.py; benchmarks/results/*-memory-*.json)
ACTIVATION_OVERHEAD = 1.4


@dataclass(frozen=True)
class ModelShape:
    """What activation memory depends on, read from the model's config."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    parameters: int
    trainable_parameters: int

    @classmethod
    def from_config(cls, config, parameters: int, trainable_parameters: int | None = None) -> ModelShape:
        hidden = int(config.hidden_size)
        intermediate = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None)
        return cls(layers=int(config.num_hidden_layers), hidden=hidden, heads=int(config.num_attention_heads),
                   intermediate=int(intermediate or 4 * hidden), parameters=parameters,
                   trainable_parameters=parameters if trainable_parameters is None else trainable_parameters)


def activation_bytes_per_row(shape: ModelShape, length: int, *, bf16: bool, eager_attention: bool) -> int:
    """Bytes one row of `length` tokens keeps for the backward pass: per layer, the transformer-layer count of
    Korthikanti et al. (2022) in elements, (18h + 4i) / 2 per token, plus 2.5 x heads x length per token for eager
    attention's softmax, dropout mask and output (fused SDPA kernels keep none of them), times what PyTorch was
    measured to keep beyond that count."""
    element = 2 if bf16 else 4
    halves = 18 * shape.hidden + 4 * shape.intermediate + (5 * shape.heads * length if eager_attention else 0)
    return int(ACTIVATION_OVERHEAD * shape.layers * length * element * halves / 2)


def fixed_bytes(shape: ModelShape, *, bf16: bool) -> int:
    """Weights (fp32), gradients and AdamW's two moments for what trains, bf16 copies under autocast, runtime."""
    weights = 4 * shape.parameters + 12 * shape.trainable_parameters
    return RUNTIME_BYTES + weights + (2 * shape.parameters if bf16 else 0)


def node_share(node_memory_bytes: float, workers_on_node: int) -> int:
    """A worker's share of its node: what Ray's memory monitor allows, less a reserve for Ray itself and the data
    stages, split between the node's train workers."""
    usable = node_memory_bytes * MEMORY_USAGE_THRESHOLD
    reserve = max(SYSTEM_RESERVE_MIN, SYSTEM_RESERVE_SHARE * node_memory_bytes)
    return int(max(0.0, usable - reserve) / max(1, workers_on_node))


@dataclass(frozen=True)
class MemoryPlan:
    worker_share_bytes: int
    max_tokens_per_batch: int
    max_length: int
    batch_size: int
    planned: bool  # False when max_tokens_per_batch was set by hand
    model_bytes: int  # fixed_bytes: weights, gradients, optimizer state, runtime
    row_bytes: int  # activation_bytes_per_row of one max_length row

    @property
    def rows_at_max_length(self) -> int:
        return max(1, min(self.batch_size, self.max_tokens_per_batch // self.max_length))

    @property
    def estimated_bytes(self) -> int:
        """The planner's estimate of a worker's peak memory: the model's fixed bytes and one micro-batch of
        max_length rows' activations (what benchmarks compare a measured peak with)."""
        return self.model_bytes + self.rows_at_max_length * self.row_bytes

    @property
    def micro_batches_at_max_length(self) -> int:
        return math.ceil(self.batch_size / self.rows_at_max_length)

    def describe(self) -> str:
        how = "planned" if self.planned else "set"
        return (f"memory: worker share {self.worker_share_bytes / GIB:.1f} GiB, micro-batches of <= "
                f"{self.max_tokens_per_batch:,} padded tokens ({how}); {self.max_length}-token rows: "
                f"{self.rows_at_max_length} per micro-batch, {self.micro_batches_at_max_length} micro-batch(es) "
                f"per step of {self.batch_size} rows")


def plan_memory(shape: ModelShape, *, share_bytes: int, max_length: int, batch_size: int, bf16: bool,
                eager_attention: bool, max_tokens_per_batch: int | None = None) -> MemoryPlan:
    """The token budget of one training micro-batch on a worker with `share_bytes`; ConfigError when not even one
    row of `max_length` tokens fits, so the run fails before training instead of as a killed worker."""
    row = activation_bytes_per_row(shape, max_length, bf16=bf16, eager_attention=eager_attention)
    fixed = fixed_bytes(shape, bf16=bf16)
    room = SAFETY * (share_bytes - fixed)
    if max_tokens_per_batch is not None:
        return MemoryPlan(share_bytes, max_tokens_per_batch, max_length, batch_size, planned=False,
                          model_bytes=fixed, row_bytes=row)
    if room < row:
        need = fixed + row / SAFETY
        raise ConfigError(
            f"one {max_length}-token row needs about {need / GIB:.1f} GiB on a train worker (model with "
            f"{shape.parameters:,} parameters, {shape.trainable_parameters:,} training) but a worker's share is "
            f"{share_bytes / GIB:.1f} GiB: lower max_length, use fewer workers per node (num_workers), "
            "method lora or prefix, or give the node more memory (worker_memory_gb sets the share by hand)")
    rows = int(room // row)
    # rows of max_length that fit, as a token budget; shorter rows fit more (their attention is smaller)
    budget = min(rows, batch_size) * max_length
    return MemoryPlan(share_bytes, budget, max_length, batch_size, planned=True, model_bytes=fixed, row_bytes=row)


def plan_for_model(model, config, cfg, *, share_bytes: int, device_type: str, bf16: bool) -> MemoryPlan:
    """The plan for `model` as it trains (adapters applied; `config` its transformers config) under the run's
    max_length, batch_size and max_tokens_per_batch (`cfg`, a TrainConfig), with the attention its class gets."""
    from bertclf.model.modeling import attention_for

    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = None if cfg.max_tokens_per_batch == "auto" else int(cfg.max_tokens_per_batch)
    return plan_memory(ModelShape.from_config(config, params, trainable), share_bytes=share_bytes,
                       max_length=int(cfg.max_length), batch_size=cfg.batch_size, bf16=bf16,
                       eager_attention=attention_for(device_type, config) == "eager", max_tokens_per_batch=fixed)


def micro_batch_rows(rows: int, padded_length: int, max_tokens: int) -> list[slice]:
    """A batch of `rows` padded to `padded_length`, cut into slices of at most `max_tokens` padded tokens each
    (one row at least)."""
    per = max(1, max_tokens // max(1, padded_length))
    return [slice(start, min(rows, start + per)) for start in range(0, rows, per)]


def train_workers_share(nodes: list[dict], num_workers: int, cpus_per_worker: float) -> int:
    """The smallest per-worker share over the alive nodes that can host a worker, with as many of the run's
    workers on each as its CPUs hold (Ray Train packs them). A node's memory is Ray's `memory` plus
    `object_store_memory` resources: what Ray found available when the node started."""
    shares = []
    for node in nodes:
        resources = node.get("Resources", {})
        if not node.get("Alive", True) or resources.get("CPU", 0) < cpus_per_worker:
            continue
        on_node = min(num_workers, int(resources["CPU"] // cpus_per_worker))
        shares.append(node_share(resources.get("memory", 0) + resources.get("object_store_memory", 0), on_node))
    if not shares:
        raise ConfigError(f"no alive Ray node has {cpus_per_worker:g} CPU(s) for a train worker")
    return min(shares)


__all__ = ["GIB", "MemoryPlan", "ModelShape", "micro_batch_rows", "node_share", "plan_for_model", "plan_memory",
           "train_workers_share"]
