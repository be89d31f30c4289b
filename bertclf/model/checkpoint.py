"""The checkpoint format: a Hugging Face model directory plus bertclf.json, weights only as safetensors.

bertclf.json is written last and is what makes a directory a checkpoint: a half-written one has none. It records
each weights file's size and sha256 (`weights`), so a truncated or altered file is found on the driver, naming
the file, before any actor loads it. Optimizer state for resuming lives beside it in safetensors + JSON, so
nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bertclf import storage
from bertclf.baseline import BASELINE_JSON, BASELINE_WEIGHTS
from bertclf.config import TrainConfig
from bertclf.errors import CheckpointError, InputError, ModelError, RecordError, StorageError
from bertclf.labels import LabelSpace
from bertclf.records import CheckpointMeta, EpochRecord

MARKER = "bertclf.json"
TRAIN_STATE_TENSORS = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
ADAPTER_DIR = "adapter"  # peft's adapter files (bertclf.model.adapters)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
WEIGHTS_KEY = "weights"  # bertclf.json: {relative path: {"bytes": n, "sha256": hex}} of the weights it needs
# the precision gate's record (bertclf.model.precision): which precisions `auto` may use, not what the model computes
PRECISION_GATE = "precision_gate.json"


@dataclass
class LoadedCheckpoint:
    """A checkpoint available on local disk, with its metadata."""

    uri: str
    local_dir: Path
    meta: CheckpointMeta
    recorded_weights: dict[str, dict] = field(default_factory=dict)  # bertclf.json's `weights` (none: older)
    _sha256: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def space(self) -> LabelSpace:
        return self.meta.labels

    @property
    def max_length(self) -> int:
        return self.meta.max_length

    def fingerprint(self) -> str:
        """sha256 of the files that make its probabilities (the weights, the adapter's, the baseline's), so scores
        can be traced to the exact model that made them."""
        files = self.model_files()
        if len(files) == 1:
            return self.sha256(files[0])  # the same as hashing the one file's bytes
        h = hashlib.sha256()
        for name in files:
            with open(self.local_dir / name, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()

    def files_sha256(self) -> str:
        """sha256 over every file inference reads, by name: weights, adapter, baseline, model config and tokenizer
        files. Reused scores must match it (bertclf.scoring.reuse): a swapped vocabulary id changes probabilities as
        surely as a changed weight. bertclf.json is left out: what of it matters is compared field by field."""
        h = hashlib.sha256()
        for name in inference_files(self.local_dir, self.meta):
            h.update(f"{name}\0{self.sha256(name)}\n".encode())
        return h.hexdigest()

    def weight_files(self) -> list[str]:
        """The safetensors this checkpoint loads, relative to its directory."""
        return weight_files(self.meta)

    def model_files(self) -> list[str]:
        """Every file whose bytes change its probabilities: the weights and the baseline's vocabulary."""
        return model_files(self.meta)

    def sha256(self, name: str) -> str:
        """sha256 of one file of the checkpoint, computed once."""
        if name not in self._sha256:
            self._sha256[name] = file_sha256(self.local_dir / name)
        return self._sha256[name]

    def verify_weights(self) -> None:
        """The weights' sha256 against what bertclf.json records (older checkpoints record nothing: their
        safetensors headers were checked by `load`). A mismatch is CheckpointError naming the file."""
        for name, want in self.recorded_weights.items():
            if want.get("sha256") and (self.local_dir / name).is_file() and self.sha256(name) != want["sha256"]:
                raise CheckpointError(
                    f"checkpoint {self.uri}: {name} does not match {MARKER} (sha256 {self.sha256(name)[:12]}..., "
                    f"recorded {str(want['sha256'])[:12]}...): the file was altered or damaged after the checkpoint "
                    "was written; restore it or use another checkpoint")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_safetensors(path: Path, name: str, error: type[InputError] = CheckpointError) -> None:
    """A safetensors file whose header parses and whose tensors' byte ranges end exactly at the end of the file.

    Reads only the header, so it is cheap; a truncated or cut-off download fails here, naming `name`, instead of
    inside a worker or actor."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes: too short to hold a safetensors header")
            (header_len,) = struct.unpack("<Q", head)
            if 8 + header_len > size:
                raise ValueError(f"header of {header_len} bytes runs past the end of the file ({size} bytes)")
            header = json.loads(f.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise error(f"{name} is not a valid safetensors file (truncated or corrupt): {exc}") from None
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        raise error(f"{name} is truncated or corrupt: {size} bytes, but its header describes {expected} bytes of "
                    "tensors; copy or download it again")


def check_model_weights(directory: str | Path, name: str) -> None:
    """Every safetensors file of a model directory (e.g. `--model`) checked by its header (ModelError)."""
    for path in sorted(Path(directory).glob("*.safetensors")):
        check_safetensors(path, f"model weights {path} (from --model {name})", ModelError)


def weight_files(meta: CheckpointMeta) -> list[str]:
    """The safetensors a checkpoint of this metadata loads: the model, its adapter, its baseline."""
    files = ["model.safetensors"]
    if meta.tuning.adapter:
        files.append(f"{meta.tuning.adapter}/{ADAPTER_WEIGHTS}")
    if meta.blend is not None:
        files.append(BASELINE_WEIGHTS)
    return files


def inference_files(directory: Path, meta: CheckpointMeta) -> list[str]:
    """The checkpoint's files that loading it for inference reads (relative, sorted): its top-level files and its
    adapter's, less bertclf.json, the training state, tracking.json, the precision gate's record (the precision an
    actor ran is checked on its own) and hidden files."""
    skip = {MARKER, TRAIN_STATE_TENSORS, TRAIN_STATE_JSON, "tracking.json", PRECISION_GATE}
    names = [p.name for p in directory.iterdir() if p.is_file()]
    if meta.tuning.adapter and (directory / meta.tuning.adapter).is_dir():
        names += [f"{meta.tuning.adapter}/{p.name}" for p in (directory / meta.tuning.adapter).iterdir() if p.is_file()]
    return sorted(n for n in names if n not in skip and not n.rsplit("/", 1)[-1].startswith("."))


def model_files(meta: CheckpointMeta) -> list[str]:
    """weight_files and the baseline's vocabulary: every file recorded (size, sha256) in bertclf.json."""
    return weight_files(meta) + ([BASELINE_JSON] if meta.blend is not None else [])


