"""The metadata store: the only module that speaks CQL.

Prepared statements are built once per (table, columns) and cached; hot-path writes
(`insert_async`) return the driver's future so callers never wait on Cassandra.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable
from importlib import resources
from typing import Any

from cassandra import ConsistencyLevel, InvalidRequest, OperationTimedOut, RequestExecutionException
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import dict_factory

from .catalog import ModelInfo, ProfilePoint, TaskInfo, Variant, from_row
from .errors import InfaasError
from .settings import Settings

log = logging.getLogger(__name__)


class StoreError(InfaasError, RuntimeError):
    """Cassandra is unreachable or refused a request; the message says which and why."""


def now_ms() -> int:
    return int(time.time() * 1000)


def day_of(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()


def _to_python(value: Any) -> Any:
    """Driver types -> plain Python: timestamps as epoch milliseconds, collections as builtins."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, (set, frozenset)) or type(value).__name__ in ("SortedSet", "OrderedSet"):
        return sorted(value)
    if type(value).__name__ == "OrderedMapSerializedKey":
        return dict(value)
    return value


def _plain(row: dict) -> dict:
    return {k: _to_python(v) for k, v in row.items()}


def schema_statements(settings: Settings) -> list[str]:
    text = resources.files("infaas.schemas").joinpath("metadata.cql").read_text()
    replication = (f"{{'class': '{settings.replication_class}', 'replication_factor': "
                   f"{settings.replication_factor}}}")
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    body = "\n".join(line.split("--")[0] for line in lines)
    body = body.replace("{keyspace}", settings.keyspace).replace("{replication}", replication)
    body = body.replace("{window_ttl}", str(settings.load_window_ttl_s))
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


