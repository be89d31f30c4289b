"""The online endpoint on a real local Ray Serve: answers equal `bertclf predict` and `bertclf score`, every bad
request gets its 4xx, and the replica keeps answering after them; a bad text fails only its own request, bodies
over the limit stop at it, and the bearer token is required where one is set."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from bertclf.config import ScoreConfig, ServeConfig
from bertclf.dev.ports import free_port
from bertclf.dev.synthetic import make_rows, write_rows
from bertclf.dev.tiny_model import save_tiny_checkpoint
from bertclf.errors import ConfigError
from bertclf.model.inference import predict_texts
from bertclf.scoring import run as score
from bertclf.serve import (
    TextFailed,
    auth_token,
    exposure_warning,
    max_body_bytes,
    parse_texts,
    predict_batch,
)

REPO = Path(__file__).resolve().parents[1]

TEXTS = ["happy glad day", "scared panic work", "angry mad hate furious", "", "the day"]
# the replicas read the token from their environment: set before this module's Ray starts, which they inherit
TOKEN_ENV = "BERTCLF_TEST_SERVE_TOKEN"
TOKEN = os.environ.setdefault(TOKEN_ENV, "tok-" + os.urandom(8).hex())
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _call(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json",
                                                              **(AUTH if headers is None else headers)},
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

    # a checkpoint that blends its TF-IDF baseline: serve, predict and score must all give the blend
    ckpt = save_tiny_checkpoint(tmp_path_factory.mktemp("serve_ckpt"), tiny_model, "multi_label", [0.45, 0.5, 0.55],
                                blend_weight=0.5)
    url = start(ServeConfig(checkpoint=str(ckpt), port=free_port(), precision="fp32", max_texts_per_request=8,
                            max_text_chars=200, auth_token_env=TOKEN_ENV))
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


def test_a_bad_text_fails_only_its_own_request_among_concurrent_valid_ones(endpoint):
    """Lone surrogates (which crash the tokenizer for a whole batch) sent amid valid requests from other clients:
    each bad request gets its 400, every valid one its 200."""
    url, _ = endpoint
    valid = [json.dumps({"texts": [r["text"]]}).encode() for r in make_rows(60, 7, True)]
    bad = [json.dumps({"texts": ["happy", "sad \ud800 day"]}).encode(), json.dumps({"texts": ["\udfff"]}).encode()]
    bodies = [b for i, v in enumerate(valid) for b in ([v, bad[i % 2]] if i % 6 == 0 else [v])]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda b: (b, *_call(f"{url}/predict", b)), bodies))
    bad_answers = [(status, body) for b, status, body in answers if b in bad]
    good_answers = [(status, body) for b, status, body in answers if b not in bad]
    assert len(bad_answers) == 10 and len(good_answers) == 60
    assert all(status == 400 and "is not valid Unicode" in body["error"] for status, body in bad_answers), bad_answers
    assert [status for status, _ in good_answers] == [200] * 60


def test_json_nested_deep_enough_to_exhaust_the_parser_is_a_400(endpoint):
    url, _ = endpoint
    depth = 5000  # far past the parser's recursion limit, inside this endpoint's body limit
    status, answer = _call(f"{url}/predict", b'{"texts": ' + b"[" * depth + b"]" * depth + b"}")
    assert status == 400 and "nested too deeply" in answer["error"]
    assert _call(f"{url}/predict", b'{"texts": ["happy"]}')[0] == 200


def _raw_post(url: str, head: list[str], chunks, timeout: float = 30) -> tuple[int, int, float]:
    """POST by hand: send the head, then body chunks until the server answers; (status, bytes sent, seconds)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sent, t0 = 0, time.monotonic()
    try:
        sock.sendall(("\r\n".join(["POST /predict HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {TOKEN}",
                                     "Content-Type: application/json", *head]) + "\r\n\r\n").encode())
        sock.setblocking(False)
        answer = b""
        for chunk in chunks:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            if answer or time.monotonic() - t0 > timeout:
                break
            try:
                sock.sendall(chunk)
                sent += len(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.002)
        sock.setblocking(True)
        while b"\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    finally:
        sock.close()
    return int(answer.split(b" ", 2)[1]), sent, time.monotonic() - t0


