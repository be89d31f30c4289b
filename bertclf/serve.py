"""`bertclf serve`: an online endpoint beside the nightly batch, with Ray Serve.

POST /predict {"texts": [...]} -> each text's predicted labels and per-label probabilities, computed by the same
`Predictor` as `bertclf predict` and the scoring actors. Texts from concurrent requests are batched together
(`serve.batch`) and each batch runs length-sorted, token-budget micro-batches. Bad requests get a 4xx with a
message and never reach the model; GET /healthz and GET /labels answer without it.

One client can't fail another's request: each text is checked (a string, within the limits, encodable as UTF-8)
before it joins a batch, a batch that still fails is scored again text by text so only the request holding the
failing text fails, the body limit holds from Content-Length and while reading, and any JSON that doesn't parse
(including nesting deep enough to exhaust the parser) is a 400. With `auth_token_env` every request but a bare
/healthz must send `Authorization: Bearer <token>`; the token is read from that environment variable where the
replicas run, never from a flag or a config.

For KubeRay's RayService (cluster/kuberay/rayservice.yaml): `import_path: bertclf.serve:build_app`.
"""

# no `from __future__ import annotations` here: FastAPI reads the endpoint annotations (Request) at runtime
import asyncio
import copy
import dataclasses
import hmac
import ipaddress
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from starlette.requests import ClientDisconnect

from bertclf import __version__, logs
from bertclf.config import ServeConfig, load_config
from bertclf.errors import ConfigError, unicode_problem

log = logging.getLogger(__name__)

APP_NAME = "bertclf"


# FastAPI's own /docs, /redoc and /openapi.json would answer anyone: the replica serves them itself, behind the
# token when one is set (Classifier.openapi_json, .docs, .redoc).
api = FastAPI(title="bertclf", description="labels and per-label probabilities for texts", version=__version__,
              docs_url=None, redoc_url=None, openapi_url=None)

# The bearer scheme, declared in the schema: required on /predict and /labels, optional on /healthz (more with it).
BEARER = "bearerAuth"
BEARER_SCHEME = {"type": "http", "scheme": "bearer",
                 "description": "Authorization: Bearer <token>, where the endpoint was started with --auth-token-env"}
TOKEN_REQUIRED = {"security": [{BEARER: []}]}
TOKEN_OPTIONAL = {"security": [{}, {BEARER: []}]}


def openapi_schema(with_token: bool = True) -> dict:
    """The OpenAPI schema: with the bearer scheme and each operation's requirement where a token is set, without
    either where none is (what that replica enforces)."""
    schema = copy.deepcopy(api.openapi())
    if with_token:
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER] = BEARER_SCHEME
    else:
        for operation in (op for path in schema["paths"].values() for op in path.values()):
            operation.pop("security", None)
    return schema


# The bodies as pydantic models, so /openapi.json and /docs describe them. /predict still reads and checks its
# body itself (parse_texts): FastAPI's own validation would answer every problem with one 422, where this
# endpoint answers 400 (not JSON), 413 (over a limit) or 422 (wrong shape), and limits the body while reading it.
class PredictRequest(BaseModel):
    """POST /predict: the texts to classify (limits: max_texts_per_request, max_text_chars of the config)."""

    texts: list[str] = Field(min_length=1, description="one or more texts; each is scored on its own")


class Prediction(BaseModel):
    """One text's result, in the order the texts were sent."""

    predicted: list[str] = Field(description="labels at or over their threshold (multi-label) or the top label")
    probabilities: dict[str, float] = Field(description="every label's probability, highest first")


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    """Any refused or failed request: what was wrong, in one line."""

    error: str


class HealthResponse(BaseModel):
    status: str = Field(description='"ok" while the replica answers')
    checkpoint: str | None = Field(default=None, description="the checkpoint served (with the token only)")
    uptime_s: float | None = Field(default=None, description="seconds since the replica started (token only)")


class LabelsResponse(BaseModel):
    task: str = Field(description="multi_label or multi_class")
    labels: list[str]
    thresholds: dict[str, float] = Field(description="each label's decision threshold")


def _errors(*codes: int) -> dict:
    reasons = {400: "not JSON, or a text that is not valid Unicode", 401: "missing or wrong bearer token",
               413: "over a limit: body size, texts per request or characters per text",
               422: "JSON of the wrong shape", 500: "a text could not be scored"}
    return {code: {"model": ErrorResponse, "description": reasons[code]} for code in codes}