class Store:
    def __init__(self, settings: Settings, connect_timeout: float = 10.0):
        self.settings = settings
        self.keyspace = settings.keyspace
        self._connect_timeout = connect_timeout
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, Any] = {}
        self._lock = threading.Lock()

    # --- connection ---------------------------------------------------------------------------
    def connect(self) -> Store:
        if self._session is not None:
            return self
        auth = None
        if self.settings.cassandra_username:
            auth = PlainTextAuthProvider(self.settings.cassandra_username, self.settings.cassandra_password)
        profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
                                   consistency_level=ConsistencyLevel.LOCAL_ONE,
                                   row_factory=dict_factory, request_timeout=10.0)
        self._cluster = Cluster(list(self.settings.cassandra_hosts), port=self.settings.cassandra_port,
                                auth_provider=auth, protocol_version=5,
                                execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                                connect_timeout=self._connect_timeout)
        try:
            self._session = self._cluster.connect()
        except NoHostAvailable as err:
            self._cluster.shutdown()
            self._cluster = None
            hosts = ",".join(self.settings.cassandra_hosts)
            raise StoreError(f"cannot reach Cassandra at {hosts}:{self.settings.cassandra_port} "
                             f"({_first_error(err)}); is the stack up? (`infaas infra up`)") from None
        return self

    @property
    def session(self) -> Session:
        if self._session is None:
            self.connect()
        return self._session

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
        self._cluster = self._session = None
        self._prepared.clear()

    def __enter__(self) -> Store:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def apply_schema(self) -> int:
        statements = schema_statements(self.settings)
        for stmt in statements:
            self.session.execute(stmt, timeout=60)
        return len(statements)

    def release_version(self) -> str:
        return self.session.execute("SELECT release_version FROM system.local").one()["release_version"]

    def secure_roles(self, superuser: str, superuser_password: str, role: str, role_password: str) -> None:
        """Logged in as the superuser: set its password and create the services' login role (idempotent).
        The role may create keyspaces; Cassandra grants a keyspace's creator all permissions on it."""
        session = self.session
        session.execute(f"ALTER ROLE {superuser} WITH PASSWORD = %s", (superuser_password,), timeout=30)
        session.execute(f"CREATE ROLE IF NOT EXISTS {role} WITH LOGIN = true AND PASSWORD = %s", (role_password,),
                        timeout=30)
        session.execute(f"ALTER ROLE {role} WITH PASSWORD = %s", (role_password,), timeout=30)
        session.execute(f"GRANT CREATE ON ALL KEYSPACES TO {role}", timeout=30)

    # --- generic statements -------------------------------------------------------------------
    def _prepare(self, cql: str):
        stmt = self._prepared.get(cql)
        if stmt is None:
            with self._lock:
                stmt = self._prepared.get(cql)
                if stmt is None:
                    try:
                        stmt = self.session.prepare(cql)
                    except InvalidRequest as err:
                        if f"keyspace {self.keyspace} does not exist" in str(err):
                            where = f"{','.join(self.settings.cassandra_hosts)}:{self.settings.cassandra_port}"
                            raise StoreError(f"keyspace {self.keyspace} does not exist in Cassandra at {where}: "
                                             "run `infaas init` to create it (setting keyspace)") from None
                        raise
                    self._prepared[cql] = stmt
        return stmt

    def _insert_statement(self, table: str, columns: Iterable[str], ttl: int | None):
        cols = list(columns)
        cql = (f"INSERT INTO {self.keyspace}.{table} ({', '.join(cols)}) "
               f"VALUES ({', '.join('?' for _ in cols)})")
        if ttl:
            cql += f" USING TTL {int(ttl)}"
        return self._prepare(cql)

    def insert(self, table: str, row: dict[str, Any], ttl: int | None = None) -> None:
        self.session.execute(self._insert_statement(table, row.keys(), ttl), list(row.values()))

    def insert_async(self, table: str, row: dict[str, Any], ttl: int | None = None):
        """Fire a write without waiting; failures are logged, never raised into the caller."""
        future = self.session.execute_async(self._insert_statement(table, row.keys(), ttl), list(row.values()))
        future.add_errback(lambda err: log.warning("store write to %s failed: %s", table, err))
        return future

    def select(self, cql: str, *params: Any) -> list[dict[str, Any]]:
        cql = cql.replace("{ks}", self.keyspace)
        result = self.session.execute(self._prepare(cql), params)
        rows = []
        while True:
            page = result.current_rows
            rows += [_plain(row) for row in page]
            if isinstance(page, list):
                # The driver's response future and its (cancelled) timeout timer reference each other, so
                # the page they hold lives until a full garbage collection. The catalogue is read every few
                # seconds: those pages piled up and fragmented the heap (the scaler's RSS grew 0.5 MB a
                # minute, measured). Nothing reads the page after us.
                page.clear()
            if not result.has_more_pages:
                return rows
            result.fetch_next_page()

    def execute(self, cql: str, *params: Any) -> None:
        self.session.execute(self._prepare(cql.replace("{ks}", self.keyspace)), params)

    # --- apps, tasks, models ------------------------------------------------------------------
    def put_app(self, app_id: str, description: str = "") -> None:
        self.insert("apps", {"app_id": app_id, "description": description, "created_at": now_ms()})

    def get_app(self, app_id: str) -> dict | None:
        rows = self.select("SELECT * FROM {ks}.apps WHERE app_id = ?", app_id)
        return rows[0] if rows else None

    def list_apps(self) -> list[dict]:
        return self.select("SELECT * FROM {ks}.apps")

    def put_task(self, task: TaskInfo) -> None:
        row = {"task": task.task, "input_name": task.input_name, "input_dtype": task.input_dtype,
               "input_shape": list(task.input_shape), "num_classes": task.num_classes,
               "created_at": task.created_at or now_ms()}
        self.insert("tasks", row)

    def get_task(self, task: str) -> TaskInfo | None:
        rows = self.select("SELECT * FROM {ks}.tasks WHERE task = ?", task)
        return from_row(TaskInfo, rows[0]) if rows else None

    def list_tasks(self) -> list[TaskInfo]:
        return [from_row(TaskInfo, row) for row in self.select("SELECT * FROM {ks}.tasks")]

    def put_model(self, model: ModelInfo) -> None:
        row = {f: getattr(model, f) for f in ModelInfo.__dataclass_fields__}
        row["output_names"] = list(model.output_names)
        row["registered_at"] = model.registered_at or now_ms()
        self.insert("models", row)
        self.insert("models_by_name", {"model": model.model, "version": model.version, "task": model.task,
                                        "app_id": model.app_id, "public": model.public,
                                        "sha256": model.sha256})

    def models_for_task(self, task: str) -> list[ModelInfo]:
        return [from_row(ModelInfo, r) for r in self.select("SELECT * FROM {ks}.models WHERE task = ?", task)]

    def model_versions(self, model: str) -> list[dict]:
        """Newest first: [{model, version, task, app_id, public, sha256}]."""
        return self.select("SELECT * FROM {ks}.models_by_name WHERE model = ?", model)

    def get_model(self, model: str, version: int | None = None) -> ModelInfo | None:
        versions = self.model_versions(model)
        if version is not None:
            versions = [v for v in versions if v["version"] == version]
        if not versions:
            return None
        head = versions[0]
        rows = self.select("SELECT * FROM {ks}.models WHERE task = ? AND model = ? AND version = ?",
                           head["task"], model, head["version"])
        return from_row(ModelInfo, rows[0]) if rows else None

    def list_models(self) -> list[ModelInfo]:
        return [from_row(ModelInfo, r) for r in self.select("SELECT * FROM {ks}.models")]

    def delete_model(self, task: str, model: str, version: int) -> None:
        self.execute("DELETE FROM {ks}.models WHERE task = ? AND model = ? AND version = ?", task, model, version)
        self.execute("DELETE FROM {ks}.models_by_name WHERE model = ? AND version = ?", model, version)

    # --- variants and profiles ----------------------------------------------------------------
    def put_variant(self, variant: Variant) -> None:
        row = {f: getattr(variant, f) for f in Variant.__dataclass_fields__}
        row["profiled_at"] = variant.profiled_at or now_ms()
        self.insert("variants", row)

    def variants_for_task(self, task: str) -> list[Variant]:
        return [from_row(Variant, r) for r in self.select("SELECT * FROM {ks}.variants WHERE task = ?", task)]

    def all_variants(self) -> list[Variant]:
        return [from_row(Variant, r) for r in self.select("SELECT * FROM {ks}.variants")]

    def delete_variants(self, task: str, variant_ids: Iterable[str]) -> None:
        for vid in variant_ids:
            self.execute("DELETE FROM {ks}.variants WHERE task = ? AND variant_id = ?", task, vid)
            self.execute("DELETE FROM {ks}.variant_profiles WHERE variant_id = ?", vid)

    def put_profile(self, point: ProfilePoint) -> None:
        self.insert("variant_profiles", {f: getattr(point, f) for f in ProfilePoint.__dataclass_fields__})

    def profiles(self, variant_id: str) -> list[ProfilePoint]:
        return [from_row(ProfilePoint, r)
                for r in self.select("SELECT * FROM {ks}.variant_profiles WHERE variant_id = ?", variant_id)]

    def delete_profiles(self, variant_ids: Iterable[str]) -> None:
        """Remove the profile rows of variant bases (or variants)."""
        for vid in variant_ids:
            self.execute("DELETE FROM {ks}.variant_profiles WHERE variant_id = ?", vid)

    def variants_for_model(self, task: str, model: str) -> list[Variant]:
        return [v for v in self.variants_for_task(task) if v.model == model]

    def delete_task(self, task: str) -> None:
        self.execute("DELETE FROM {ks}.tasks WHERE task = ?", task)

    def delete_app(self, app_id: str) -> None:
        self.execute("DELETE FROM {ks}.apps WHERE app_id = ?", app_id)

    # --- dynamic state ------------------------------------------------------------------------
    def put_variant_state(self, state: dict[str, Any]):
        row = dict(state)
        row["workers"] = set(row.get("workers") or ())
        return self.insert_async("variant_state", row)

    def variant_states(self) -> list[dict]:
        return self.select("SELECT * FROM {ks}.variant_state")

    def put_worker(self, row: dict[str, Any], ttl: int | None = 60):
        """A worker's heartbeat row; it expires unless renewed (default 60 s)."""
        return self.insert_async("workers", row, ttl=ttl)

    def workers(self) -> list[dict]:
        return self.select("SELECT * FROM {ks}.workers")

    def put_load_window(self, row: dict[str, Any]):
        row = {**row, "day": day_of(row["window_start"])}
        return self.insert_async("load_windows", row, ttl=self.settings.load_window_ttl_s)

    def load_windows(self, scope: str, key: str, window_s: int, day: dt.date | None = None,
                     limit: int = 100) -> list[dict]:
        day = day or day_of(now_ms())
        return self.select("SELECT * FROM {ks}.load_windows WHERE scope = ? AND key = ? AND window_s = ? "
                           "AND day = ? LIMIT ?", scope, key, window_s, day, limit)

    def put_analytics_window(self, row: dict[str, Any]):
        row = {**row, "day": day_of(row["window_start"])}
        return self.insert_async("analytics_windows", row, ttl=self.settings.load_window_ttl_s)

    def analytics_windows(self, scope: str, key: str, window_s: int, day: dt.date | None = None,
                          limit: int = 100) -> list[dict]:
        day = day or day_of(now_ms())
        return self.select("SELECT * FROM {ks}.analytics_windows WHERE scope = ? AND key = ? AND window_s = ? "
                           "AND day = ? LIMIT ?", scope, key, window_s, day, limit)

    def load_window_ttl(self, scope: str, key: str, window_s: int, window_start: int) -> int | None:
        rows = self.select("SELECT TTL(qps) AS ttl FROM {ks}.load_windows WHERE scope = ? AND key = ? "
                           "AND window_s = ? AND day = ? AND window_start = ?",
                           scope, key, window_s, day_of(window_start), window_start)
        return rows[0]["ttl"] if rows else None

    # --- scaling events and offline jobs ------------------------------------------------------
    def put_scaling_event(self, event: dict[str, Any]):
        return self.insert_async("scaling_events", {**event, "day": day_of(event["at"])})

    def scaling_events(self, since_ms: int | None = None, limit: int = 200) -> list[dict]:
        """Newest first, from the days between `since_ms` (default: today) and now."""
        since_ms = since_ms if since_ms is not None else now_ms() - 24 * 3600 * 1000
        events: list[dict] = []
        day = day_of(now_ms())
        while day >= day_of(since_ms) and len(events) < limit:
            events += self.select("SELECT * FROM {ks}.scaling_events WHERE day = ? AND at >= ? LIMIT ?",
                                  day, since_ms, limit - len(events))
            day -= dt.timedelta(days=1)
        return events

    def put_job(self, row: dict[str, Any]) -> None:
        self.insert("offline_jobs", {**row, "updated_at": now_ms()})

    def get_job(self, job_id: str) -> dict | None:
        rows = self.select("SELECT * FROM {ks}.offline_jobs WHERE job_id = ?", job_id)
        return rows[0] if rows else None

    def list_jobs(self) -> list[dict]:
        return self.select("SELECT * FROM {ks}.offline_jobs")

    def put_chunk(self, row: dict[str, Any]) -> None:
        self.insert("offline_chunks", {**row, "updated_at": now_ms()})

    def chunks(self, job_id: str) -> list[dict]:
        return self.select("SELECT * FROM {ks}.offline_chunks WHERE job_id = ?", job_id)

    def set_job_status(self, job_id: str, status: str, error: str | None = None) -> None:
        self.execute("UPDATE {ks}.offline_jobs SET status = ?, error = ?, updated_at = ? WHERE job_id = ?",
                     status, error, now_ms(), job_id)

    def claim_chunk(self, job_id: str, chunk: int, worker_id: str, lease_until: int, now: int) -> bool:
        """Take a chunk for `worker_id`: a pending one, or a running one whose lease has passed
        (its worker died). A lightweight transaction, so two workers never both win."""
        for condition, params in (("status = 'PENDING'", ()), ("status = 'RUNNING' AND lease_until < ?", (now,))):
            cql = ("UPDATE {ks}.offline_chunks SET status = 'RUNNING', worker_id = ?, lease_until = ?, "
                   f"updated_at = ? WHERE job_id = ? AND chunk = ? IF {condition}")
            rows = self.select(cql, worker_id, lease_until, now, job_id, chunk, *params)
            if rows and rows[0].get("[applied]"):
                return True
        return False

    # --- leases (one active scaler) -----------------------------------------------------------
    def take_lease(self, name: str, holder: str, ttl_s: int) -> bool:
        """Become the holder of a free lease. A lightweight transaction; the row's TTL (the
        server's clock, not ours) frees the lease of a holder that stopped renewing it."""
        rows = self.select("INSERT INTO {ks}.leases (name, holder) VALUES (?, ?) IF NOT EXISTS USING TTL ?",
                           name, holder, int(ttl_s))
        return bool(rows and rows[0].get("[applied]"))

    def renew_lease(self, name: str, holder: str, ttl_s: int) -> bool:
        """Extend a lease `holder` still holds; False once it expired or someone else took it."""
        rows = self.select("UPDATE {ks}.leases USING TTL ? SET holder = ? WHERE name = ? IF holder = ?",
                           int(ttl_s), holder, name, holder)
        return bool(rows and rows[0].get("[applied]"))

    def release_lease(self, name: str, holder: str) -> None:
        self.select("DELETE FROM {ks}.leases WHERE name = ? IF holder = ?", name, holder)


