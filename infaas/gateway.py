"""`infaas gateway`: the Open Inference Protocol (KServe V2) over HTTP, in front of the Kafka pipeline.

    GET  /v2/health/live             the process answers
    GET  /v2/health/ready            Kafka answers and a dispatcher is consuming
    GET  /v2                         server metadata
    GET  /v2/models/{name}           inputs and outputs (names, datatypes, shapes) of the registered signature
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}/infer     one input tensor (JSON data, or the binary tensor extension)

`{name}` is resolved as a variant id, then a model name, then a task (model-less); registration
refuses a model named like a task, so the order only matters for a variant id that is also a name.
The requirements come in the request's `parameters` (`min_accuracy`, `latency_ms`, `max_cost`); the
response's `parameters` say what served it (`variant`, `accuracy`, `latency_ms`, `queue_ms`,
`compute_ms`). A query travels as any client's does (`InfaasClient`), with the reply topic
`<prefix>.results.<app>.gateway` shared by the gateway's replicas (each drops the others' results).

On a plain stack every request acts for the app given at start (`--app`). On a secure stack (SASL
settings) each request must carry HTTP basic credentials, an app id and that app's password (the one
`infaas app create APP --print-credentials` set): the gateway checks them by logging in to Kafka as the
app's principal, and then sends that app's queries with the app's own credentials, so Kafka's ACLs
hold for the gateway exactly as for the app's own clients. Health endpoints need no credentials.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

from . import bus, metrics
from .catalog import NAME_RE
from .client import InfaasClient, QueryNotSent, QueryResult, QueryTimeout
from .settings import Settings
from .store import Store, StoreError
from .tensors import TensorError, check_input
from .views import Catalog

log = logging.getLogger(__name__)

# V2 datatypes <-> numpy dtype names (those infaas tensors carry).
V2_TO_NUMPY = {"BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "INT16": "int16", "INT32": "int32",
               "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64"}
NUMPY_TO_V2 = {v: k for k, v in V2_TO_NUMPY.items()}
REQUIREMENTS = ("min_accuracy", "latency_ms", "max_cost")
HTTP_OF_STATUS = {"OK": 200, "BAD_INPUT": 400, "UNKNOWN_MODEL": 404, "NO_FEASIBLE_VARIANT": 422,
                  "DEADLINE_EXCEEDED": 504, "THROTTLED": 429}
MAX_BODY_BYTES = 32 << 20
MAX_ROWS = 1024
CATALOG_REFRESH_S = 5.0
MISS_REFRESH_S = 1.0  # an unknown name refreshes the catalogue at most this often
REFUSED_RETRY_S = 5.0  # refused credentials are not checked against Kafka again for this long


class BadRequest(Exception):
    """The request is malformed: 400 with this reason."""


@dataclass(frozen=True)
class Target:
    """What a name in the URL resolved to."""
    kind: str  # variant, model or task
    name: str
    task: str
    model: str | None  # the model whose outputs describe the answer (a task: its most accurate one)
    version: str = ""

    @property
    def query_fields(self) -> dict[str, str]:
        return {self.kind: self.name}


class Names:
    """The catalogue (apps, tasks, models, variants), refreshed in the background, and the
    registered output signature of each model (read once from its ONNX file)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.catalog = Catalog()
        self.models: dict[str, Any] = {}  # model name -> ModelInfo of its newest version
        self.refreshed_at = 0.0
        self._outputs: dict[str, list[dict]] = {}

    def refresh(self) -> None:
        with Store(self.settings) as store:
            catalog, models = Catalog.load(store), store.list_models()
        newest: dict[str, Any] = {}
        for model in models:
            if model.model not in newest or model.version > newest[model.model].version:
                newest[model.model] = model
        self.catalog, self.models, self.refreshed_at = catalog, newest, time.monotonic()

    def resolve(self, name: str, app: str) -> Target | None:
        """What the name means for this app (another app's private model is unknown to it)."""
        catalog = self.catalog
        variant = catalog.variants.get(name)
        if variant is not None and variant.visible_to(app):
            return Target("variant", name, variant.task, variant.model, str(variant.model_version))
        task = catalog.model_visible(name, app)
        if task is not None:
            model = self.models.get(name)
            return Target("model", name, task, name, str(model.version) if model else "")
        if name in catalog.tasks and catalog.task_visible(name, app):
            visible = [v for v in catalog.variants.values() if v.task == name and v.visible_to(app)]
            best = max(visible, key=lambda v: (v.accuracy, v.variant_id)).model if visible else None
            return Target("task", name, name, best)
        return None

    def output_names(self, model: str | None) -> list[str]:
        info = self.models.get(model) if model else None
        return list(info.output_names) if info else []

    def outputs(self, model: str | None) -> list[dict]:
        """The model's outputs as V2 metadata, from its registered ONNX graph (cached)."""
        info = self.models.get(model) if model else None
        if info is None:
            return []
        if info.artifact not in self._outputs:
            self._outputs[info.artifact] = _onnx_outputs(self.settings, info.artifact)
        return self._outputs[info.artifact]