PREDICT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": PredictRequest.model_json_schema()}}}, **TOKEN_REQUIRED}


class RequestError(Exception):
    """A request the endpoint refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def max_body_bytes(cfg: ServeConfig) -> int:
    """The largest body a valid request can need: every text at its limit, each character JSON-escaped
    (\\uXXXX, 6 bytes: what json.dumps sends for non-ASCII text by default), plus quotes, commas and the object."""
    return cfg.max_texts_per_request * (cfg.max_text_chars * 6 + 16) + 1024


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over `limit`: from Content-Length before
    reading anything, else while reading (a chunked body stops at the limit, the rest is never read)."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError(400, f"Content-Length {length!r} is not a number") from None
        if declared > limit:
            raise RequestError(413, f"request body of {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # also what the proxy's BodyLimit tells the app of a body it cut off
        raise RequestError(400, "the client went away before the body ended") from None
    return b"".join(chunks)


# Serve's HTTP proxy reads a request body as fast as the client sends it and queues all of it for the replica,
# which pulls it afterwards: a limit checked only in the replica comes after the proxy has buffered the whole body
# (a fast chunked 50 MB body: +40 to +60 MB of proxy memory each). Ray Serve has no body-size option; it does run,
# in every proxy, the Starlette middlewares a function named by RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH returns
# (read where the proxy runs). start() sets both variables on the Serve controller, whose proxies inherit them.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "bertclf.serve:proxy_middlewares"
BODY_LIMIT_ENV = "BERTCLF_SERVE_MAX_BODY_BYTES"


class BodyLimit:
    """ASGI middleware for Serve's proxy: a request body over `limit` bytes is refused where its bytes arrive,
    from Content-Length before anything is read, else as soon as the bytes read pass the limit. What the proxy
    holds of one body is then at most the limit plus one read (uvicorn stops reading the socket while nobody asks
    for more), and the connection is closed after the 413, so the rest is never read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"), None)
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _refuse(send, 400, f"Content-Length {length.decode(errors='replace')!r} is not a number")
            if declared > self.limit:
                return await _refuse(send, 413, f"request body of {declared} bytes; the limit is {self.limit} "
                                                f"({BODY_LIMIT_ENV})")
        received, over, started = 0, False, False

        async def limited_receive():
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True  # the app sees the client go; the 413 is ours
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if over and not started:
                return  # whatever the app answers to a body cut off here: the 413 goes instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if over and not started:
            await _refuse(send, 413, f"request body over {self.limit} bytes ({BODY_LIMIT_ENV})")


