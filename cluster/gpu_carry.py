"""Build what the GPU check carries (docs/gpu.md), because the GPU machine has no Ray, no network and takes at most
64 MiB of files per run.

    python cluster/gpu_carry.py build              # .carry/wheels (cp312), .carry/model, .carry/data; prints the plan
    python cluster/gpu_carry.py build --python 3.11 --only wheels --out /tmp/w311   # the same wheels for this Python
    python cluster/gpu_carry.py view SITE_PACKAGES DEST   # a folder of the GPU image's packages out of a venv
    python cluster/gpu_carry.py plan               # sizes against the 64 MiB budget, and which run carries what

- wheels/: Ray 2.60.0 made slim (the Java workers' jar and the dashboard's JS source maps dropped, RECORD rewritten
  so pip accepts it) and the few distributions bertclf's train/score/serve/report import that the GPU image lacks
  (MISSING; versions pinned to this venv's, so the CPU test runs what the GPU gets).
- model/: the packaged all-MiniLM-L6-v2 with its float weights as bf16 safetensors (87 MB fp32 would not fit a
  run); the GPU check upcasts them to fp32 before training (transformers 5 loads a bf16 file as bf16 weights).
- data/: the GoEmotions splits from ../shared/data (the scoring corpus is made on the GPU machine by repetition).

Everything is written under .carry/, which this script adds to .git/info/exclude (not to the shared .gitignore).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata as md
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".carry"
SHARED_DATA = REPO.parent / "shared" / "data"
RAY_VERSION = "2.60.0"
BUDGET_BYTES = 64 * 2**20  # what one `run` call may carry: tracked + untracked-not-ignored files + carried paths
DEFAULT_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                     "manylinux_2_24_x86_64", "manylinux1_x86_64")
SLIM_DROPPED = "ray/jars/ray_dist.jar and ray/dashboard/client/build/**/*.map"

# What the GPU image ('cuda') holds, as /work/.library/device/KINDS.md listed it (read 2026-11-17): the view that
# the CPU test and the dry run build from this venv is these and nothing else.
GPU_IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())

# Distributions the GPU check needs that GPU_IMAGE_PACKAGES lacks, each with why; kept minimal (found by running the
# check in the image view: tests/test_gpu_carry.py, `gpu_check.sh run --cpu`). Versions: this venv's.
MISSING: dict[str, str] = {
    "jsonschema": "ray core", "referencing": "jsonschema", "rpds-py": "referencing",
    "jsonschema-specifications": "jsonschema",
    "pydantic": "ray train, serve, dashboard; bertclf.serve", "pydantic-core": "pydantic",
    "annotated-types": "pydantic", "typing-inspection": "pydantic",
    "typing-extensions": "pydantic needs >=4.16; the image's version is unknown",
    "aiohttp-cors": "ray dashboard (Ray Train's placement-group cleaner polls the state API)",
    "opencensus": "ray dashboard", "opencensus-context": "opencensus",
    "opentelemetry-api": "ray dashboard, fastapi", "opentelemetry-sdk": "ray dashboard",
    "opentelemetry-semantic-conventions": "opentelemetry-sdk", "opentelemetry-exporter-prometheus": "ray dashboard",
    "opentelemetry-proto": "ray dashboard",
    "fastapi": "bertclf.serve, ray serve", "starlette": "fastapi, ray serve", "uvicorn": "ray serve's proxy",
    "grpcio-reflection": "ray serve (its gRPC proxy module is imported with serve)",
    "captum": "bertclf report (explanations of errors)", "wordcloud": "bertclf report (word clouds)",
}


def log(msg: str) -> None:
    print(f"[gpu_carry] {msg}", file=sys.stderr, flush=True)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def exclude_from_git(folder: str) -> None:
    """Ignore `folder` (e.g. /.carry/) through .git/info/exclude, which is this checkout's own, not the shared
    .gitignore; ignored folders travel only when a `run` call names them in carry."""
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--git-path", "info/exclude"], capture_output=True,
                         text=True, check=True).stdout.strip()
    exclude = (REPO / out).resolve()
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if folder not in lines:
        exclude.write_text("\n".join([*lines, folder]) + "\n")
        log(f"added {folder} to {exclude}")


# --- wheels -----------------------------------------------------------------------------------------------------

def record_hash(data: bytes) -> str:
    """A RECORD entry's hash: sha256, urlsafe base64 without padding (PEP 376 / the wheel spec)."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim_wheel(src: Path, dst: Path, drop: Callable[[str], bool]) -> list[str]:
    """Copy wheel `src` to `dst` without the members `drop` selects, RECORD rewritten to list exactly what is left
    (with each file's hash and size), so `pip install` neither misses files nor finds stray ones. Returns the
    dropped names. Raises ValueError naming the wheel when it has no RECORD or RECORD names a missing member."""
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        records = [n for n in names if n.endswith(".dist-info/RECORD") and n.count("/") == 1]
        if len(records) != 1:
            raise ValueError(f"{src}: expected one <name>.dist-info/RECORD, found {records or 'none'}")
        record = records[0]
        listed = {row[0] for row in csv.reader(io.StringIO(zin.read(record).decode())) if row}
        unlisted = sorted(set(names) - listed - {record})
        if unlisted:
            raise ValueError(f"{src}: RECORD does not list {unlisted[:5]}: not a wheel this script can slim")
        dropped = [n for n in names if n != record and drop(n)]
        kept = [n for n in names if n != record and n not in dropped]
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
            for name in kept:
                info = zin.getinfo(name)
                data = zin.read(name)
                zout.writestr(info, data, compress_type=info.compress_type)
                if not name.endswith("/"):
                    writer.writerow([name, record_hash(data), len(data)])
            writer.writerow([record, "", ""])
            zout.writestr(zin.getinfo(record), rows.getvalue().encode(), compress_type=zipfile.ZIP_DEFLATED)
        tmp.replace(dst)
    return dropped