def _onnx_outputs(settings: Settings, artifact: str) -> list[dict]:
    import onnx

    from .repository import Repository
    graph = onnx.load(str(Repository.from_settings(settings).fetch(artifact)), load_external_data=False).graph
    outputs = []
    for value in graph.output:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        outputs.append({"name": value.name, "datatype": NUMPY_TO_V2.get(dtype, dtype.upper()), "shape": shape})
    return outputs


# --- request parsing ---------------------------------------------------------------------------------
def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON part and the binary part (binary tensor extension) of an infer request."""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length is not an integer") from None
        if not 0 < length <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {length} does not fit the body of {len(body)} bytes")
        head, binary = body[:length], body[length:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest(f"malformed JSON: {err}") from None
    if not isinstance(request, dict):
        raise BadRequest("the request body must be a JSON object")
    return request, binary


def parse_input(request: dict, binary: bytes) -> tuple[str, np.ndarray]:
    """The one input tensor of the request: (name, array)."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("'inputs' must be a list of exactly one tensor (infaas tasks have one input)")
    tensor = inputs[0]
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str):
        raise BadRequest("the input has no 'name'")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise BadRequest(f"input {name!r:.60}: 'shape' must be a list of 1-8 non-negative integers")
    if datatype not in V2_TO_NUMPY:
        raise BadRequest(f"input {name!r:.60}: datatype {datatype!r:.20} is not one of {', '.join(V2_TO_NUMPY)}")
    dtype = np.dtype(V2_TO_NUMPY[datatype]).newbyteorder("<")
    size = math.prod(shape)
    if size * dtype.itemsize > MAX_BODY_BYTES:
        raise BadRequest(f"input {name!r:.60}: shape {shape} is too large")
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"input {name!r:.60}: 'parameters' must be an object")
    if "binary_data_size" in parameters:
        if parameters["binary_data_size"] != len(binary) or len(binary) != size * dtype.itemsize:
            raise BadRequest(f"input {name!r:.60}: {len(binary)} binary bytes, shape {shape} of {datatype} needs "
                             f"{size * dtype.itemsize}")
        return name, np.frombuffer(binary, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    try:
        flat = np.asarray(tensor.get("data"), dtype=dtype.newbyteorder("=")).reshape(-1)
    except (TypeError, ValueError) as err:
        raise BadRequest(f"input {name!r:.60}: 'data' is not a list of {datatype} values ({err})") from None
    if flat.size != size:
        raise BadRequest(f"input {name!r:.60}: {flat.size} values, shape {shape} needs {size}")
    return name, flat.reshape(shape)


def parse_requirements(request: dict) -> dict[str, float]:
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    requirements = {}
    for key in REQUIREMENTS:
        value = parameters.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise BadRequest(f"parameter {key!r} must be a finite number, not {value!r:.40}")
        requirements[key] = float(value)
    return requirements


def requested_outputs(request: dict, names: list[str]) -> list[tuple[str, bool]]:
    """(name, binary) of each output to return: those asked for, or every one."""
    binary_all = bool((request.get("parameters") or {}).get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return [(name, binary_all) for name in names]
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    unknown = [o["name"] for o in asked if o["name"] not in names]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; the model's outputs are {names}")
    return [(o["name"], bool((o.get("parameters") or {}).get("binary_data", binary_all))) for o in asked]


# --- the response ------------------------------------------------------------------------------------
def result_parameters(result: QueryResult) -> dict[str, Any]:
    return {"variant": result.variant, "model": result.model, "hardware": result.hardware,
            "accuracy": result.accuracy, "latency_ms": result.latency_ms, "queue_ms": result.queue_ms,
            "compute_ms": result.compute_ms}


def error_text(result: QueryResult) -> str:
    text = f"{result.status}: {result.error or ''}".rstrip(": ")
    best = {"best accuracy possible within the latency": result.best_accuracy_within_slo,
            "fastest latency at the accuracy (ms)": result.fastest_latency_ms}
    known = [f"{what}: {value:.4g}" for what, value in best.items() if value is not None]
    return text + (f" ({'; '.join(known)})" if known else "")


def infer_response(target: Target, request: dict, result: QueryResult, wanted: list[tuple[str, bool]],
                   names: list[str]) -> tuple[dict, bytes]:
    by_name = dict(zip(names, result.outputs, strict=False))
    outputs, binary = [], []
    for name, as_binary in wanted:
        array = by_name.get(name)
        if array is None:
            continue
        entry = {"name": name, "datatype": NUMPY_TO_V2.get(array.dtype.name, array.dtype.name.upper()),
                 "shape": list(array.shape)}
        if as_binary:
            raw = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    body = {"model_name": target.name, "model_version": target.version, "outputs": outputs,
            "parameters": result_parameters(result)}
    if "id" in request:
        body["id"] = request["id"]
    return body, b"".join(binary)


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def unauthorized(message: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="infaas"'},
                                text=json.dumps({"error": message}), content_type="application/json")


def basic_credentials(header: str | None) -> tuple[str, str]:
    """(app id, password) from an `Authorization: Basic ...` header; 401 when absent or malformed."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        raise unauthorized("this gateway needs HTTP basic credentials: the app id and its password "
                           "(`infaas app create APP --print-credentials`)")
    try:
        app, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise unauthorized("malformed basic credentials") from None
    if not colon or not NAME_RE.fullmatch(app):
        raise unauthorized("malformed basic credentials: expected APP:PASSWORD with a valid app id")
    return app, password


@dataclass
class AppSession:
    """An authenticated app's client: its queries go out with its own Kafka credentials."""
    digest: bytes  # of the password that logged in (the password itself is not kept here)
    client: InfaasClient


def _digest(app: str, password: str) -> bytes:
    return hashlib.sha256(f"{app}\0{password}".encode()).digest()


# --- the service -------------------------------------------------------------------------------------
class Gateway:
    def __init__(self, settings: Settings, app_id: str = "demo", timeout_s: float = 30.0):
        self.settings, self.app_id, self.timeout_s = settings, app_id, timeout_s
        self.secure = bool(settings.kafka_sasl_mechanism)
        self.names = Names(settings)
        self.client: InfaasClient | None = None  # plain stack: the one app's
        self.sessions: dict[str, AppSession] = {}  # secure stack: per authenticated app
        self._refused: dict[bytes, float] = {}  # digests of refused credentials -> when
        self._login_lock = asyncio.Lock()
        self.admin = bus.admin(settings)
        self.counts = {"requests": 0, "bad_requests": 0}
        self._refreshing: asyncio.Task | None = None

    # lifecycle
    async def start(self, _app: web.Application | None = None) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.names.refresh)
        if not self.secure:
            self.client = await loop.run_in_executor(None, self._client, self.settings, self.app_id)
        self._refreshing = asyncio.create_task(self._refresh_loop())

    def _client(self, settings: Settings, app: str) -> InfaasClient:
        reply = f"{self.settings.results_topic(app)}.gateway"
        bus.ensure_topics(self.settings, {reply: bus.TopicSpec(self.settings.result_partitions)})  # as the service
        return InfaasClient(settings, app, reply_topic=reply, timeout_s=self.timeout_s)

    async def stop(self, _app: web.Application | None = None) -> None:
        if self._refreshing:
            self._refreshing.cancel()
        loop = asyncio.get_running_loop()
        for client in [self.client, *(s.client for s in self.sessions.values())]:
            if client is not None:
                await loop.run_in_executor(None, client.close)

    async def caller(self, request: web.Request) -> tuple[str, InfaasClient | None]:
        """The app a request acts for, and its client: the gateway's own app on a plain stack; on a
        secure stack the app whose credentials the request carries (401 when there are none, or
        Kafka refuses them)."""
        if not self.secure:
            return self.app_id, self.client
        app, password = basic_credentials(request.headers.get("Authorization"))
        digest = _digest(app, password)
        client = self._logged_in(app, digest)
        if client is not None:
            return app, client
        async with self._login_lock:  # one login at a time; requests waiting then find its session
            client = self._logged_in(app, digest)
            if client is not None:
                return app, client
            if time.monotonic() - self._refused.get(digest, -REFUSED_RETRY_S) < REFUSED_RETRY_S:
                raise unauthorized(f"credentials of app {app} refused")
            client = await asyncio.get_running_loop().run_in_executor(None, self._login, app, password)
            if client is None:
                now = time.monotonic()
                if len(self._refused) > 10_000:  # many wrong passwords: keep only the recent ones
                    self._refused = {d: at for d, at in self._refused.items() if now - at < REFUSED_RETRY_S}
                self._refused[digest] = now
                log.warning("refused credentials for app %s", app)
                raise unauthorized(f"credentials of app {app} refused")
            self._refused.pop(digest, None)
            old, self.sessions[app] = self.sessions.get(app), AppSession(digest, client)
        if old is not None:  # its password changed: the old client goes
            await asyncio.get_running_loop().run_in_executor(None, old.client.close)
        log.info("app %s logged in", app)
        return app, client

    def _logged_in(self, app: str, digest: bytes) -> InfaasClient | None:
        session = self.sessions.get(app)
        return session.client if session is not None and hmac.compare_digest(session.digest, digest) else None

    def _login(self, app: str, password: str) -> InfaasClient | None:
        """A client with the app's own credentials, if Kafka accepts them."""
        own = self.settings.replace(kafka_sasl_username=bus.app_principal(app), kafka_sasl_password=password)
        return self._client(own, app) if bus.authenticates(own) else None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(CATALOG_REFRESH_S)
            await self._refresh()

    async def _refresh(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.names.refresh)
        except StoreError as err:
            log.warning("catalogue refresh failed (the previous one stays in use): %s", err)

    async def resolve(self, name: str, app: str) -> Target | None:
        target = self.names.resolve(name, app)
        if target is None and time.monotonic() - self.names.refreshed_at > MISS_REFRESH_S:
            await self._refresh()  # registered since the last refresh?
            target = self.names.resolve(name, app)
        return target

    def dispatcher_consuming(self) -> bool:
        group = f"{self.settings.topic_prefix}-dispatcher"
        future = self.admin.describe_consumer_groups([group], request_timeout=10)[group]
        return bool(future.result(timeout=10).members)

    # handlers
    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v2/health/live", self.live), web.get("/v2/health/ready", self.ready),
                web.get("/v2", self.server_metadata), web.get("/v2/models/{name}", self.model_metadata),
                web.get("/v2/models/{name}/ready", self.model_ready),
                web.get("/v2/models/{name}/versions/{version}", self.model_metadata),
                web.post("/v2/models/{name}/infer", self.infer),
                web.post("/v2/models/{name}/versions/{version}/infer", self.infer)]

    async def live(self, _request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, _request: web.Request) -> web.Response:
        try:
            ok = await asyncio.get_running_loop().run_in_executor(None, self.dispatcher_consuming)
            reason = "" if ok else "no dispatcher is consuming the queries topic"
        except Exception as err:  # Kafka unreachable, or the group unknown
            ok, reason = False, f"Kafka does not answer: {err!r}"
        if not ok:
            log.warning("not ready: %s", reason)
        return web.json_response({"ready": ok, **({"reason": reason} if reason else {})}, status=200 if ok else 503)

    async def server_metadata(self, _request: web.Request) -> web.Response:
        from . import __version__
        return web.json_response({"name": "infaas", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: web.Request) -> web.Response:
        app, _ = await self.caller(request)
        target = await self.resolve(request.match_info["name"], app)
        if target is None:
            return json_error(404, f"unknown model {request.match_info['name']!r:.100}")
        task = self.names.catalog.tasks[target.task]
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(None, self.names.outputs, target.model)
        return web.json_response({
            "name": target.name, "versions": [target.version] if target.version else [], "platform": "infaas",
            "parameters": {"kind": target.kind, "task": target.task},
            "inputs": [{"name": task.input_name, "datatype": NUMPY_TO_V2.get(task.input_dtype, task.input_dtype),
                        "shape": [-1, *task.input_shape]}],
            "outputs": outputs})

    async def model_ready(self, request: web.Request) -> web.Response:
        app, _ = await self.caller(request)
        target = await self.resolve(request.match_info["name"], app)
        if target is None:
            return json_error(404, f"unknown model {request.match_info['name']!r:.100}")
        return web.json_response({"name": target.name, "ready": True})

    async def infer(self, request: web.Request) -> web.Response:
        self.counts["requests"] += 1
        name = request.match_info["name"]
        app, client = await self.caller(request)
        try:
            body = await request.read()
            parsed, binary = split_body(body, request.headers.get("Inference-Header-Content-Length"))
            target = await self.resolve(name, app)
            if target is None:
                return json_error(404, f"unknown model {name!r:.100}: no variant, model or task of that name "
                                       f"for app {app}")
            input_name, array = parse_input(parsed, binary)
            task = self.names.catalog.tasks[target.task]
            if input_name != task.input_name:
                raise BadRequest(f"input {input_name!r:.60} is not the model's input {task.input_name!r}")
            try:
                check_input(array, task.input_dtype, task.input_shape, MAX_ROWS)
            except TensorError as err:
                raise BadRequest(f"input {input_name!r}: {err}") from None
            output_names = self.names.output_names(target.model)
            wanted = requested_outputs(parsed, output_names)
            requirements = parse_requirements(parsed)
        except BadRequest as err:
            self.counts["bad_requests"] += 1
            log.info("bad request for %.100s: %s", name, err)
            return json_error(400, str(err))
        try:
            result = await client.aquery(array, **target.query_fields, **requirements)
        except QueryTimeout as err:
            return json_error(504, str(err))
        except QueryNotSent as err:
            return json_error(503, str(err))
        if not result.ok:
            return json_error(HTTP_OF_STATUS.get(result.status, 500), error_text(result))
        response, tail = infer_response(target, parsed, result, wanted, output_names)
        if not tail:
            return web.json_response(response)
        head = json.dumps(response).encode()
        return web.Response(body=head + tail, content_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(len(head))})


@web.middleware
async def measured(request: web.Request, handler) -> web.StreamResponse:
    """Count every request by route and status; time the infer requests."""
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPException as err:
        metrics.HTTP_REQUESTS.labels(route, str(err.status)).inc()
        raise
    metrics.HTTP_REQUESTS.labels(route, str(response.status)).inc()
    if route.endswith("/infer"):
        metrics.HTTP_LATENCY.observe((time.perf_counter() - started) * 1000)
    return response


def make_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[measured])
    app.add_routes(gateway.routes())
    app.on_startup.append(gateway.start)
    app.on_cleanup.append(gateway.stop)
    return app


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8000, app_id: str = "demo",
        timeout_s: float = 30.0) -> int:
    gateway = Gateway(settings, app_id, timeout_s)

    async def main() -> None:
        runner = web.AppRunner(make_app(gateway), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        metrics.serve_endpoint(settings, "gateway")
        metrics.mark_ready()
        acting = "each app with its HTTP basic credentials" if gateway.secure else f"app {app_id}"
        print(f"infaas gateway ready (pid {__import__('os').getpid()}, http://{host}:{bound}/v2, {acting})",
              flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0