async def _refuse(send, status: int, message: str) -> None:
    """A JSON error answer that closes the connection (the unread rest of the body is never read)."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list:
    """Called by each Serve proxy at start-up (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): the body limit from
    BERTCLF_SERVE_MAX_BODY_BYTES."""
    from starlette.middleware import Middleware

    value = os.environ.get(BODY_LIMIT_ENV, "")
    try:
        limit = int(value)
    except ValueError:
        raise ConfigError(f"{BODY_LIMIT_ENV}={value!r} where Serve's proxy runs: expected a number of bytes") from None
    return [Middleware(BodyLimit, limit=limit)]


def proxy_env(cfg: ServeConfig) -> dict[str, str]:
    """The environment that makes Serve's proxies enforce this config's body limit."""
    return {PROXY_CALLBACK_ENV: PROXY_CALLBACK, BODY_LIMIT_ENV: str(max_body_bytes(cfg))}


def parse_texts(body: bytes, cfg: ServeConfig) -> list[str]:
    """The texts of a /predict body, or a RequestError that says what is wrong with it."""
    if len(body) > max_body_bytes(cfg):
        raise RequestError(413, f"request body of {len(body)} bytes; the limit is {max_body_bytes(cfg)}")
    try:
        payload = json.loads(body)
    except RecursionError:
        raise RequestError(400, "body is not valid JSON: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the body is the client's fault
        raise RequestError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or "texts" not in payload:
        raise RequestError(422, 'expected a JSON object {"texts": ["...", ...]}')
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, f'"texts" must be a list of strings, got {type(texts).__name__}')
    if not texts:
        raise RequestError(422, '"texts" is empty: send at least one text')
    if len(texts) > cfg.max_texts_per_request:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {cfg.max_texts_per_request}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"texts[{i}] is {type(text).__name__}, not a string")
        if len(text) > cfg.max_text_chars:
            raise RequestError(413, f"texts[{i}] has {len(text)} characters; the limit is {cfg.max_text_chars}")
        if problem := unicode_problem(text):  # a lone surrogate ("\\ud800") would fail the tokenizer's whole batch
            raise RequestError(400, f"texts[{i}] is {problem}")
    return texts


class TextFailed:
    """One text of a batch that could not be scored even alone (its request answers 500, the others don't)."""

    def __init__(self, error: BaseException):
        self.message = f"{type(error).__name__}: {error}"


def predict_each_alone(predict: Callable[[list[str]], list[dict]], texts: list[str]) -> list[dict | TextFailed]:
    """A batch whose forward pass failed, scored again one text at a time: every text that scores alone gets
    its result, only a text that fails alone gets a TextFailed, so one bad text fails only its own request."""
    results: list[dict | TextFailed] = []
    for text in texts:
        try:
            results.append(predict([text])[0])
        except Exception as exc:  # noqa: BLE001 - reported to this text's request only
            results.append(TextFailed(exc))
    return results


def predict_batch(predict: Callable[[list[str]], list[dict]], texts: list[str]) -> list[dict | TextFailed]:
    """The batch in one pass; when that fails, text by text (predict_each_alone)."""
    try:
        return predict(texts)
    except Exception as exc:  # noqa: BLE001 - which text caused it is found by scoring them alone
        log.warning("a batch of %d text(s) failed (%s: %s): scoring them one at a time", len(texts),
                    type(exc).__name__, exc)
        return predict_each_alone(predict, texts)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(cfg: ServeConfig) -> str | None:
    """The start-up warning for an endpoint without a token that others can reach, else None."""
    if cfg.auth_token_env or is_loopback(cfg.host):
        return None
    return (f"serving on {cfg.host}:{cfg.port} without authentication: anyone who can reach this port can call the "
            "model and read its labels; set --auth-token-env NAME (a variable holding a bearer token) or bind "
            "127.0.0.1")


def auth_token(cfg: ServeConfig) -> str | None:
    """The bearer token from the variable `auth_token_env` names; None without auth. A named but unset or empty
    variable is an error: an endpoint meant to be protected never starts open."""
    if not cfg.auth_token_env:
        return None
    token = os.environ.get(cfg.auth_token_env, "")
    if not token:
        raise ConfigError(f"auth_token_env names {cfg.auth_token_env}, but that environment variable is unset or "
                          "empty here; set it to the bearer token (where the replicas run, too)")
    return token


def authorized(request: Request, token: str | None) -> bool:
    """No token configured, or the request's `Authorization: Bearer <token>` matches it (compared in constant
    time)."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def unauthorized() -> JSONResponse:
    return JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer <token>)"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


@serve.deployment
@serve.ingress(api)
class Classifier:
    """One replica: the checkpoint loaded once, texts from concurrent requests batched into forward passes."""

    def __init__(self, cfg: ServeConfig):
        import torch

        from bertclf.model.inference import Predictor

        logs.setup_worker()  # a RayService replica has no bertclf driver whose setup hook would have run
        torch.set_num_threads(max(1, int(cfg.cpus_per_replica)))
        self.cfg = cfg
        self.token = auth_token(cfg)  # from this replica's environment; fails closed when the variable is missing
        self.predictor = Predictor.load(cfg.checkpoint, precision=cfg.precision)
        self._predict_one.set_max_batch_size(cfg.max_batch_size)
        self._predict_one.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.started = time.time()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _predict_one(self, texts: list[str]) -> list[dict | TextFailed]:
        # in a thread: /healthz keeps answering while a batch runs
        return await asyncio.to_thread(predict_batch, self.predictor.predict, texts)

    @api.post("/predict", response_model=PredictResponse, responses=_errors(400, 401, 413, 422, 500),
              openapi_extra=PREDICT_BODY)
    async def predict(self, request: Request) -> Any:
        if not authorized(request, self.token):
            return unauthorized()
        try:
            texts = parse_texts(await read_body(request, max_body_bytes(self.cfg)), self.cfg)
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        rows = await asyncio.gather(*(self._predict_one(t) for t in texts), return_exceptions=True)
        failed = [(i, r) for i, r in enumerate(rows) if isinstance(r, (TextFailed, BaseException))]
        if failed:
            i, r = failed[0]
            why = r.message if isinstance(r, TextFailed) else f"{type(r).__name__}: {r}"
            log.error("request of %d text(s): texts[%d] could not be scored: %s", len(texts), i, why)
            return JSONResponse({"error": f"texts[{i}] could not be scored: {why}"}, status_code=500)
        return {"predictions": [{"predicted": r["predicted"], "probabilities": r["probabilities"]} for r in rows]}

    @api.get("/healthz", response_model=HealthResponse, response_model_exclude_none=True, openapi_extra=TOKEN_OPTIONAL)
    async def healthz(self, request: Request) -> Any:
        if not authorized(request, self.token):  # liveness without a token; what is served only with it
            return {"status": "ok"}
        return {"status": "ok", "checkpoint": self.cfg.checkpoint, "uptime_s": round(time.time() - self.started, 1)}

    @api.get("/labels", response_model=LabelsResponse, responses=_errors(401), openapi_extra=TOKEN_REQUIRED)
    async def labels(self, request: Request) -> Any:
        if not authorized(request, self.token):
            return unauthorized()
        space = self.predictor.space
        return {"task": space.task, "labels": space.names,
                "thresholds": dict(zip(space.names, space.thresholds, strict=True))}

    # the schema and its two viewers, behind the token like /labels: they name every route and body
    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_json(self, request: Request) -> Any:
        if not authorized(request, self.token):
            return unauthorized()
        return JSONResponse(openapi_schema(with_token=self.token is not None))

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> Any:
        if not authorized(request, self.token):
            return unauthorized()
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json",
                                   title=f"{api.title} - Swagger UI")

    @api.get("/redoc", include_in_schema=False)
    async def redoc(self, request: Request) -> Any:
        if not authorized(request, self.token):
            return unauthorized()
        return get_redoc_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json",
                              title=f"{api.title} - ReDoc")


def application(cfg: ServeConfig):
    """The Serve application for a config (replicas and their resources from it)."""
    cfg.validate()
    return Classifier.options(
        num_replicas=cfg.replicas,
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
    ).bind(cfg)


def build_app(args: dict[str, Any]):
    """Application builder for `serve run` / RayService: `args` are ServeConfig keys."""
    return application(load_config(ServeConfig, None, args))


def start(cfg: ServeConfig) -> str:
    """Start Serve on this Ray cluster with the endpoint at http://host:port/ and return that URL."""
    from bertclf import storage
    from bertclf.model.checkpoint import load
    from bertclf.resources import connect

    cfg = dataclasses.replace(cfg, checkpoint=storage.absolute(cfg.checkpoint))  # replicas run elsewhere
    cfg.validate()
    auth_token(cfg)  # a named token variable that is unset fails here, not in every replica
    load(cfg.checkpoint)  # a bad checkpoint fails here, by name, not in a replica
    if warning := exposure_warning(cfg):
        log.warning(warning)
    connect(cfg.ray_address)
    # the proxies (started with the controller) inherit its environment: the body limit where the bytes arrive
    serve.start(http_options={"host": cfg.host, "port": cfg.port},
                controller_options={"runtime_env": {"env_vars": proxy_env(cfg)}})
    serve.run(application(cfg), name=APP_NAME, route_prefix="/")
    url = f"http://{cfg.host}:{cfg.port}"
    log.info("serving %s at %s (%d replica(s)%s); POST %s/predict, GET %s/healthz, GET %s/labels", cfg.checkpoint,
             url, cfg.replicas, f", bearer token from ${cfg.auth_token_env}" if cfg.auth_token_env else ", no auth",
             url, url, url)
    return url


class _Stop(Exception):
    """SIGTERM: stop serving as Ctrl-C does."""


def _on_sigterm(signum, frame):
    raise _Stop


def serve_forever(cfg: ServeConfig) -> None:
    """`bertclf serve`: start, then keep serving until Ctrl-C or SIGTERM; then the app is deleted and Ray shut
    down, which stops a private Ray this process started whole (a `ray start` cluster is only left)."""
    import ray

    start(cfg)
    # after ray.init: Ray's core worker installs a SIGTERM handler that aborts the process (exit -6) before a
    # private Ray is stopped, which left its DashboardAgent and RuntimeEnvAgent running for a minute or more
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, _Stop) as stop:
        log.info("stopping the endpoint (%s)", "SIGTERM" if isinstance(stop, _Stop) else "interrupted")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        try:
            serve.delete(APP_NAME)
        finally:
            ray.shutdown()


# the interface other modules, jobs and benchmarks use
__all__ = ["build_app", "serve_forever", "start"]