def ray_drop(name: str) -> bool:
    """Members of the Ray wheel the GPU check never uses: the Java workers' jar and the dashboard's JS source maps."""
    return name == "ray/jars/ray_dist.jar" or (name.startswith("ray/dashboard/client/build/") and name.endswith(".map"))


def pip_download(specs: Iterable[str], dest: Path, python: str, platforms: Iterable[str]) -> None:
    """Wheels only, no dependencies (MISSING names each one), for `python` (e.g. 3.12) on x86-64 Linux."""
    args = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
            python, "--implementation", "cp", "-d", str(dest)]
    for p in platforms:
        args += ["--platform", p]
    result = subprocess.run([*args, *specs], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"pip download failed for {' '.join(specs)}:\n{result.stderr[-3000:]}")


def build_wheels(dest: Path, python: str, platforms: Iterable[str] = DEFAULT_PLATFORMS) -> list[Path]:
    """dest/: the slim Ray wheel and MISSING's wheels at this venv's versions, for `python` (3.12: the GPU image)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    raw = dest / "_download"
    pip_download([f"ray=={RAY_VERSION}"], raw, python, platforms)
    (ray_whl,) = raw.glob("ray-*.whl")
    slim = dest / ray_whl.name
    dropped = slim_wheel(ray_whl, slim, ray_drop)
    log(f"{ray_whl.name}: {ray_whl.stat().st_size / 1e6:.1f} MB -> {slim.stat().st_size / 1e6:.1f} MB "
        f"({len(dropped)} members dropped: {SLIM_DROPPED})")
    specs = []
    for name in MISSING:
        try:
            specs.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            raise SystemExit(f"{name} (MISSING) is not installed in {sys.prefix}: run cluster/install.sh") from None
    pip_download(specs, dest, python, platforms)
    shutil.rmtree(raw)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(MISSING) + 1:
        raise SystemExit(f"{dest}: expected {len(MISSING) + 1} wheels, found {len(wheels)}")
    return wheels


# --- model and data ---------------------------------------------------------------------------------------------

def export_model(dest: Path) -> Path:
    """The packaged all-MiniLM-L6-v2 (bertclf.model.modeling.packaged_model_dir) with float weights in bf16."""
    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(REPO))
    from bertclf.model.modeling import packaged_model_dir

    src = packaged_model_dir()
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "*.onnx", "onnx",
                                                             "openvino", "*.h5", "*.msgpack", "*.ot"))
    tensors = load_file(str(src / "model.safetensors"))
    bf16 = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(bf16, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "CARRIED.json").write_text(json.dumps({"source": str(src), "weights": "bf16 (rounded from fp32)"}) + "\n")
    return dest


def copy_data(dest: Path, source: Path = SHARED_DATA) -> Path:
    """GoEmotions train/validation/test (3.3 MB): training, its validation and the test split the report scores."""
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "goemotions").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        src = source / "goemotions" / f"{split}.parquet"
        if not src.is_file():
            raise SystemExit(f"GoEmotions {split} split not found at {src}")
        shutil.copy2(src, dest / "goemotions" / src.name)
    return dest


# --- the GPU image's packages out of a venv -----------------------------------------------------------------------

def image_view(site_packages: Path, dest: Path, packages: Iterable[str] = GPU_IMAGE_PACKAGES) -> list[str]:
    """dest/: symbolic links to the top-level modules and dist-info folders of those distributions in
    `site_packages` that the GPU image holds too, and to nothing else (no ray, no MISSING, no bertclf), so a fresh
    venv that adds dest/ to its path imports what the GPU machine imports. This venv's versions may need
    distributions the image's versions don't (huggingface-hub 2 needs httpx2): those requirements are linked too,
    except ray and MISSING, which must come from the carried wheels. Returns the distributions linked."""
    site_packages = site_packages.resolve()
    dists = {canonical(d.metadata["Name"] or ""): d for d in md.distributions(path=[str(site_packages)])}
    carried = {canonical(n) for n in MISSING} | {"ray"}
    wanted = ({canonical(p) for p in packages} & set(dists)) - carried
    todo = list(wanted)
    while todo:  # the closure over requirements without extras, as pip would have installed them
        for req in dists[todo.pop()].requires or []:
            if "extra ==" in req.replace("extra==", "extra =="):
                continue
            name = canonical(re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0])
            if name in dists and name not in wanted and name not in carried:
                wanted.add(name)
                todo.append(name)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in sorted(wanted):
        dist = dists[name]
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        tops.add(Path(dist._path).name)  # type: ignore[attr-defined]  # the dist-info folder itself
        for top in tops:
            src = site_packages / top
            if top.endswith(".pth") or top == "__pycache__" or not src.exists() or (dest / top).exists():
                continue
            (dest / top).symlink_to(src)
    return sorted(wanted)


# --- budget and plan ---------------------------------------------------------------------------------------------

def tree_bytes() -> int:
    """What travels with every run: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    return sum((REPO / n).stat().st_size for n in out.decode().split("\0") if n and (REPO / n).is_file())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


