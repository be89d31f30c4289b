"""Static checks of the cluster configs under cluster/: they parse, point at scripts that exist, ask for
GPUs where they should, carry no AWS keys; and cluster/local.py has a usage message, never runs a bare `ray stop`
and stops only the processes it is given. Fast, starts no Ray, no moto, no cloud calls (only a few `sleep`s)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
LOCAL_PY = CLUSTER / "local.py"
YAML_FILES = sorted(CLUSTER.rglob("*.yaml"))
JOB_SCRIPT = re.compile(r"(?:^|/)(jobs/[\w-]+\.py)$")
CRON_FIELD = r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kind(path: Path, kind: str) -> dict:
    found = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def _pod_specs(obj: dict) -> list[dict]:
    """Every pod spec inside a RayCluster / RayJob / CronJob (head, worker groups, job template)."""
    specs = []
    if obj["kind"] == "CronJob":
        specs.append(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        return specs
    cluster = obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]
    specs.append(cluster["headGroupSpec"]["template"]["spec"])
    specs += [g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])]
    return specs


def _job_scripts(argv: list[str]) -> list[str]:
    return [m.group(1) for a in argv if (m := JOB_SCRIPT.search(a))]


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return _kind(KUBERAY / "raycluster.yaml", "RayCluster")


@pytest.fixture(scope="module")
def cronjob() -> dict:
    return _kind(KUBERAY / "nightly-cronjob.yaml", "CronJob")


# ---------------------------------------------------------------------------------------- all YAML ----

@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_no_aws_key_material(path):
    text = path.read_text().lower()
    for needle in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "akia"):
        assert needle not in text, f"{path.name} mentions {needle!r}: use instance profiles / IRSA"


# --------------------------------------------------------------------------------------- aws.yaml ----

def test_aws_head_node_type(aws):
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]
    assert "InstanceType" in head["node_config"]
    assert head.get("max_workers", 0) == 0
    assert any("ray start --head" in " ".join(c.split()) for c in aws["head_start_ray_commands"])


def test_aws_gpu_worker_type_autoscales(aws):
    workers = {name: t for name, t in aws["available_node_types"].items() if name != aws["head_node_type"]}
    gpu = [t for t in workers.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu, "no worker node type with GPU resources"
    assert all(t["max_workers"] >= 1 and t.get("min_workers", 0) <= t["max_workers"] for t in gpu)
    assert aws["max_workers"] >= max(t["max_workers"] for t in gpu)


def test_aws_nodes_run_the_cuda_bertclf_image(aws):
    """CUDA torch and the packaged model come with the image (its CUDA build: tests/test_container.py checks the
    build); setup only lays the synced checkout over it, without touching the image's pins."""
    spec = importlib.util.spec_from_file_location("cluster_image", CLUSTER / "image.py")
    image = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image)
    assert aws["docker"]["image"] == image.name(gpu=True)
    cmd = " ".join(image.build_command(gpu=True))
    assert re.search(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", cmd) and "RAY_VARIANT=-gpu" in cmd
    assert all("--no-deps" in c for c in aws["setup_commands"] if "pip install" in c)


def test_aws_nodes_use_instance_profiles(aws):
    for name, t in aws["available_node_types"].items():
        arn = t["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert arn.startswith("arn:aws:iam::"), f"{name}: S3 access must come from an instance profile"


def test_aws_config_passes_ray_schema(aws):
    """The cluster launcher's own JSON schema (ships with ray), so `ray up` won't reject the file."""
    import json

    jsonschema = pytest.importorskip("jsonschema")
    ray_autoscaler = pytest.importorskip("ray.autoscaler")
    schema = json.loads((Path(ray_autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(aws, schema)


def test_aws_file_mount_is_the_repo(aws):
    assert "." in aws["file_mounts"].values()
    setup = "\n".join(aws["setup_commands"])
    assert any(remote in setup for remote in aws["file_mounts"]), "setup_commands should install the repo"


# -------------------------------------------------------------------------------------- runtime env ----

def test_runtime_env():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    for needed in (".venv", ".git"):
        assert needed in env["excludes"]


def test_runtime_env_keeps_packaged_sample_data():
    """Excluding local *.parquet outputs must not drop bertclf/sample_data (the default inputs)."""
    pathspec = pytest.importorskip("ray._private.thirdparty.pathspec")
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    spec = pathspec.PathSpec.from_lines("gitwildmatch", env["excludes"])
    assert not spec.match_file("bertclf/sample_data/goemotions_train.parquet")
    assert not spec.match_file("jobs/train.py")
    assert spec.match_file("scores/part-0.parquet")
    assert spec.match_file(".venv")


# --------------------------------------------------------------------------------------------- kuberay ----

def test_raycluster_gpu_worker_group(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    groups = raycluster["spec"]["workerGroupSpecs"]
    gpu_groups = [
        g for g in groups
        for c in g["template"]["spec"]["containers"]
        if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
        and "nvidia.com/gpu" in c.get("resources", {}).get("requests", {})
    ]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    assert all(g["maxReplicas"] >= 1 for g in gpu_groups)


def test_raycluster_has_irsa_service_account(raycluster):
    sa = _kind(KUBERAY / "raycluster.yaml", "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for spec in _pod_specs(raycluster):
        assert spec["serviceAccountName"] == sa["metadata"]["name"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-train.yaml", "rayjob-score.yaml",
                                  "nightly-cronjob.yaml"])
def test_every_container_has_an_image(name):
    for doc in _docs(KUBERAY / name):
        if doc["kind"] not in ("RayCluster", "RayJob", "CronJob"):
            continue
        for spec in _pod_specs(doc):
            for c in spec["containers"] + spec.get("initContainers", []):
                assert isinstance(c.get("image"), str) and c["image"].strip(), f"{name}: {c.get('name')}"


@pytest.mark.parametrize("name,script", [("rayjob-train.yaml", "jobs/train.py"),
                                         ("rayjob-score.yaml", "jobs/score.py")])
def test_rayjob(name, script):
    job = _kind(KUBERAY / name, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and _job_scripts(argv) == [script]
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    assert runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert "AWS_REGION" in runtime_env["env_vars"]
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert any("nvidia.com/gpu" in c["resources"]["limits"]
               for g in groups for c in g["template"]["spec"]["containers"])


def test_rayjob_score_uses_date_placeholders():
    job = _kind(KUBERAY / "rayjob-score.yaml", "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    for flag in ("--checkpoint", "--input", "--output"):
        assert flag in argv
    assert "{date}" in argv[argv.index("--input") + 1] and "{date}" in argv[argv.index("--output") + 1]


def test_cronjob(cronjob):
    assert cronjob["apiVersion"] == "batch/v1"
    fields = cronjob["spec"]["schedule"].split()
    assert len(fields) == 5 and all(re.fullmatch(CRON_FIELD, f) for f in fields), cronjob["spec"]["schedule"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    script = " ".join(pod["containers"][0].get("command", []) + pod["containers"][0].get("args", []))
    assert "ray job submit" in script and "--address" in script
    assert "--no-wait" not in script, "the CronJob must wait so its exit code reflects the Ray job"
    assert _job_scripts(shlex.split(script, comments=True)) == ["jobs/score.py"]


# ----------------------------------------------------------- entrypoints point at scripts in the repo ----

def _all_entrypoint_scripts() -> list[tuple[str, str]]:
    found = []
    for name in ("rayjob-train.yaml", "rayjob-score.yaml"):
        for s in _job_scripts(shlex.split(_kind(KUBERAY / name, "RayJob")["spec"]["entrypoint"])):
            found.append((name, s))
    cron = _kind(KUBERAY / "nightly-cronjob.yaml", "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(container.get("command", []) + container.get("args", []))
    found += [("nightly-cronjob.yaml", s) for s in _job_scripts(shlex.split(script, comments=True))]
    return found


def test_entrypoints_found():
    scripts = {s for _, s in _all_entrypoint_scripts()}
    assert scripts == {"jobs/train.py", "jobs/score.py"}


@pytest.mark.parametrize("config,script", _all_entrypoint_scripts(), ids=lambda v: str(v))
def test_jobs_entrypoint_script_exists(config, script):
    """The scripts the cluster configs run exist in the repo (jobs/train.py, jobs/score.py)."""
    assert (ROOT / script).is_file(), f"{config} runs {script}, which is not in the repo"


def test_jobs_config_referenced_by_train_job_exists():
    argv = shlex.split(_kind(KUBERAY / "rayjob-train.yaml", "RayJob")["spec"]["entrypoint"])
    config = argv[argv.index("--config") + 1]
    assert (ROOT / config).is_file(), f"rayjob-train.yaml uses {config}, which is not in the repo"


# ------------------------------------------------------------------------------------------ local.py ----

def _local_py():
    spec = importlib.util.spec_from_file_location("cluster_local", LOCAL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args", [[], ["bogus"], ["up", "extra"]], ids=["none", "unknown", "too-many"])
def test_local_py_usage(args):
    r = subprocess.run([sys.executable, str(LOCAL_PY), *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "usage" in r.stderr.lower() and "up|down|status" in r.stderr
    assert r.stdout == ""


def test_local_py_never_runs_a_bare_ray_stop():
    """`ray stop` kills every Ray on the machine; down must only stop the processes that up started: no "stop"
    word in any command, no pkill/killall, and signals sent from stop_pids only."""
    tree = ast.parse(LOCAL_PY.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef))
                  and ast.get_docstring(n) is not None}
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
               and id(n) not in docstrings]
    assert not any(s.strip() == "stop" or re.search(r"\bray\s+stop\b|\b(pkill|killall)\b", s) for s in strings)
    killers = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)
               if isinstance(n, ast.Attribute) and n.attr in ("kill", "killpg", "terminate", "send_signal")}
    assert killers == {"stop_pids"}


def test_stop_pids_stops_the_given_tree_and_nothing_else():
    """A parent whose child ignores SIGTERM (so SIGKILL after the grace period), next to a sibling that must live."""
    local = _local_py()
    child_code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    parent_code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
                   "stdout=subprocess.PIPE); c.stdout.readline(); print(c.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", parent_code, child_code], stdout=subprocess.PIPE, text=True)
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child = None
    try:
        child = int(parent.stdout.readline())
        local.stop_pids([parent.pid], grace_s=1)
        assert parent.wait(timeout=5) != 0
        assert not local.pid_alive(child)
        assert sibling.poll() is None and local.pid_alive(sibling.pid)
    finally:
        for proc in (parent, sibling):
            proc.kill()
            proc.wait()
        if child and local.pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_ray_pids_match_the_temp_dir_exactly(tmp_path):
    local = _local_py()
    d = tmp_path / "ray-x"
    argvs = {"ours": [f"--temp-dir={d}"], "session": [f"--logs-dir={d}/session_1/logs"],
             "prefix": [f"--temp-dir={d}2"], "inside": [f"--temp-dir={d}/ray"], "parent": [f"--temp-dir={tmp_path}"]}
    procs = {k: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *a]) for k, a in argvs.items()}
    try:
        for _ in range(100):  # until every child has exec'd python with its argv
            table = local._procs()
            if all(argvs[k][0] in table.get(p.pid, (0, []))[1] for k, p in procs.items()):
                break
            time.sleep(0.1)
        assert local.ray_pids(d) == {procs["ours"].pid, procs["session"].pid}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_pick_ports_fails_on_a_taken_port_and_moves_a_taken_default(monkeypatch):
    local = _local_py()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setitem(local.PORTS, "S3_PORT", taken)
        monkeypatch.delenv("S3_PORT", raising=False)
        assert local.pick_ports(["S3_PORT"])["S3_PORT"] != taken
        monkeypatch.setenv("S3_PORT", str(taken))
        with pytest.raises(SystemExit, match=f"port {taken} \\(S3_PORT\\) is already in use"):
            local.pick_ports(["S3_PORT"])