def _first_error(err: NoHostAvailable) -> str:
    errors = getattr(err, "errors", {}) or {}
    for value in errors.values():
        return str(value)
    return str(err)


# Cassandra away or too busy to answer: the same write succeeds later. (RequestExecutionException
# covers Unavailable, read/write timeouts and failures; InvalidRequest and the like are not among them.)
TRANSIENT_ERRORS = (StoreError, NoHostAvailable, OperationTimedOut, RequestExecutionException, ConnectionException,
                    OSError)


class BufferedWriter:
    """Store writes off the caller's thread: queued, retried while Cassandra is away, never blocking.

    The queue is bounded; when Cassandra stays down long enough to fill it, the oldest rows are
    dropped (and counted) — these are metrics and states that newer rows supersede. A row that
    Cassandra refuses (an invalid request: retrying cannot help) is dropped at once, counted in
    `rejected` and logged, so that it does not block the rows behind it.
    """

    def __init__(self, store: Store, capacity: int = 50_000, retry_s: float = 2.0):
        import collections
        self.store = store
        self.retry_s = retry_s
        self.dropped = 0  # oldest rows pushed out of a full queue
        self.rejected = 0  # rows refused for good (invalid)
        self.retries = 0  # transient failures, each followed by a wait of retry_s
        self.written = 0
        self._queue: collections.deque = collections.deque(maxlen=capacity)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="infaas-store-writer", daemon=True)
        self._thread.start()

    def submit(self, method: str, row: dict[str, Any]) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((method, row))
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            while self._queue and not self._stop.is_set():
                method, row = self._queue[0]
                try:
                    result = getattr(self.store, method)(row)
                    if hasattr(result, "result"):
                        result.result()
                except TRANSIENT_ERRORS as err:  # Cassandra away: keep the row, try again later
                    self.retries += 1
                    log.warning("store write %s failed (%d queued), retrying in %.0f s: %s", method,
                                len(self._queue), self.retry_s, err)
                    self.store.close()
                    self._stop.wait(self.retry_s)
                    break
                except Exception as err:  # refused for good: drop it, the rows behind it go on
                    self.rejected += 1
                    log.error("store write %s refused, row dropped (%d so far): %s: %s; row %s", method,
                              self.rejected, type(err).__name__, err, repr(row)[:300])
                else:
                    self.written += 1
                self._queue.popleft()

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2)