RUNS = [  # (run, carried folders, what it does)
    ("run 1 (install)", [".carry/wheels"],
     "bash cluster/gpu_check.sh install: pip install --no-index --no-deps --target .gpu/site the wheels, "
     "import check, nvidia-smi"),
    ("run 2 (check)", [".carry/model", ".carry/data"],
     "bash cluster/gpu_check.sh run: ray start, train, report, model-only rows/s, score 1,000,000 rows with "
     "GPU sampling, serve under load; .gpu/site from run 1 must still be there (call within ~30 s)"),
]


def plan() -> dict:
    """Sizes of each run's carry against BUDGET_BYTES; raises SystemExit when one is over."""
    tree = tree_bytes()
    runs = []
    for run, folders, what in RUNS:
        sizes = {f: folder_bytes(REPO / f) for f in folders}
        total = tree + sum(sizes.values())
        runs.append({"run": run, "carry": folders, "what": what, "folder_bytes": sizes, "tree_bytes": tree,
                     "total_bytes": total, "budget_bytes": BUDGET_BYTES, "fits": total <= BUDGET_BYTES})
    return {"tree_bytes": tree, "runs": runs}


def print_plan(result: dict) -> None:
    mib = 2**20
    print(f"tracked + untracked-not-ignored tree: {result['tree_bytes'] / mib:.2f} MiB (travels with every run)")
    for r in result["runs"]:
        parts = ", ".join(f"{f} {b / mib:.2f} MiB" for f, b in r["folder_bytes"].items())
        print(f"{r['run']}: carry {r['carry']} ({parts}); total {r['total_bytes'] / mib:.2f} of "
              f"{r['budget_bytes'] / mib:.0f} MiB {'OK' if r['fits'] else 'OVER BUDGET'}\n    {r['what']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build .carry/ (or --out) and print the plan")
    b.add_argument("--python", default="3.12", help="the Python the wheels are for (GPU image: 3.12)")
    b.add_argument("--platform", action="append", help=f"wheel platform tags (default: {DEFAULT_PLATFORMS})")
    b.add_argument("--only", choices=["wheels", "model", "data"], action="append", help="build only these")
    b.add_argument("--out", type=Path, default=CARRY, help="where to build (default .carry/)")
    v = sub.add_parser("view", help="link the GPU image's packages of a site-packages into DEST")
    v.add_argument("site_packages", type=Path)
    v.add_argument("dest", type=Path)
    sub.add_parser("plan", help="print the sizes and the plan")
    args = ap.parse_args(argv)

    if args.cmd == "view":
        linked = image_view(args.site_packages, args.dest)
        log(f"{args.dest}: {len(linked)} distributions of the GPU image linked from {args.site_packages}")
        return 0
    if args.cmd == "build":
        exclude_from_git("/.gpu/")  # what cluster/gpu_check.sh writes (installed wheels, run directories)
        if args.out.resolve() == CARRY.resolve():
            exclude_from_git("/.carry/")
        only = set(args.only or ["wheels", "model", "data"])
        if "wheels" in only:
            wheels = build_wheels(args.out / "wheels", args.python, args.platform or DEFAULT_PLATFORMS)
            log(f"{args.out / 'wheels'}: {len(wheels)} wheels, {folder_bytes(args.out / 'wheels') / 2**20:.2f} MiB")
        if "model" in only:
            export_model(args.out / "model")
            log(f"{args.out / 'model'}: {folder_bytes(args.out / 'model') / 2**20:.2f} MiB")
        if "data" in only:
            copy_data(args.out / "data")
            log(f"{args.out / 'data'}: {folder_bytes(args.out / 'data') / 2**20:.2f} MiB")
        if args.out.resolve() != CARRY.resolve():
            return 0
    result = plan()
    print_plan(result)
    return 0 if all(r["fits"] for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