def test_a_body_over_the_limit_is_refused_from_its_content_length_before_it_is_sent(endpoint):
    url, _ = endpoint
    declared = 300 << 20  # 300 MB announced; only the first KB is ever sent
    status, sent, seconds = _raw_post(url, [f"Content-Length: {declared}"], iter(lambda: b"x" * 1024, None))
    assert status == 413 and sent < 4 << 20 and seconds < 20, (status, sent, seconds)


def test_a_streamed_body_stops_at_the_limit(endpoint):
    url, _ = endpoint
    limit = max_body_bytes(ServeConfig(max_texts_per_request=8, max_text_chars=200))
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"  # chunked transfer: no Content-Length to refuse up front
    status, sent, seconds = _raw_post(url, ["Transfer-Encoding: chunked"], (chunk for _ in range(20_000)))
    assert status == 413, status
    assert sent < 20_000 * len(chunk) / 10 and seconds < 20, f"{sent} bytes sent (limit {limit}) in {seconds:.1f}s"
    assert _call(f"{url}/predict", b'{"texts": ["happy"]}')[0] == 200


def _proxy_rss() -> int:
    """Resident bytes of Serve's HTTP proxy actor (the process whose uvicorn receives the bytes)."""
    import psutil
    import ray

    (proxy,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_PROXY_ACTOR" in a["name"]]
    handle = ray.get_actor(proxy["name"], namespace=proxy["namespace"])
    return psutil.Process(ray.get(handle.__ray_call__.remote(lambda self: os.getpid()))).memory_info().rss


def _flood(url: str, total: int, chunk_size: int = 1 << 16, timeout: float = 30) -> tuple[int | None, int]:
    """Send a chunked POST of `total` bytes as fast as the socket takes them, stopping when the server answers or
    closes; (status or None for a connection closed without an answer, bytes of body sent)."""
    import select

    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    chunk = f"{chunk_size:x}\r\n".encode() + b"x" * chunk_size + b"\r\n"
    sent, answer = 0, b""
    try:
        sock.sendall(("\r\n".join(["POST /predict HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {TOKEN}",
                                     "Content-Type: application/json", "Transfer-Encoding: chunked"])
                      + "\r\n\r\n").encode())
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # an answer (or a close) came before the body ended
            try:
                sock.sendall(chunk)
            except OSError:  # reset or broken pipe: the server closed the connection
                break
            sent += chunk_size
        else:
            with contextlib.suppress(OSError):
                sock.sendall(b"0\r\n\r\n")
        with contextlib.suppress(OSError):
            while b"\r\n" not in answer and (more := sock.recv(65536)):
                answer += more
    finally:
        sock.close()
    return (int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None), sent


def test_fast_chunked_bodies_over_the_limit_stop_at_the_proxy_whose_memory_stays_flat(endpoint):
    """Five chunked 50 MB bodies sent as fast as the socket allows: each is refused (413, or the connection closed)
    after little more than the limit, and Serve's proxy, which used to read each whole (+67 MB), stays flat."""
    url, _ = endpoint
    assert _call(f"{url}/predict", b'{"texts": ["happy"]}')[0] == 200
    before = _proxy_rss()
    answers = [_flood(url, 50 << 20) for _ in range(5)]
    grown = _proxy_rss() - before
    print(f"proxy RSS {before / 2**20:.1f} MB, +{grown / 2**20:.1f} MB; (status, bytes sent): {answers}")
    assert all(status in (413, None) and sent < 4 << 20 for status, sent in answers), answers
    assert grown < 8 << 20, f"the proxy grew by {grown / 2**20:.1f} MB over five 50 MB bodies"
    assert _call(f"{url}/predict", b'{"texts": ["happy"]}')[0] == 200


def test_the_proxy_body_limit_answers_413_itself_and_never_passes_more_than_the_limit():
    """BodyLimit (run in Serve's proxy) on its own: Content-Length over the limit never reaches the app; a chunked
    body is cut at the limit, the app sees a disconnect, and the client gets the 413 that closes the connection."""
    from bertclf.serve import BODY_LIMIT_ENV, BodyLimit, proxy_middlewares

    def run(headers, chunks):
        seen, sent = [], []

        async def app(scope, receive, send):
            while (message := await receive())["type"] == "http.request":
                seen.append(len(message["body"]))
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"app"})

        messages = iter([{"type": "http.request", "body": c, "more_body": True} for c in chunks])

        async def receive():
            return next(messages)

        async def send(message):
            sent.append(message)

        asyncio.run(BodyLimit(app, limit=100)({"type": "http", "headers": headers}, receive, send))
        head = dict(sent[0]["headers"])
        return seen, sent[0]["status"], head.get(b"connection"), json.loads(sent[1]["body"])["error"]

    seen, status, connection, error = run([(b"content-length", b"101")], [b"x" * 101])
    assert (seen, status, connection) == ([], 413, b"close") and "101 bytes; the limit is 100" in error
    seen, status, connection, error = run([(b"transfer-encoding", b"chunked")], [b"x" * 60] * 1000)
    assert (seen, status, connection) == ([60], 413, b"close") and BODY_LIMIT_ENV in error
    assert run([(b"content-length", b"ten")], [])[1] == 400
    os.environ[BODY_LIMIT_ENV] = "1234"
    try:
        assert proxy_middlewares()[0].kwargs == {"limit": 1234}
        os.environ[BODY_LIMIT_ENV] = "lots"
        with pytest.raises(ConfigError, match=f"{BODY_LIMIT_ENV}='lots'"):
            proxy_middlewares()
    finally:
        del os.environ[BODY_LIMIT_ENV]