def _weights_record(directory: Path, meta: CheckpointMeta) -> dict[str, dict]:
    return {name: {"bytes": (directory / name).stat().st_size, "sha256": file_sha256(directory / name)}
            for name in model_files(meta) if (directory / name).is_file()}


def versions() -> dict[str, str]:
    """Versions of the packages that shape the results, read from package metadata: importing torch and
    transformers just for `__version__` would slow the scoring driver's commit."""
    from importlib.metadata import PackageNotFoundError, version

    from bertclf import __version__

    out = {"bertclf": __version__}
    for package in ("ray", "torch", "transformers", "pyarrow"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    out["python"] = platform.python_version()
    return out


def long_text_setting(override: str, meta: CheckpointMeta) -> tuple[str, int]:
    """(long_text, chunk_stride) for inference: the checkpoint's (CheckpointMeta), or `override` truncate / chunk;
    chunking a checkpoint trained truncated takes the default stride."""
    if override == "checkpoint":
        return meta.long_text, meta.chunk_stride
    if override == "chunk" and meta.long_text != "chunk":
        return "chunk", TrainConfig.chunk_stride
    return override, meta.chunk_stride


def write_meta(directory: Path, meta: CheckpointMeta) -> None:
    """bertclf.json, with the weights' sizes and sha256, written last: a directory without it is not a checkpoint."""
    record = dataclasses.replace(meta, versions=versions()).to_dict()
    record[WEIGHTS_KEY] = _weights_record(directory, meta)  # read back by `load`; older readers ignore it
    (directory / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True))


