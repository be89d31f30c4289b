"""Shared fixtures: a tiny random BERT, a real S3 server (moto) and a real local Ray, all on 127.0.0.1."""

from __future__ import annotations

import os
import random
import sys
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")  # a deadlock fails in 5 min, not 30
# compiled graphs of the tests' random models go to a cache of this session, not the user's (Ray workers inherit it)
os.environ.setdefault("BERTCLF_COMPILE_CACHE", tempfile.mkdtemp(prefix="bertclf-compiled-"))

REPO = Path(__file__).resolve().parents[1]
LABEL_WORDS = {
    "joy": ["happy", "glad", "smile", "great", "love"],
    "anger": ["angry", "mad", "hate", "furious", "rage"],
    "fear": ["scared", "afraid", "panic", "worry", "dread"],
}
FILLER = ["the", "a", "day", "was", "it", "and", "so", "very", "today", "my", "friend", "work", "home"]


sys.path.insert(0, str(REPO / "cluster"))  # cluster/local.py picks ports and starts moto for `local.py up` and us
from local import free_port, start_moto, wait_for_port  # noqa: E402


@pytest.fixture(autouse=True)
def _process_settings_restored():
    """`bertclf.cli.main` exports --log-level and --progress-seconds to the environment and configures logging for
    the process (as a CLI should); in-process CLI tests must not hand either to the tests after them."""
    import logging

    names = ("BERTCLF_LOG_LEVEL", "BERTCLF_PROGRESS_SECONDS")
    saved_env = {n: os.environ.get(n) for n in names}
    root, ours = logging.getLogger(), logging.getLogger("bertclf")
    saved_logging = (root.level, list(root.handlers), ours.level)
    yield
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    root.setLevel(saved_logging[0])
    root.handlers[:] = saved_logging[1]
    ours.setLevel(saved_logging[2])


def make_rows(n: int, seed: int, multi_label: bool) -> list[dict]:
    """Synthetic labelled texts whose words predict their labels, so a tiny model can learn something."""
    rng = random.Random(seed)
    names = list(LABEL_WORDS)
    rows = []
    for i in range(n):
        labels = rng.sample(names, rng.choice([1, 1, 2])) if multi_label else [rng.choice(names)]
        words = [rng.choice(LABEL_WORDS[lab]) for lab in labels for _ in range(2)] + rng.sample(FILLER, 4)
        rng.shuffle(words)
        rows.append({"id": f"r{seed}-{i}", "text": " ".join(words),
                     **({"labels": sorted(labels)} if multi_label else {"label": labels[0]})})
    return rows


def write_rows(path: Path | str, rows: list[dict], row_group_size: int | None = None) -> None:
    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=row_group_size)


def read_scores(output: str | Path) -> pa.Table:
    """A scoring output's parts (local or s3://) as one table sorted by id; `_reuse/`, the manifest and the
    success marker are not parts."""
    import pyarrow.dataset as pads

    from bertclf import storage

    fs, path = storage.resolve(str(output))
    files = sorted(f for f in storage.list_names(str(output)) if f.endswith(".parquet"))
    return pads.dataset([f"{path}/{f}" for f in files], filesystem=fs, format="parquet").to_table().sort_by("id")


def build_tiny_bert(directory: Path, extra_words: tuple[str, ...] = ()) -> Path:
    """A random 2-layer BERT (hidden 32) and a WordPiece vocab covering the synthetic words."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = sorted({w for ws in LABEL_WORDS.values() for w in ws} | set(FILLER) | set(extra_words))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + words + list("abcdefghijklmnopqrstuvwxyz"))}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)  # vocab=, not vocab_file= (transformers 5)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertForSequenceClassification(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_checkpoint(directory: Path, tiny_model: Path, task: str, thresholds: list[float] | None = None,
                         blend_weight: float | None = None) -> Path:
    """A bertclf checkpoint of the tiny BERT with a fresh head over the three synthetic labels; with
    `blend_weight`, also a TF-IDF baseline fitted on synthetic rows and blended in at that transformer weight."""
    from bertclf import adapters, baseline
    from bertclf.labels import LabelSpace, encode_targets
    from bertclf.modeling import build_classifier, load_tokenizer
    from bertclf.records import BlendChoice, CheckpointMeta

    space = LabelSpace(task, sorted(LABEL_WORDS), thresholds or [])
    fitted, blend = None, None
    if blend_weight is not None:
        multi = task == "multi_label"
        table = pa.Table.from_pylist(make_rows(200, seed=11, multi_label=multi))
        targets = encode_targets(table, space, "list" if multi else "single", "labels" if multi else "label", [])
        texts = table["text"].to_pylist()
        fitted = baseline.fit(space, texts[:150], targets[:150], texts[150:], targets[150:], "f1_macro",
                              c_grid=(4.0,))
        blend = BlendChoice(mode="on", used=True, weight=blend_weight, best_weight=blend_weight, metric="f1_macro",
                            transformer=0.5, baseline=0.9, blended=0.9, margin=0.005, reason="test")
    adapters.save_model_dir(directory, build_classifier(str(tiny_model), space), load_tokenizer(str(tiny_model)),
                            CheckpointMeta(labels=space, max_length=32, epoch=1, blend=blend), fitted)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1, configured through the standard AWS variables."""
    port = free_port()
    proc = start_moto(port, Path(os.environ.get("TMPDIR", "/tmp")) / f"moto-{port}.log")
    if not wait_for_port(port, 30, proc):
        proc.kill()
        raise RuntimeError("moto server did not start")
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh bucket for one test."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def ray_local(s3_server, tmp_path_factory):
    """A real local Ray (2 CPUs, like this machine) whose workers get the S3 settings and the fault hooks.

    Faults are injected from the test side (tests/faults.py, installed in every worker process by
    runtime_env's worker_process_setup_hook); the yielded directory holds their control files.
    """
    import faults
    import ray

    from bertclf.resources import connect

    control = tmp_path_factory.mktemp("faults")
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                                      "HF_HUB_OFFLINE")}
    env |= {faults.KILL_WORKER: str(control / "kill_worker"), faults.FAIL_UNIT: str(control / "fail_unit"),
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": env, "worker_process_setup_hook": "faults.install"})
    connect()
    yield control
    ray.shutdown()


INTEGRATION_FIXTURES = {"ray_local", "s3_server", "bucket"}


def pytest_collection_modifyitems(config, items):
    """Tests that use a real Ray or S3 server (through a fixture, or marked by their module) are `integration`;
    the rest are unit tests: `pytest -m "not integration"` is the fast loop."""
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
