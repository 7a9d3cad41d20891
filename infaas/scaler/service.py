"""The scaler: every interval, decide with the scaling policy and carry the actions out.

It sees what the dispatcher sees (variant states from `infaas.state`, worker reports from
`infaas.metrics`, the catalogue), adds its own recent demand history and the effects of its own
actions not yet visible in reports (replicas being loaded or removed, workers starting), calls
`policies.decide`, and executes each action: replicas and variants through `WorkerCommand`s on
`infaas.control`, workers through a backend (local processes, EC2 Auto Scaling, Kubernetes).
Every action, with its reason, goes to `infaas.scaling` and to Cassandra (`scaling_events`).

Active/standby: only the holder of the `scaler` lease (a Cassandra lightweight transaction with a
TTL) acts; any other scaler watches the same streams and takes over once the lease expires, within
`LEASE_TTL_S` + one interval of the leader's death. Recovery: a worker that stopped reporting (or,
with the local backend, whose process ended) is gone. Its replicas are placed again at once on a
worker with room, else on a replacement worker; a backend that owns processes (local) starts that
replacement, a cloud group or Deployment replaces its instances itself. Recovery does not wait
for the policy's worker back-off or its scale-down hysteresis.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field

from .. import bus, metrics
from ..errors import InfaasError
from ..policies import actions as kinds
from ..policies import execution
from ..policies.actions import Action
from ..policies.baselines import BaselinePlan, initial_actions
from ..policies.monitoring import track
from ..policies.scaling import REPLICA_ONLY, decide
from ..policies.snapshot import ACTIVE, PolicyConfig, Snapshot, WorkerLive
from ..schemas.codec import default_codec
from ..schemas.messages import WorkerCommand
from ..settings import Settings
from ..store import BufferedWriter, Store
from ..views import SystemView

log = logging.getLogger(__name__)

DEMAND_HISTORY = 120  # ticks of demand kept per variant
STALE_AFTER_S = 3.0  # no decisions on observations older than this
FRESH_FOR_S = 3.0  # after reports resume (Kafka back), judge silent workers only once all had time to report
LEASE_NAME = "scaler"
LEASE_TTL_S = 5  # a dead leader's lease is free this long after its last renewal
LEASE_MARGIN_S = 2.0  # a leader that cannot renew stops acting this long before its lease may expire
FORGET_AFTER_MS = 60_000  # a gone or retired worker is forgotten this long after (if it reports again: a worker)
INITIAL_WORKERS_WAIT_S = 3.0  # how long a new leader waits for reports before starting initial workers


class ScalerError(InfaasError):
    """The scaler cannot run as asked (e.g. a baseline policy without its plan)."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class WorkerSpec:
    """The workers to have at the start (local backend): started unless already reporting, e.g.
    when a restarted or standby scaler takes over the workers of the previous leader."""
    count: int = 0
    hardware: str = "cpu"
    preload: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)  # more `infaas worker` arguments
    ready_timeout_s: float = 120.0


class Lease:
    """The scaler lease: taken when free, renewed every interval while held."""

    def __init__(self, store: Store, name: str = LEASE_NAME, ttl_s: int = LEASE_TTL_S):
        self.store, self.name, self.ttl_s = store, name, ttl_s
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.held = False
        self._valid_until = 0.0

    def hold(self) -> bool:
        """Whether we hold the lease now (taking or renewing it)."""
        asked = time.monotonic()
        try:
            self.held = (self.held and self.store.renew_lease(self.name, self.holder, self.ttl_s)) or \
                self.store.take_lease(self.name, self.holder, self.ttl_s)
        except Exception as err:  # Cassandra away: hold on only while the lease surely has not expired
            self.held = self.held and time.monotonic() < self._valid_until
            log.warning("scaler lease not renewed (%s); %s", err, "still held" if self.held else "not held")
            return self.held
        if self.held:
            self._valid_until = asked + self.ttl_s - LEASE_MARGIN_S
        return self.held

    def release(self) -> None:
        if self.held:
            try:
                self.store.release_lease(self.name, self.holder)
            except Exception as err:  # it expires by itself
                log.warning("scaler lease not released: %s", err)
        self.held = False
        self.store.close()


