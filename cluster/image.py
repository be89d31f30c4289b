"""The bertclf image's name in one place: build it, print it, or move every manifest to another registry.

    python cluster/image.py name [--gpu]              # ghcr.io/your-org/bertclf:0.1.0[-gpu]
    python cluster/image.py build [--gpu] [--push]    # BUILDER=docker|podman|buildah (default: docker)
    python cluster/image.py set-registry REGISTRY     # cluster/image.env and every manifest under cluster/

The registry comes from cluster/image.env, the tag from pyproject.toml's version; `--gpu` is the CUDA build
(Ray's -gpu base, CUDA torch) that the GPU clusters run. Standard library only: runs before anything is installed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
IMAGE_ENV = CLUSTER / "image.env"
DOCKERFILE = CLUSTER / "Dockerfile"
CUDA_TORCH_INDEX = "https://download.pytorch.org/whl/cu128"
# every file that names the image: the manifests, the cluster launcher config and the Dockerfile's own comment
NAMED_IN = ("kuberay/*.yaml", "aws.yaml", "Dockerfile")


def registry() -> str:
    """BERTCLF_REGISTRY from cluster/image.env."""
    for line in IMAGE_ENV.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "BERTCLF_REGISTRY":
            return value.strip().rstrip("/")
    raise SystemExit(f"{IMAGE_ENV}: no BERTCLF_REGISTRY=... line")


def version() -> str:
    """pyproject.toml's version (a regex: tomllib is not in Python 3.10)."""
    found = re.search(r'(?m)^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text())
    if not found:
        raise SystemExit("pyproject.toml: no version = \"...\" line")
    return found.group(1)


def name(gpu: bool = False, reg: str | None = None) -> str:
    """The image reference: <registry>/bertclf:<version>[-gpu]."""
    return f"{reg or registry()}/bertclf:{version()}{'-gpu' if gpu else ''}"


def image_pattern(reg: str) -> re.Pattern:
    """Any bertclf image of this registry, CPU or GPU, at any tag."""
    return re.compile(re.escape(reg) + r"/bertclf:[\w.+-]+")


def build_command(gpu: bool, builder: str = "docker") -> list[str]:
    """The build command line for the CPU or CUDA image, run from the repository root."""
    cmd = [builder, "build" if builder != "buildah" else "bud", "-f", str(DOCKERFILE.relative_to(ROOT)),
           "-t", name(gpu)]
    if gpu:
        cmd += ["--build-arg", "RAY_VARIANT=-gpu", "--build-arg", f"TORCH_INDEX_URL={CUDA_TORCH_INDEX}"]
    return [*cmd, "."]


def set_registry(new: str) -> list[Path]:
    """Point image.env and every file in NAMED_IN at `new`; returns the files changed."""
    new = new.rstrip("/")
    if not re.fullmatch(r"[\w.:-]+(/[\w.-]+)*", new):
        raise SystemExit(f"{new!r} does not look like a registry path (e.g. 123456789012.dkr.ecr.us-west-2."
                         "amazonaws.com/ml)")
    old = registry()
    changed = []
    for path in [IMAGE_ENV, *(p for pattern in NAMED_IN for p in sorted(CLUSTER.glob(pattern)))]:
        text = path.read_text()
        if path == IMAGE_ENV:
            updated = re.sub(r"(?m)^BERTCLF_REGISTRY=.*$", f"BERTCLF_REGISTRY={new}", text)
        else:
            updated = image_pattern(old).sub(lambda m: new + m.group(0)[len(old):], text)
        if updated != text:
            path.write_text(updated)
            changed.append(path)
    return changed


def main(argv: list[str]) -> int:
    usage = "usage: python cluster/image.py name [--gpu] | build [--gpu] [--push] | set-registry REGISTRY"
    if not argv or argv[0] not in ("name", "build", "set-registry"):
        print(usage, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "set-registry":
        if len(rest) != 1:
            print(usage, file=sys.stderr)
            return 2
        for path in set_registry(rest[0]):
            print(f"updated {path.relative_to(ROOT)}")
        return 0
    unknown = set(rest) - {"--gpu", "--push"}
    if unknown or (command == "name" and "--push" in rest):
        print(usage, file=sys.stderr)
        return 2
    gpu = "--gpu" in rest
    if command == "name":
        print(name(gpu))
        return 0
    builder = os.environ.get("BUILDER", "docker")
    cmd = build_command(gpu, builder)
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    if "--push" in rest:
        subprocess.run([builder, "push", name(gpu)], cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