def save_train_state(directory: Path, optimizer, scheduler, state: dict) -> None:
    """Optimizer and scheduler state for resuming, as safetensors + JSON (no pickle)."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {}
    for idx, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
    save_file(tensors, str(directory / TRAIN_STATE_TENSORS))
    (directory / TRAIN_STATE_JSON).write_text(json.dumps(
        {"param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(), **state}, default=str))


def load_train_state(directory: Path, optimizer, scheduler) -> dict:
    """Restore optimizer and scheduler from save_train_state; returns the extra state dict."""
    from safetensors.torch import load_file

    tensors = load_file(str(directory / TRAIN_STATE_TENSORS))
    extra = json.loads((directory / TRAIN_STATE_JSON).read_text())
    per_param: dict[int, dict] = {}
    for name, tensor in tensors.items():
        idx, key = name.split(".", 1)
        per_param.setdefault(int(idx), {})[key] = tensor
    optimizer.load_state_dict({"state": per_param, "param_groups": extra.pop("param_groups")})
    scheduler.load_state_dict(extra.pop("scheduler"))
    return extra


def strip_training_state(directory: Path) -> None:
    """What only resuming needs leaves a checkpoint before it is published: optimizer state, and a LoRA adapter
    that is already merged into the weights (a prefix adapter stays: the model needs it)."""
    for name in (TRAIN_STATE_TENSORS, TRAIN_STATE_JSON):
        (directory / name).unlink(missing_ok=True)
    meta = CheckpointMeta.from_json((directory / MARKER).read_text())
    if meta.tuning.adapter is None:
        shutil.rmtree(directory / ADAPTER_DIR, ignore_errors=True)


def load(uri: str) -> LoadedCheckpoint:
    """Open a checkpoint (local or s3://, downloaded once per node); errors say what is wrong with it.

    Storage that can't be reached is StorageError (exit 1: a retry may fix it); a checkpoint that is missing,
    incomplete or damaged (weights whose size differs from bertclf.json's record or whose safetensors header
    doesn't match the file) is CheckpointError naming the file (exit 2). The sha256 is `verify_weights`."""
    try:
        if not storage.exists(uri):
            raise CheckpointError(f"checkpoint {uri} does not exist")
        local = storage.local_copy(uri, MARKER)
    except FileNotFoundError:
        raise CheckpointError(
            f"{uri} is not a bertclf checkpoint: it has no {MARKER} (not a checkpoint, or one whose writing "
            "did not finish)") from None
    except storage.StorageInputError as exc:
        raise CheckpointError(f"checkpoint {uri} can't be read: {exc}") from None
    except StorageError as exc:
        raise StorageError(f"checkpoint {uri} can't be read: {exc}") from None
    missing = [n for n in ("config.json", "model.safetensors") if not (local / n).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {uri} is incomplete: missing {missing}")
    text = (local / MARKER).read_text()
    try:
        meta = CheckpointMeta.from_json(text)
        recorded = json.loads(text).get(WEIGHTS_KEY) or {}
    except RecordError as exc:
        raise CheckpointError(f"checkpoint {uri}: {MARKER} can't be read: {exc}") from None
    ckpt = LoadedCheckpoint(uri=uri, local_dir=local, meta=meta,
                            recorded_weights=recorded if isinstance(recorded, dict) else {})
    try:
        _check_weight_files(ckpt)
    except CheckpointError:
        if not storage.is_s3(uri):
            raise
        shutil.rmtree(local, ignore_errors=True)  # a damaged download: fetch once more before blaming the source
        ckpt.local_dir = storage.local_copy(uri, MARKER)
        _check_weight_files(ckpt)
    return ckpt


def _check_weight_files(ckpt: LoadedCheckpoint) -> None:
    """Sizes against bertclf.json's record and every safetensors header: cheap, so every load does it."""
    for name in ckpt.model_files():
        path = ckpt.local_dir / name
        label = f"checkpoint {storage.join(ckpt.uri, name)}"
        if not path.is_file():
            raise CheckpointError(f"{label} is missing")
        want = ckpt.recorded_weights.get(name, {}).get("bytes")
        if want is not None and path.stat().st_size != int(want):
            raise CheckpointError(f"{label} is {path.stat().st_size} bytes but {MARKER} records {want}: truncated or "
                                  "replaced after the checkpoint was written; restore it or use another checkpoint")
        if name.endswith(".safetensors"):
            check_safetensors(path, label)


def publish(local_dir: Path, uri: str) -> None:
    """Commit a finished checkpoint directory at `uri` (e.g. <output>/best), marker last."""
    storage.replace_dir(local_dir, uri, marker=MARKER)


def read_metrics(uri: str) -> list[EpochRecord]:
    """A run's metrics.jsonl, one EpochRecord per epoch."""
    text = storage.read_bytes(uri).decode()
    return [EpochRecord.from_json(line) for line in text.splitlines() if line.strip()]


def run_history(uri: str, meta: CheckpointMeta) -> list[EpochRecord]:
    """Every epoch of the run a checkpoint came from: its run directory's metrics.jsonl when there is one
    (`<run>/best` -> `<run>/metrics.jsonl`), else the epochs up to the checkpoint recorded in bertclf.json."""
    parent = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else "."
    try:
        return read_metrics(storage.join(parent, "metrics.jsonl"))
    except (FileNotFoundError, storage.StorageError, OSError, RecordError):
        return meta.history


# the interface other modules, jobs and benchmarks use
__all__ = ["ADAPTER_DIR", "ADAPTER_WEIGHTS", "LoadedCheckpoint", "MARKER", "check_model_weights", "load",
           "load_train_state", "long_text_setting", "model_files",
           "publish", "read_metrics", "run_history", "save_train_state",
           "strip_training_state", "versions", "write_meta"]