@dataclass
class Expectation:
    """An action sent to a worker whose effect its reports do not show yet."""
    variant_id: str
    worker_id: str
    replicas: int  # replicas of the variant this worker should host
    until_ms: int


class Scaler:
    def __init__(self, settings: Settings, config: PolicyConfig, policy: str, backend,
                 plan: BaselinePlan | None = None, interval_s: float = 1.0, workers: WorkerSpec | None = None,
                 lease: Lease | None = None):
        self.settings, self.config, self.policy, self.backend, self.plan = settings, config, policy, backend, plan
        self.interval_s = interval_s
        self.initial_workers = workers or WorkerSpec()
        self.lease = lease  # None: always active (a single scaler, or tests)
        self.leading = False
        self.known: dict[str, WorkerLive] = {}  # workers seen reporting, to notice the ones that go silent
        self.gone: dict[str, int] = {}  # worker id -> when it was found gone (kept out of the snapshot)
        self.recovering: list[tuple[str, str]] = []  # (variant, hardware) replicas of gone workers
        self._fresh_since = 0.0  # monotonic: since when reports have been arriving
        self.view = SystemView(settings, honor_retirements=False, estimate_queues=False)
        self.codec = default_codec()
        self.producer = bus.producer(settings)
        self.writer = BufferedWriter(Store(settings))
        self.previous: Snapshot | None = None
        self.last_worker_action_ms: dict[tuple[str, str], int] = {}  # (hardware, up | down) -> ms: back-off per kind
        self.demand: dict[str, deque] = defaultdict(lambda: deque(maxlen=DEMAND_HISTORY))
        self.expected: list[Expectation] = []
        self.unplaced: list[tuple[str, str]] = []  # (variant, hardware) replicas waiting for a worker
        self.starting: dict[str, tuple[str, int]] = {}  # worker id -> (hardware, requested at)
        self.stopping: dict[str, int] = {}  # worker id -> asked to stop at
        self.retiring: dict[str, str] = {}  # source variant -> the variant its traffic moved to
        self.first_seen: dict[str, int] = {}  # variant -> when reports first showed it loaded (ms)
        self._stop = threading.Event()

    # --- the loop -----------------------------------------------------------------------------
    def start(self) -> Scaler:
        self.view.start()
        self.lead()
        return self

    def lead(self) -> bool:
        """Whether this scaler is the active one now; on becoming it, take over (initial workers,
        the plan's initial actions)."""
        held = self.lease is None or self.lease.hold()
        if held and not self.leading:
            self.leading = True
            log.info("scaler active (lease %s)", self.lease.holder if self.lease else "not used")
            self._take_over()
        elif self.leading and not held:
            self.leading = False
            log.warning("scaler lease lost: standing by")
        return self.leading

    def _take_over(self) -> None:
        self._ensure_initial_workers()
        if self.plan is not None:
            self._wait_for_workers(10.0)
            for action in initial_actions(self.plan, self.view.catalog.variants, self.config):
                self.execute(action, self.snapshot())

    def _ensure_initial_workers(self) -> None:
        spec = self.initial_workers
        if spec.count <= 0 or not hasattr(self.backend, "wait_ready"):
            return  # a cloud group or Deployment has its own minimum
        deadline = time.monotonic() + INITIAL_WORKERS_WAIT_S  # workers that already run report within a second
        while time.monotonic() < deadline and self._reporting(spec.hardware) < spec.count:
            time.sleep(0.2)
        missing = spec.count - self._reporting(spec.hardware)
        if missing <= 0:
            return
        started = self.backend.start_workers(spec.hardware, missing, spec.preload)
        log.info("started %d initial %s worker(s): %s", missing, spec.hardware, ", ".join(started))
        for worker_id in started:  # coming until they report: replicas waiting for them need no other worker
            self.starting[worker_id] = (spec.hardware, now_ms())
        self.backend.wait_ready(started, spec.ready_timeout_s)

    def _reporting(self, hardware: str) -> int:
        return sum(1 for w in self.view.snapshot.workers.values() if w.hardware == hardware)

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.lead():
                    self.tick()
            except Exception:  # a bad tick must not end scaling
                log.exception("scaler tick failed")

    def stop(self) -> None:
        self._stop.set()
        self.view.stop()
        if self.lease is not None:
            self.lease.release()
        self.producer.flush(5)
        self.writer.close()

    def tick(self) -> list[Action]:
        if STALE_AFTER_S < self.view.observed_age_s < float("inf"):
            # Reports stopped: what we see is old, and acting on it (e.g. "no demand: remove
            # replicas") would be wrong. Never having had a report is different: a fresh
            # deployment may have no worker yet, and the policy must be able to add one.
            if not self._kafka_reachable():
                self._fresh_since = 0.0
                return []
            # Kafka answers, so every worker went silent (e.g. the only one froze): recover only.
            self._fresh_since = self._fresh_since or time.monotonic()
            self._recover()
            self._place_unplaced(self.snapshot())
            return []
        self._fresh_since = self._fresh_since or time.monotonic()
        self._recover()
        self._place_unplaced(self.snapshot())  # first: the policy then sees only what still has no room
        snapshot = track(self.previous, self.snapshot(), self.config)
        actions = decide(snapshot, self.config, self.policy, self.last_worker_action_ms, self.plan)
        for action in actions:
            self.execute(action, snapshot)
        self._retire(snapshot)
        self.previous = snapshot
        return actions

    # --- recovery -----------------------------------------------------------------------------
    def _kafka_reachable(self) -> bool:
        try:
            self.producer.list_topics(self.settings.topic("metrics"), timeout=2.0)
            return True
        except Exception:  # KafkaException: the broker does not answer
            return False

    def _recover(self) -> None:
        """Find the workers that are gone without being asked to stop, and replace them."""
        exited = self.backend.exited() if hasattr(self.backend, "exited") else {}
        reporting = self.view.snapshot.workers
        settled = time.monotonic() - self._fresh_since >= FRESH_FOR_S
        for worker_id, worker in list(self.known.items()):
            if worker_id in self.stopping:
                del self.known[worker_id]  # retired by us: not a failure
            elif worker_id in exited or (settled and worker_id not in reporting):
                del self.known[worker_id]
                self._replace(worker, exited.get(worker_id, "it stopped reporting"))
        now = now_ms()
        for worker_id, since in list(self.gone.items()):
            if now - since > FORGET_AFTER_MS:
                del self.gone[worker_id]  # back (a long pause, not a crash): a worker again; or never back
        for worker_id, since in list(self.stopping.items()):
            if worker_id not in reporting and now - since > FORGET_AFTER_MS:
                del self.stopping[worker_id]  # stopped: an autoscaled deployment retires workers all the time
        self.known.update({wid: w for wid, w in reporting.items() if wid not in self.gone and wid not in exited})

    def _replace(self, worker: WorkerLive, cause: str) -> None:
        self.gone[worker.worker_id] = now_ms()
        self.expected = [e for e in self.expected if e.worker_id != worker.worker_id]
        replicas = [(vid, worker.hardware) for vid, n in worker.variants.items() for _ in range(n)]
        self.recovering += replicas
        reason = f"replacing {worker.worker_id}, gone ({cause}) with {len(replicas)} replica(s)"
        log.warning(reason)
        if getattr(self.backend, "replaces_crashed", False):
            action = Action(kinds.ADD_WORKER, reason, hardware=worker.hardware, from_count=0, to_count=1)
            self.execute(action, self.view.snapshot)
        # The replicas waiting for a worker must not make the policy add another one as well.
        self.last_worker_action_ms[(worker.hardware, "up")] = now_ms()

    def _wait_for_workers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.view.snapshot.workers and time.monotonic() < deadline:
            time.sleep(0.2)

    # --- what the policy sees -----------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        base = self.view.snapshot
        now = now_ms()
        for variant_id, variant_live in base.live.items():
            self.demand[variant_id].append(variant_live.qps)  # queries/s; the policies multiply by rows per query
        workers = {wid: w for wid, w in base.workers.items() if wid not in self.stopping and wid not in self.gone}
        for worker_id, (hardware, since) in list(self.starting.items()):
            if worker_id in workers or now - since > 3 * self.config.worker_start_s * 1000:
                del self.starting[worker_id]  # it reports now (or never will)
            else:
                workers[worker_id] = WorkerLive(worker_id, hardware, started_at_ms=since, ready=False)
        live = self._replicas_from_reports(base, workers)
        self.expected = [e for e in self.expected if e.until_ms > now and self._pending(e, workers)]
        for e in self.expected:
            shown = workers[e.worker_id].variants.get(e.variant_id, 0) if e.worker_id in workers else 0
            state = live.get(e.variant_id) or self.view.snapshot.live_of(e.variant_id)
            change = e.replicas - shown
            live[e.variant_id] = dataclasses.replace(
                state, replicas=max(state.replicas + change, 0), loading=state.loading + max(change, 0),
                status=ACTIVE if state.replicas + change > 0 else state.status,
                loaded_at_ms=state.loaded_at_ms or now)
        # Replicas waiting for a worker that is already starting (a lost worker's replacement, or one the
        # policy added) are not shown as without room: the policy would add a second worker for them
        # (one crash, one replacement). Once it is up, what still finds no room shows again.
        coming = {hardware for hardware, _ in self.starting.values()}
        waiting = [(vid, hw) for vid, hw in self.unplaced + self.recovering if hw not in coming]
        for variant_id, _ in waiting:
            state = live.get(variant_id) or self.view.snapshot.live_of(variant_id)
            live[variant_id] = dataclasses.replace(state, unplaced=state.unplaced + 1)
        demand = {vid: tuple(history) for vid, history in self.demand.items()}
        return base.with_changes(live=live, workers=workers, at_ms=now, demand=demand)

    def _replicas_from_reports(self, base: Snapshot, workers: dict[str, WorkerLive]) -> dict:
        """Replicas as the workers' own reports show them. The monitor's state lags them by a
        second or more, and acting on its older count (e.g. removing a replica already removed)
        could take a variant's last replica."""
        hosting: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for worker_id, worker in workers.items():
            for variant_id, count in worker.variants.items():
                if count > 0:
                    hosting[variant_id].append((worker_id, count))
        live = dict(base.live)
        for variant_id, state in base.live.items():
            if variant_id not in hosting and state.replicas > 0 and workers:
                live[variant_id] = dataclasses.replace(state, replicas=0, workers=())
        for variant_id in set(self.first_seen) - set(hosting):
            del self.first_seen[variant_id]  # unloaded: a later load starts a new idle clock
        for variant_id, hosts in hosting.items():
            state = base.live_of(variant_id)
            loaded_at = state.loaded_at_ms or self.first_seen.setdefault(variant_id, base.at_ms or now_ms())
            live[variant_id] = dataclasses.replace(state, replicas=sum(n for _, n in hosts),
                                                   workers=tuple(w for w, _ in hosts), loaded_at_ms=loaded_at)
        return live

    @staticmethod
    def _pending(expectation: Expectation, workers: dict[str, WorkerLive]) -> bool:
        worker = workers.get(expectation.worker_id)
        return worker is None or not worker.ready or worker.variants.get(expectation.variant_id, 0) != \
            expectation.replicas

    # --- carrying actions out -----------------------------------------------------------------
    def execute(self, action: Action, snapshot: Snapshot) -> None:
        handler = {kinds.ADD_REPLICA: self._add_replica, kinds.REMOVE_REPLICA: self._remove_replica,
                   kinds.LOAD_VARIANT: self._add_replica, kinds.UNLOAD_VARIANT: self._unload,
                   kinds.UPGRADE_VARIANT: self._move, kinds.DOWNGRADE_VARIANT: self._move,
                   kinds.ADD_WORKER: self._add_workers, kinds.REMOVE_WORKER: self._remove_worker}[action.kind]
        try:
            handler(action, snapshot)
        except Exception as err:  # e.g. the cloud API refused: record it, go on
            log.exception("action %s failed", action.kind)
            action = dataclasses.replace(action, reason=f"{action.reason} [FAILED: {err}]")
        self._record(action, snapshot)

    def _hosted(self, snapshot: Snapshot, worker_id: str, variant_id: str) -> int:
        worker = snapshot.workers.get(worker_id)
        pending = [e.replicas for e in self.expected if e.worker_id == worker_id and e.variant_id == variant_id]
        if pending:
            return pending[-1]
        return worker.variants.get(variant_id, 0) if worker else 0

    def _set_replicas(self, snapshot: Snapshot, variant_id: str, worker_id: str, replicas: int, reason: str) -> None:
        self._command("SET_REPLICAS", worker_id, variant_id, replicas, reason)
        self.expected = [e for e in self.expected if (e.variant_id, e.worker_id) != (variant_id, worker_id)]
        variant = snapshot.variants.get(variant_id)
        settle_ms = int(max(variant.load_ms if variant else 0.0, 1000.0) * 3 + 10_000)
        self.expected.append(Expectation(variant_id, worker_id, replicas, now_ms() + settle_ms))

    def _add_replica(self, action: Action, snapshot: Snapshot) -> None:
        variant = snapshot.variants.get(action.variant_id or "")
        hardware = action.hardware or (variant.hardware if variant else "")
        worker_id = execution.worker_for(snapshot, variant, action.worker_id) if variant else None
        if worker_id is None or not snapshot.workers[worker_id].ready:  # a starting worker: once it is up
            self.unplaced.append((action.variant_id, hardware))
            return
        count = self._hosted(snapshot, worker_id, action.variant_id) + 1
        self._set_replicas(snapshot, action.variant_id, worker_id, count, action.reason)

    def _place_unplaced(self, snapshot: Snapshot) -> None:
        """Replicas that wait for a worker go where `execution.worker_for` finds room, a lost worker's
        first: they go at once to a ready worker with room, else wait (as unplaced) for the replacement."""
        recovering, self.recovering = self.recovering, []
        waiting, self.unplaced = self.unplaced, []
        snapshot = self._place(snapshot, recovering, "recovery: a replica of a gone worker")
        self._place(snapshot, waiting, "placing a replica that waited for a worker")

    def _place(self, snapshot: Snapshot, waiting: list[tuple[str, str]], reason: str) -> Snapshot:
        """Place what finds room (the rest waits on in `unplaced`); the snapshot with the replicas placed."""
        for variant_id, hardware in waiting:
            variant = snapshot.variants.get(variant_id)
            worker_id = execution.worker_for(snapshot, variant) if variant else None
            if worker_id is None or not snapshot.workers[worker_id].ready:  # a starting worker: once it is up
                self.unplaced.append((variant_id, hardware))
                continue
            count = self._hosted(snapshot, worker_id, variant_id) + 1
            self._set_replicas(snapshot, variant_id, worker_id, count, reason)
            snapshot = execution.with_replica(snapshot, worker_id, variant_id)  # the next ones see its units taken
        return snapshot

    def _remove_replica(self, action: Action, snapshot: Snapshot) -> None:
        worker_id = action.worker_id or next(iter(snapshot.live_of(action.variant_id).workers), None)
        if worker_id is None:  # only waiting replicas: drop one of them
            waiting = [i for i, (vid, _) in enumerate(self.unplaced) if vid == action.variant_id]
            if waiting:
                del self.unplaced[waiting[0]]
            return
        count = max(self._hosted(snapshot, worker_id, action.variant_id) - 1, 0)
        self._set_replicas(snapshot, action.variant_id, worker_id, count, action.reason)

    def _unload(self, action: Action, snapshot: Snapshot) -> None:
        self.unplaced = [u for u in self.unplaced if u[0] != action.variant_id]
        for worker_id in snapshot.live_of(action.variant_id).workers:
            self._set_replicas(snapshot, action.variant_id, worker_id, 0, action.reason)

    def _move(self, action: Action, snapshot: Snapshot) -> None:
        """Upgrade/downgrade: load the target; the source retires once its queue is served."""
        target = dataclasses.replace(action, kind=kinds.ADD_REPLICA, variant_id=action.target_variant_id)
        self._add_replica(target, snapshot)
        self.retiring[action.variant_id] = action.target_variant_id

    def _retire(self, snapshot: Snapshot) -> None:
        for source, target in list(self.retiring.items()):
            source_live = snapshot.live_of(source)
            if execution.retire_now(source_live, snapshot.live_of(target)):
                del self.retiring[source]
                reason = f"retired: its traffic moved to {target} and its queue is served"
                action = Action(kinds.UNLOAD_VARIANT, reason, source, from_count=source_live.replicas, to_count=0)
                self.execute(action, snapshot)

    def _add_workers(self, action: Action, snapshot: Snapshot) -> None:
        count = max(action.to_count - action.from_count, 1)
        for worker_id in self.backend.start_workers(action.hardware, count) or []:
            self.starting[worker_id] = (action.hardware, now_ms())
        self.last_worker_action_ms[(action.hardware, "up")] = now_ms()

    def _remove_worker(self, action: Action, snapshot: Snapshot) -> None:
        if not self.backend.stop_worker(action.worker_id):
            self._command("STOP", action.worker_id, None, 0, action.reason)  # a worker we did not start
        self.stopping[action.worker_id] = now_ms()
        self.last_worker_action_ms[(action.hardware or "", "down")] = now_ms()

    def _command(self, kind: str, worker_id: str | None, variant_id: str | None, replicas: int, reason: str) -> None:
        command = WorkerCommand(command_id=uuid.uuid4().hex, at=now_ms(), action=kind, worker_id=worker_id,
                                hardware=None, variant_id=variant_id, replicas=replicas, reason=reason)
        self.producer.produce(self.settings.topic("control"), key=(worker_id or "").encode(),
                              value=command.encode(self.codec))
        self.producer.poll(0)

    def _record(self, action: Action, snapshot: Snapshot) -> None:
        variant = snapshot.variants.get(action.variant_id or action.target_variant_id or "")
        scaling_event = action.as_event(self.policy, now_ms(), uuid.uuid4().hex, variant.task if variant else None)
        log.info("%s %s: %s", action.kind, action.variant_id or action.worker_id or action.hardware, action.reason)
        self.producer.produce(self.settings.topic("scaling"), key=(action.variant_id or "").encode(),
                              value=scaling_event.encode(self.codec))
        self.producer.poll(0)
        event = scaling_event.to_record()
        self.writer.submit("put_scaling_event", event)
        metrics.SCALING_ACTIONS.labels(action.kind).inc()


