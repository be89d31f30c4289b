"""The precision a forward runs at (fp32, bf16 autocast, int8 on CPU) and the quality gate a lower one must pass.

The gate compares a precision with fp32 on the same checkpoint and a labelled split, in the terms users care about:
its task metric (macro-F1 at the checkpoint's thresholds for multi-label, accuracy for multi-class) within
MAX_METRIC_DELTA of fp32's, and its predicted label sets equal to fp32's on at least MIN_AGREEMENT of the rows.
One function, `quality_gate`, is used by the scoring benchmark and by `calibrate`, whose record in the checkpoint
directory (GATE_FILE) is what lets `precision: auto` choose int8 for that checkpoint (`resolve`).

int8 (CPU only): the encoder's Linear layers run as fbgemm dynamic-quantized matmuls (weights int8 per output
channel; activations quantized per token over the token's own min..max on the fly, 7 bits so the u8 x s8 products
never saturate int16 on CPUs without VNNI); layers that read one tensor (query, key, value) run as one stacked
matmul; the pooler and classifier, which run once per text, stay fp32.
benchmarks/int8.py has the measurements behind each choice (benchmarks/results/NOTES.md, 2026-12-06).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from bertclf import storage
from bertclf.labels import LabelSpace
from bertclf.model.checkpoint import PRECISION_GATE

log = logging.getLogger(__name__)

MAX_METRIC_DELTA = 0.003  # |task metric(candidate) - task metric(fp32)|
MIN_AGREEMENT = 0.99  # share of rows whose predicted label set is fp32's


@dataclass(frozen=True)
class GateResult:
    """One precision against fp32 on one labelled split; `passed` is the gate's verdict, `reason` why."""

    precision: str
    rows: int
    metric: str  # "f1_macro" (multi-label) or "accuracy" (multi-class)
    metric_fp32: float
    metric_candidate: float
    metric_delta: float  # candidate - fp32
    agreement: float
    max_abs_dprob: float
    mean_abs_dprob: float
    passed: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GateResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def task_metric(space: LabelSpace, targets: np.ndarray, probs: np.ndarray) -> tuple[str, float]:
    """(name, value): macro-F1 of the predicted label sets at the space's thresholds (multi-label; a label with no
    positives and none predicted counts 0, as scikit-learn's zero_division=0), or accuracy (multi-class; targets are
    class ids)."""
    if space.task == "multi_class":
        return "accuracy", float((np.asarray(probs).argmax(axis=1) == np.asarray(targets)).mean())
    hits = np.asarray(probs) >= np.asarray(space.thresholds, dtype=np.float32)
    truth = np.asarray(targets) > 0.5
    tp = (hits & truth).sum(axis=0)
    wrong = (hits ^ truth).sum(axis=0)  # false positives + false negatives
    denominator = 2 * tp + wrong
    return "f1_macro", float(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0).mean())


