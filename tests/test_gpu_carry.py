"""What the GPU check carries (cluster/gpu_carry.py, docs/gpu.md): the slimmed wheel's RECORD, the view of the GPU
image's packages, and (slow) the slim Ray wheel installed with --no-index into a fresh venv that sees only the GPU
image's packages, running a 2-worker Ray Train job and a Ray Data scoring run, so that no GPU time is spent finding
packaging errors."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

import pytest

from bertclf.dev.synthetic import make_rows, write_rows

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / "cluster"))
import gpu_carry  # noqa: E402


def sha(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(path: Path, files: dict[str, bytes], record_extra: list[str] = ()) -> Path:
    """A wheel zip for distribution `demo` 1.0 with `files`, RECORD listing each one with its hash."""
    info = "demo-1.0.dist-info"
    files = {**files, f"{info}/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    rows = [f"{name},{sha(data)},{len(data)}" for name, data in files.items()]
    rows += [*record_extra, f"{info}/RECORD,,"]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{info}/RECORD", "\n".join(rows) + "\n")
    return path


def test_slim_wheel_drops_members_and_rewrites_record(tmp_path):
    src = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", {
        "demo/__init__.py": b"VALUE = 1\n", "demo/big.jar": b"\0" * 5000, "demo/ui/main.js": b"let a = 1;\n",
        "demo/ui/main.js.map": b"{}" * 100})
    dst = tmp_path / "slim" / src.name
    dropped = gpu_carry.slim_wheel(src, dst, lambda n: n.endswith((".jar", ".map")))
    assert sorted(dropped) == ["demo/big.jar", "demo/ui/main.js.map"]
    with zipfile.ZipFile(dst) as z:
        names = set(z.namelist())
        rows = list(csv.reader(io.StringIO(z.read("demo-1.0.dist-info/RECORD").decode())))
        assert {r[0] for r in rows} == names  # RECORD lists exactly what the wheel holds
        for name, digest, size in rows:
            if name.endswith("RECORD"):
                assert digest == size == ""
            else:
                assert digest == sha(z.read(name)) and int(size) == len(z.read(name))
    # pip takes it (it reads RECORD to install and to uninstall)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    str(dst)], check=True)
    assert (target / "demo" / "ui" / "main.js").exists() and not (target / "demo" / "big.jar").exists()


def test_slim_wheel_refuses_a_wheel_whose_record_is_incomplete(tmp_path):
    src = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", {"demo/__init__.py": b""})
    with zipfile.ZipFile(src, "a") as z:
        z.writestr("demo/stray.py", b"")  # a member RECORD does not name
    with pytest.raises(ValueError, match=r"demo-1.0-py3-none-any.whl: RECORD does not list \['demo/stray.py'\]"):
        gpu_carry.slim_wheel(src, tmp_path / "out.whl", lambda n: False)


def test_ray_drop_takes_only_the_jar_and_the_dashboard_source_maps():
    assert gpu_carry.ray_drop("ray/jars/ray_dist.jar")
    assert gpu_carry.ray_drop("ray/dashboard/client/build/static/js/main.84605326.js.map")
    assert not gpu_carry.ray_drop("ray/dashboard/client/build/static/js/main.84605326.js")
    assert not gpu_carry.ray_drop("ray/_raylet.so")
    assert not gpu_carry.ray_drop("ray/core/src/ray/gcs/gcs_server")


def fake_dist(site: Path, name: str, requires: list[str] = ()) -> None:
    module = name.replace("-", "_")
    (site / module).mkdir()
    (site / module / "__init__.py").write_text("")
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    (info / "RECORD").write_text(f"{module}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def test_image_view_links_the_image_packages_and_their_requirements_but_never_ray_or_the_carried_ones(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    fake_dist(site, "numpy", ["helper-lib>=1", "pydantic; python_version >= '3'", "extra-only; extra == 'x'"])
    for name in ("helper-lib", "pydantic", "extra-only", "ray", "bertclf"):
        fake_dist(site, name)
    linked = gpu_carry.image_view(site, tmp_path / "view", ["numpy", "ray"])
    assert linked == ["helper-lib", "numpy"]
    view = {p.name for p in (tmp_path / "view").iterdir()}
    assert view == {"numpy", "numpy-1.0.dist-info", "helper_lib", "helper_lib-1.0.dist-info"}
    assert (tmp_path / "view" / "numpy").resolve() == (site / "numpy").resolve()


def test_missing_names_no_package_the_image_already_has():
    image = {gpu_carry.canonical(p) for p in gpu_carry.GPU_IMAGE_PACKAGES}
    assert {gpu_carry.canonical(m) for m in gpu_carry.MISSING} & image == {"typing-extensions"}  # for its version


@pytest.mark.slow  # downloads 24 wheels, a fresh venv, a 2-worker training and a scoring run: about 3 min on 2 cores
def test_slim_ray_wheel_trains_and_scores_in_a_fresh_venv(tiny_model):
    work = Path(tempfile.mkdtemp(prefix="slimray-"))  # short: Ray's socket paths must stay under 107 characters
    try:
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        wheels = gpu_carry.build_wheels(work / "wheels", python)
        ray_wheel = next(w for w in wheels if w.name.startswith("ray-"))
        with zipfile.ZipFile(ray_wheel) as z:
            assert "ray/jars/ray_dist.jar" not in z.namelist()
        assert ray_wheel.stat().st_size < 50e6

        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
        venv_python = work / "venv" / "bin" / "python"
        venv_site = Path(subprocess.run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_path("
                                         "'purelib'))"], capture_output=True, text=True, check=True).stdout.strip())
        gpu_carry.image_view(Path(sysconfig.get_path("purelib")), work / "view")  # what the GPU image would hold
        (venv_site / "gpu_image.pth").write_text(f"{work / 'view'}\n")
        subprocess.run([str(venv_python), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        *map(str, wheels)], check=True)

        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "VIRTUAL_ENV", "PYTHONPATH"))}
        env |= {"PYTHONPATH": str(REPO), "RAY_TMPDIR": str(work / "t"), "RAY_AUTH_MODE": "disabled",
                "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        (work / "t").mkdir()  # no `ray start` record in there: each command starts a private Ray

        def py(*args: str, timeout: float = 600) -> str:
            done = subprocess.run([str(venv_python), *args], env=env, cwd=work, capture_output=True, text=True,
                                  timeout=timeout)
            assert done.returncode == 0, f"{args[:3]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n" \
                                         f"{done.stderr[-6000:]}"
            return done.stdout

        where = json.loads(py("-c", "import json, ray; ray.init(num_cpus=1, include_dashboard=False); "
                                    "f = ray.remote(lambda: __import__('ray').__file__); "
                                    "print(json.dumps([ray.__file__, ray.get(f.remote())])); ray.shutdown()")
                           .strip().splitlines()[-1])
        for path in where:  # the driver's and a worker's ray: the slim wheel in the venv, never this venv's
            assert Path(path).resolve().is_relative_to(venv_site.resolve()), where

        write_rows(work / "train.parquet", make_rows(96, 1, True))
        write_rows(work / "validation.parquet", make_rows(32, 2, True))
        write_rows(work / "corpus.parquet", make_rows(300, 3, True), row_group_size=100)
        py("-m", "bertclf.cli", "train", "--train", str(work / "train.parquet"), "--validation",
           str(work / "validation.parquet"), "--model", str(tiny_model), "--output", str(work / "run"),
           "--epochs", "1", "--num-workers", "2", "--max-length", "32", "--batch-size", "16")
        assert json.loads((work / "run" / "best" / "bertclf.json").read_text())["epoch"] == 1
        py("-m", "bertclf.cli", "score", "--checkpoint", str(work / "run" / "best"), "--input",
           str(work / "corpus.parquet"), "--output", str(work / "scores"))
        manifest = json.loads((work / "scores" / "_manifest.json").read_text())
        assert manifest["rows_out"] == 300 and (work / "scores" / "_SUCCESS").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)