def load_plan(path: str) -> BaselinePlan:
    """A baseline plan file: {"policy": ..., "variants": {task: variant}, "replicas": {task: n}}."""
    import json
    with open(path) as handle:
        data = json.load(handle)
    return BaselinePlan(data["policy"], data["variants"], {k: int(v) for k, v in data["replicas"].items()},
                        data.get("notes", {}))


def make_backend(name: str, settings: Settings, options: dict[str, str] | None = None,
                 worker_args: list[str] | None = None):
    from .backends import AwsBackend, KubernetesBackend, LocalBackend
    options = options or {}
    if name == "local":
        return LocalBackend(settings.state_dir / "logs" / "scaler-workers", worker_args=worker_args)
    groups = {k[len("asg."):]: v for k, v in options.items() if k.startswith("asg.")}
    if name == "aws":
        return AwsBackend(groups, region=options.get("region"))
    if name == "kubernetes":
        deployments = {k[len("deployment."):]: v for k, v in options.items() if k.startswith("deployment.")}
        return KubernetesBackend(deployments, namespace=options.get("namespace", "infaas"))
    raise ValueError(f"unknown backend {name!r}: local, aws or kubernetes")


def run(settings: Settings, policy: str, backend_name: str, plan_path: str | None, interval_s: float,
        config: PolicyConfig, backend_options: dict[str, str] | None = None, workers: WorkerSpec | None = None) -> int:
    """`infaas scaler`: scale until SIGINT/SIGTERM (active, or standby while another holds the lease)."""
    import signal
    if policy == REPLICA_ONLY and not plan_path:
        raise ScalerError("the replica-only policy scales a fixed variant per task: give it with --plan PLAN.json "
                          '({"policy": ..., "variants": {task: variant}, "replicas": {task: n}}), as `infaas bench '
                          "trace` writes one")
    plan = load_plan(plan_path) if plan_path else None
    workers = workers or WorkerSpec()
    backend = make_backend(backend_name, settings, backend_options, workers.args)
    scaler = Scaler(settings, config, policy, backend, plan, interval_s, workers, Lease(Store(settings)))
    signal.signal(signal.SIGTERM, lambda *_: scaler._stop.set())
    scaler.start()
    metrics.track_backlog(scaler.writer)
    metrics.mark_ready()
    role = "active" if scaler.leading else "standby"
    print(f"infaas scaler ready ({role}, policy {policy}, backend {backend_name}, every {interval_s:g} s)",
          flush=True)
    try:
        scaler.run()
    except KeyboardInterrupt:
        pass
    finally:
        scaler.stop()
        backend.close()
    return 0
