"""The online endpoint on a real local Ray Serve: answers equal `bertclf predict` and `bertclf score`, every bad
request gets its 4xx, and the replica keeps answering after them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, free_port, make_rows, save_tiny_checkpoint, write_rows

from bertclf.config import ScoreConfig, ServeConfig
from bertclf.inference import predict_texts
from bertclf.scoring import run as score

TEXTS = ["happy glad day", "scared panic work", "angry mad hate furious", "", "the day"]


def _call(url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def endpoint(ray_local, tiny_model, tmp_path_factory):
    from ray import serve

    from bertclf.serve import start

    ckpt = save_tiny_checkpoint(tmp_path_factory.mktemp("serve_ckpt"), tiny_model, "multi_label", [0.45, 0.5, 0.55])
    url = start(ServeConfig(checkpoint=str(ckpt), port=free_port(), precision="fp32", max_texts_per_request=8,
                            max_text_chars=200))
    yield url, ckpt
    serve.shutdown()


def test_predict_equals_bertclf_predict_and_score(endpoint, tmp_path):
    url, ckpt = endpoint
    status, body = _call(f"{url}/predict", json.dumps({"texts": TEXTS}).encode())
    assert status == 200 and len(body["predictions"]) == len(TEXTS), body
    expected = predict_texts(str(ckpt), TEXTS)
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["predicted"] == want["predicted"]
        np.testing.assert_allclose([got["probabilities"][k] for k in sorted(want["probabilities"])],
                                   [want["probabilities"][k] for k in sorted(want["probabilities"])], atol=1e-6)

    write_rows(tmp_path / "in.parquet", [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)])
    score(ScoreConfig(checkpoint=str(ckpt), input=str(tmp_path / "in.parquet"), output=str(tmp_path / "out"),
                      precision="fp32"))
    scored = pq.read_table(next(Path(tmp_path / "out").glob("*.parquet"))).to_pylist()
    for row in scored:
        got = body["predictions"][int(row["id"])]
        assert got["predicted"] == row["predicted"]
        for label, p in got["probabilities"].items():
            assert p == pytest.approx(row[f"prob_{label}"], abs=1e-6)


def test_many_concurrent_requests_are_all_answered(endpoint):
    from concurrent.futures import ThreadPoolExecutor

    url, _ = endpoint
    rows = make_rows(40, 5, True)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: _call(f"{url}/predict", json.dumps({"texts": [r["text"]]}).encode()), rows))
    assert all(status == 200 and len(body["predictions"]) == 1 for status, body in answers)


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 400, "not valid JSON"),
    (b'{"text": ["a"]}', 422, 'expected a JSON object {"texts"'),
    (b'["a"]', 422, 'expected a JSON object {"texts"'),
    (b'{"texts": "a"}', 422, '"texts" must be a list of strings, got str'),
    (b'{"texts": ["a", 3]}', 422, "texts[1] is int, not a string"),
    (b'{"texts": []}', 422, '"texts" is empty'),
    (json.dumps({"texts": ["a"] * 9}).encode(), 413, "9 texts in one request; the limit is 8"),
    (json.dumps({"texts": ["a", "b" * 201]}).encode(), 413, "texts[1] has 201 characters; the limit is 200"),
])
def test_bad_requests_get_their_4xx_and_the_replica_keeps_answering(endpoint, body, status, message):
    url, _ = endpoint
    got, answer = _call(f"{url}/predict", body)
    assert got == status and message in answer["error"]
    assert _call(f"{url}/predict", b'{"texts": ["happy"]}')[0] == 200


def test_health_and_labels(endpoint):
    url, _ = endpoint
    status, health = _call(f"{url}/healthz")
    assert status == 200 and health["status"] == "ok"
    status, labels = _call(f"{url}/labels")
    assert status == 200 and labels["labels"] == ["anger", "fear", "joy"] and labels["task"] == "multi_label"
    assert labels["thresholds"] == {"anger": 0.45, "fear": 0.5, "joy": 0.55}


def test_rayservice_manifest_has_what_kuberay_needs():
    docs = list(yaml.safe_load_all((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text()))
    service = next(d for d in docs if d and d.get("kind") == "RayService")
    assert service["apiVersion"] == "ray.io/v1"
    spec = service["spec"]
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["import_path"] == "bertclf.serve:build_app" and app["route_prefix"] == "/"
    assert app["args"]["checkpoint"].startswith("s3://")
    ServeConfig(**app["args"]).validate()
    cluster = spec["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"] is not None and cluster["workerGroupSpecs"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert not any("AWS_SECRET" in str(e) for e in container.get("env", [])), "no keys in manifests"