def test_the_bearer_token_is_required_where_one_is_set(endpoint):
    url, _ = endpoint
    body = b'{"texts": ["happy"]}'
    assert _call(f"{url}/predict", body, headers={})[0] == 401
    assert _call(f"{url}/predict", body, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert _call(f"{url}/predict", body, headers={"Authorization": TOKEN})[0] == 401, "the scheme is required"
    assert _call(f"{url}/labels", headers={})[0] == 401
    assert _call(f"{url}/predict", body)[0] == 200
    status, health = _call(f"{url}/healthz", headers={})
    assert status == 200 and health == {"status": "ok"}, "without the token /healthz says only that it is up"


def test_a_batch_that_fails_is_scored_text_by_text_so_only_the_bad_text_fails():
    def predict(texts):
        if "boom" in texts:
            raise RuntimeError("tokenizer crashed")
        return [{"text": t} for t in texts]

    results = predict_batch(predict, ["a", "boom", "b"])
    assert results[0] == {"text": "a"} and results[2] == {"text": "b"}
    assert isinstance(results[1], TextFailed) and "tokenizer crashed" in results[1].message
    assert predict_batch(predict, ["a", "b"]) == [{"text": "a"}, {"text": "b"}]


def test_parse_errors_of_any_kind_are_400():
    cfg = ServeConfig()
    for body in (b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"\xff\xfe\x00garbage", b'{"texts": ["a"',
                 b"", b"\x80abc"):
        with pytest.raises(Exception) as info:
            parse_texts(body, cfg)
        assert getattr(info.value, "status", None) == 400, (body[:20], info.value)
    assert parse_texts(json.dumps({"texts": ["ok", "caf\u00e9"]}).encode(), cfg) == ["ok", "caf\u00e9"]


def test_start_up_warns_beyond_loopback_without_a_token_and_a_named_token_must_be_set(monkeypatch):
    assert exposure_warning(ServeConfig(host="127.0.0.1")) is None
    assert exposure_warning(ServeConfig(host="::1")) is None
    assert exposure_warning(ServeConfig(host="0.0.0.0", auth_token_env="X")) is None
    assert "anyone who can reach" in exposure_warning(ServeConfig(host="0.0.0.0"))
    assert "without authentication" in exposure_warning(ServeConfig(host="10.1.2.3"))
    monkeypatch.delenv("BERTCLF_TEST_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="BERTCLF_TEST_UNSET_TOKEN"):
        auth_token(ServeConfig(auth_token_env="BERTCLF_TEST_UNSET_TOKEN"))
    monkeypatch.setenv("BERTCLF_TEST_UNSET_TOKEN", "s3cr3t")
    assert auth_token(ServeConfig(auth_token_env="BERTCLF_TEST_UNSET_TOKEN")) == "s3cr3t"
    assert auth_token(ServeConfig()) is None


def test_health_and_labels(endpoint):
    url, _ = endpoint
    status, health = _call(f"{url}/healthz")
    assert status == 200 and health["status"] == "ok" and "checkpoint" in health
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
    from bertclf.serve import BODY_LIMIT_ENV, PROXY_CALLBACK_ENV, max_body_bytes

    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert not any("AWS_SECRET" in str(e) for e in container.get("env", [])), "no keys in manifests"
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert env[PROXY_CALLBACK_ENV] == "bertclf.serve:proxy_middlewares", "every node's proxy limits bodies"
            assert int(env[BODY_LIMIT_ENV]) == max_body_bytes(ServeConfig(**app["args"]))


def test_openapi_describes_the_request_and_response_bodies():
    """/docs and /openapi.json name the bodies (pydantic models), while /predict still checks its body itself."""
    from bertclf.serve import openapi_schema

    spec = openapi_schema()
    predict = spec["paths"]["/predict"]["post"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body["title"] == "PredictRequest" and body["required"] == ["texts"]
    assert body["properties"]["texts"] == {**body["properties"]["texts"], "type": "array", "items": {"type": "string"}}
    ref = lambda r: r["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]  # noqa: E731
    assert ref(predict["responses"]["200"]) == "PredictResponse"
    assert {code: ref(r) for code, r in predict["responses"].items() if code != "200"} == {
        c: "ErrorResponse" for c in ("400", "401", "413", "422", "500")}
    schemas = spec["components"]["schemas"]
    assert set(schemas["Prediction"]["properties"]) == {"predicted", "probabilities"}
    assert ref(spec["paths"]["/labels"]["get"]["responses"]["200"]) == "LabelsResponse"
    assert ref(spec["paths"]["/healthz"]["get"]["responses"]["200"]) == "HealthResponse"


def test_the_schema_declares_the_bearer_scheme_where_a_token_is_set():
    from bertclf.serve import openapi_schema

    spec = openapi_schema(with_token=True)
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        **spec["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    security = {path: op.get("security") for path, ops in spec["paths"].items() for op in ops.values()}
    assert security == {"/predict": [{"bearerAuth": []}], "/labels": [{"bearerAuth": []}],
                        "/healthz": [{}, {"bearerAuth": []}]}
    assert set(spec["paths"]) == {"/predict", "/labels", "/healthz"}, "the docs routes are not operations"
    open_spec = openapi_schema(with_token=False)
    assert "securitySchemes" not in open_spec["components"]
    assert not any("security" in op for ops in open_spec["paths"].values() for op in ops.values())


def test_openapi_is_served_by_the_endpoint(endpoint):
    url, _ = endpoint
    status, spec = _call(f"{url}/openapi.json")
    assert status == 200 and "PredictResponse" in spec["components"]["schemas"]
    assert spec["info"]["version"] != "0+unknown"
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


@pytest.mark.parametrize("path,marker", [("/openapi.json", b'"openapi"'), ("/docs", b"swagger-ui"),
                                         ("/redoc", b"redoc")])
def test_the_schema_and_its_viewers_need_the_token_where_one_is_set(endpoint, path, marker):
    url, _ = endpoint
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{url}{path}", headers=headers), timeout=60)
        assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == "Bearer"
    with urllib.request.urlopen(urllib.request.Request(f"{url}{path}", headers=AUTH), timeout=60) as answer:
        assert answer.status == 200 and marker in answer.read()


@pytest.mark.slow
def test_sigterm_stops_bertclf_serve_and_its_private_ray_whole(tiny_model, tmp_path):
    """`bertclf serve` on a private Ray, SIGTERM: it exits 0 and no process of that Ray is left (its DashboardAgent
    and RuntimeEnvAgent used to outlive it by 60-90 s; the driver aborted with -6)."""
    import signal
    import subprocess
    import sys

    import psutil

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", tiny_model, "multi_label", [0.5, 0.5, 0.5])
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bertclf.cli", "serve", "--checkpoint", str(ckpt), "--port",
                             str(port), "--set", "precision=fp32"], env=env, cwd=tmp_path,
                            stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            with contextlib.suppress(OSError, ValueError):  # refused, or not yet the app (plain-text 404)
                if _call(f"http://127.0.0.1:{port}/healthz", headers={})[0] == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        ray_procs = {p.pid: p.name() for p in psutil.Process(proc.pid).children(recursive=True)}
        assert {"raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= set(ray_procs.values()), ray_procs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        deadline = time.monotonic() + 10
        while (left := {pid: n for pid, n in ray_procs.items() if psutil.pid_exists(pid)
                        and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"left running 10 s after bertclf serve exited: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