def label_agreement(space: LabelSpace, a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose predicted label set is the same under both probability matrices."""
    if space.task == "multi_class":
        return float((np.asarray(a).argmax(axis=1) == np.asarray(b).argmax(axis=1)).mean())
    thresholds = np.asarray(space.thresholds, dtype=np.float32)
    return float(((np.asarray(a) >= thresholds) == (np.asarray(b) >= thresholds)).all(axis=1).mean())


def quality_gate(space: LabelSpace, targets: np.ndarray, fp32: np.ndarray, candidate: np.ndarray, precision: str,
                 max_metric_delta: float = MAX_METRIC_DELTA, min_agreement: float = MIN_AGREEMENT) -> GateResult:
    """`candidate`'s probabilities against `fp32`'s on the same labelled rows (`targets`: multi-hot rows or class
    ids): the task metric of each, label-set agreement, |Δp|, and whether the gate passes."""
    fp32, candidate = np.asarray(fp32, dtype=np.float32), np.asarray(candidate, dtype=np.float32)
    if fp32.shape != candidate.shape or len(fp32) != len(targets) or len(fp32) == 0:
        raise ValueError(f"the gate compares the same rows: fp32 {fp32.shape}, {precision} {candidate.shape}, "
                         f"targets {len(targets)}")
    name, reference = task_metric(space, targets, fp32)
    _, value = task_metric(space, targets, candidate)
    delta, agreement = value - reference, label_agreement(space, fp32, candidate)
    diff = np.abs(candidate - fp32)
    failed = []
    if abs(delta) > max_metric_delta:
        failed.append(f"{name} {value:.4f} vs fp32 {reference:.4f} (|Δ| {abs(delta):.4f} > {max_metric_delta})")
    if agreement < min_agreement:
        failed.append(f"label agreement {agreement:.4f} < {min_agreement}")
    reason = ("; ".join(failed) if failed else
              f"{name} Δ {delta:+.4f} (<= {max_metric_delta}), agreement {agreement:.4f} (>= {min_agreement})")
    return GateResult(precision, len(fp32), name, reference, value, delta, agreement, float(diff.max()),
                      float(diff.mean()), not failed, reason)




# ------------------------------------------------------------------------------------------------ int8 on CPU

INT8_SCHEME = "fbgemm-dynamic/w8-per-channel/a7-per-token-min-max/head-fp32/v2"  # what a recorded int8 gate vouches for
INT8_AUTO_CPU_CLASSES = frozenset({"avx2"})  # where auto may pick int8 (measured: no native bf16, int8 pays off)
SCHEMES = {"int8": INT8_SCHEME, "bf16": "autocast/head-fp32/v1"}


class Int8Linear(torch.nn.Module):
    """A Linear layer as an fbgemm dynamic-quantized matmul, weights int8 per output channel, packed once. fbgemm
    quantizes the whole input with one 7-bit range; with `per_token` (bertclf's int8), each row (a token) is first
    mapped onto [0, 1] by its own min and max and mapped back after (W x = span * W x' + min * sum_j W_ij), so every
    token gets its own range and fbgemm's range is always [0, 1]. One range per tensor loses small tokens to the
    outliers of others, and a symmetric range wastes half its levels on rows that are nearly one-signed (GELU's
    outputs). Costs three passes over the input and output."""

    def __init__(self, linear: torch.nn.Linear, per_token: bool = True):
        super().__init__()
        weight = linear.weight.detach().float().cpu()
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        with warnings.catch_warnings():  # torch 2.13 deprecates quantized tensors; fbgemm's prepack still takes one
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scale, torch.zeros(len(scale), dtype=torch.long), 0,
                                                 torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu().clone()
        self.per_token = per_token
        self.packed = torch.ops.quantized.linear_prepack(qweight, None if per_token else bias)  # bias fused
        self.register_buffer("bias", bias if per_token else None, persistent=False)
        # the int8 weights' row sums: what the rows' shift by their min contributes to each output
        self.register_buffer("weight_sums", qweight.dequantize().sum(dim=1) if per_token else None, persistent=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        # reduce_range: 7-bit activations; u8 x s8 pairs then stay below int16's limit on every x86 CPU
        if not self.per_token:
            return torch.ops.quantized.linear_dynamic(rows, self.packed, True).reshape(*shape[:-1], self.out_features)
        low = rows.amin(dim=1, keepdim=True)
        span = (rows.amax(dim=1, keepdim=True) - low).clamp_(min=1e-12)
        out = torch.ops.quantized.linear_dynamic((rows - low).div_(span), self.packed, True)
        # in place, two operands at a time: a three-operand broadcast (addcmul(bias, out, span)) takes torch's slow
        # path, several times one pass over the output
        out.mul_(span).addcmul_(low, self.weight_sums)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8, "
                f"{'per-token' if self.per_token else 'per-tensor'} inputs")


class SharedInputInt8:
    """Linear layers that read the same tensor (an attention block's query, key and value) run as one Int8Linear
    over their stacked weights: the input's per-token ranges are taken and the input quantized once, and one
    larger matmul replaces several (fewer, better-shaped fbgemm calls). Each row's range is the same either way, so
    the outputs are those of separate Int8Linear layers. Not a Module: its members are, and hold it. What a run left
    for the other members is kept per thread: two threads running one model never take each other's outputs."""

    def __init__(self, linears: list[torch.nn.Linear]):
        stacked = torch.nn.Linear(linears[0].in_features, sum(m.out_features for m in linears),
                                  bias=all(m.bias is not None for m in linears))
        with torch.no_grad():
            stacked.weight.copy_(torch.cat([m.weight.detach().float().cpu() for m in linears]))
            if stacked.bias is not None:
                stacked.bias.copy_(torch.cat([m.bias.detach().float().cpu() for m in linears]))
        self.fused = Int8Linear(stacked)
        ends = np.cumsum([m.out_features for m in linears]).tolist()
        self.slices = [slice(a, b) for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        self._held = threading.local()  # .input: the tensor last run in this thread; .outputs: what is left of it

    def output(self, member: int, x: torch.Tensor) -> torch.Tensor:
        """Member `member`'s output for `x`: computed with every member's when `x` is not the tensor the group last
        ran in this thread (or this member already took its share of it), else taken from that run."""
        held = self._held
        if getattr(held, "input", None) is not x or held.outputs[member] is None:
            out = self.fused(x)
            held.input, held.outputs = x, [out[..., part].contiguous() for part in self.slices]
        result, held.outputs[member] = held.outputs[member], None
        if all(o is None for o in held.outputs):  # every member served: hold nothing between forwards
            held.input = None
        return result

    def __getstate__(self) -> dict:  # copies (copy.deepcopy of a model) start with nothing held
        return {k: v for k, v in self.__dict__.items() if k != "_held"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _held=threading.local())


class SharedInputMember(torch.nn.Module):
    """One Linear layer of a SharedInputInt8 group, in the Linear's place."""

    def __init__(self, group: SharedInputInt8, member: int, linear: torch.nn.Linear):
        super().__init__()
        self.group, self.member = group, member
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(self.member, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, shares its input's pass"


def quantize_int8(model) -> int:
    """Replace the encoder's Linear layers with Int8Linear in place (CPU models); the pooler and classifier stay fp32.
    Layers that a probe forward shows reading one tensor (query, key, value) become one SharedInputInt8 group.
    Returns how many layers were replaced."""
    from bertclf.model.adapters import hf_model
    from bertclf.model.modeling import head_modules

    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            raise RuntimeError(f"precision int8 needs torch's x86 (fbgemm) quantized engine; this build has "
                               f"{torch.backends.quantized.supported_engines}: use fp32")
        torch.backends.quantized.engine = "fbgemm"
    inner = hf_model(model)
    kept = {id(m) for head in head_modules(inner).values() for m in head.modules()}
    targets = [(parent, name, child) for parent in list(inner.modules()) if id(parent) not in kept
               for name, child in list(parent.named_children())
               if isinstance(child, torch.nn.Linear) and id(child) not in kept]
    grouped: dict[int, SharedInputMember] = {}
    for group in shared_input_groups(inner, [child for _, _, child in targets]):
        shared = SharedInputInt8(group)
        grouped.update({id(linear): SharedInputMember(shared, k, linear) for k, linear in enumerate(group)})
    for parent, name, child in targets:
        setattr(parent, name, grouped.get(id(child)) or Int8Linear(child))
    return len(targets)


def shared_input_groups(inner, linears: list[torch.nn.Linear]) -> list[list[torch.nn.Linear]]:
    """Sibling Linear layers (one parent module) that a probe forward of three tokens showed reading the very same
    tensor, in call order; none if the probe fails (a family whose forward needs more than input ids)."""
    seen: list[tuple[torch.nn.Linear, torch.Tensor]] = []  # the inputs stay alive: their ids are not reused
    handles = [m.register_forward_pre_hook(lambda m, args: seen.append((m, args[0]))) for m in linears]
    try:
        vocab = int(getattr(inner.config, "vocab_size", 0) or 3)
        with torch.inference_mode():
            inner(input_ids=torch.tensor([[min(k, vocab - 1) for k in (1, 2, 3)]]))
    except Exception as exc:  # noqa: BLE001 - grouping only saves time: without it every layer runs on its own
        log.info("int8: the probe forward failed (%s: %s); each Linear layer quantizes its own input",
                 type(exc).__name__, exc)
        return []
    finally:
        for h in handles:
            h.remove()
    parents = {id(child): id(parent) for parent in inner.modules() for child in parent.children()}
    readers: dict[tuple[int, int], list[torch.nn.Linear]] = {}  # (parent, input tensor) -> its Linear layers
    for module, x in seen:
        members = readers.setdefault((parents[id(module)], id(x)), [])
        if all(m is not module for m in members):
            members.append(module)
    taken: set[int] = set()  # a layer called more than once (weights shared across blocks) joins one group
    groups = []
    for members in readers.values():
        if len(members) > 1 and not taken & {id(m) for m in members}:
            taken |= {id(m) for m in members}
            groups.append(members)
    return groups


# ------------------------------------------------------------------------------------------------ auto and its record

GATE_FILE = PRECISION_GATE  # in the checkpoint directory, written by bertclf.model.calibration.calibrate
GATE_FORMAT = 1


def resolve(setting: str, device_type: str, gates: dict[str, GateResult] | None = None,
            cpu: str | None = None) -> str:
    """The precision a forward runs at for a config's `precision`: fp32, bf16 or int8 as asked (int8 on CPU only);
    auto: bf16 on GPUs that support it; on CPUs with native bf16, bf16 unless the checkpoint's gate record says bf16
    failed there; on AVX2-class CPUs, int8 only where the record says int8 passed; fp32 otherwise. `gates`: the
    checkpoint's record (read_gates); `cpu`: this machine's class unless given."""
    from bertclf.resources import cpu_class, use_bf16

    if setting == "int8":
        if device_type != "cpu":
            raise ValueError(f"precision int8 runs on CPU only (device {device_type}): use auto, bf16 or fp32")
        return "int8"
    if setting != "auto":
        return "bf16" if use_bf16(setting, device_type) else "fp32"
    gates = gates or {}
    if use_bf16("auto", device_type):
        failed = device_type == "cpu" and "bf16" in gates and not gates["bf16"].passed
        return "fp32" if failed else "bf16"
    if device_type == "cpu" and (cpu or cpu_class()) in INT8_AUTO_CPU_CLASSES and "int8" in gates \
            and gates["int8"].passed:
        return "int8"
    return "fp32"


def record_needed(setting: str, device_type: str, cpu: str | None = None) -> bool:
    """Whether `resolve(setting, ...)` can depend on the checkpoint's gate record here (only then is it read)."""
    from bertclf.resources import cpu_class, cpu_has_native_bf16

    return setting == "auto" and device_type == "cpu" and (
        cpu_has_native_bf16() or (cpu or cpu_class()) in INT8_AUTO_CPU_CLASSES)


def read_gates(checkpoint_uri: str, fingerprint: str) -> dict[str, GateResult]:
    """The checkpoint's recorded gate results by precision, read from its own URI (not a node's cached copy, which
    may predate the record); a record of other weights or of another int8 scheme counts as none."""
    uri = storage.join(checkpoint_uri, GATE_FILE)
    if not storage.exists(uri):
        return {}
    try:
        record = json.loads(storage.read_bytes(uri))
        if record.get("format") != GATE_FORMAT or record.get("fingerprint") != fingerprint:
            log.warning("%s was recorded for other weights (or another format): ignored, precision auto as without "
                        "it", uri)
            return {}
        return {name: GateResult.from_dict(g) for name, g in record.get("gates", {}).items()
                if g.get("scheme") == SCHEMES.get(name)}
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s can't be read (%s): ignored, precision auto as without it", uri, exc)
        return {}


def write_gates(checkpoint_uri: str, fingerprint: str, results: list[GateResult], context: dict) -> str:
    """Record gate results (merged with the precisions recorded before for the same weights) in the checkpoint
    directory, with what they were measured on (`context`: data, CPU, versions); returns the record's URI."""
    uri = storage.join(checkpoint_uri, GATE_FILE)
    gates = {}
    if storage.exists(uri):
        try:
            old = json.loads(storage.read_bytes(uri))
            if old.get("fingerprint") == fingerprint:
                gates = old.get("gates", {})
        except ValueError:
            pass
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for r in results:
        gates[r.precision] = {**r.to_dict(), "scheme": SCHEMES.get(r.precision, ""), "recorded": now, **context}
    record = {"format": GATE_FORMAT, "fingerprint": fingerprint, "max_metric_delta": MAX_METRIC_DELTA,
              "min_agreement": MIN_AGREEMENT, "gates": gates}
    storage.write_bytes(uri, (json.dumps(record, indent=1) + "\n").encode())
    return uri


# the interface other modules, jobs and benchmarks use
__all__ = ["GATE_FILE", "INT8_AUTO_CPU_CLASSES", "INT8_SCHEME", "MAX_METRIC_DELTA", "MIN_AGREEMENT", "GateResult",
           "Int8Linear", "SharedInputInt8", "SharedInputMember", "label_agreement", "quality_gate", "quantize_int8",
           "read_gates", "record_needed", "resolve", "task_metric", "write_gates"]
