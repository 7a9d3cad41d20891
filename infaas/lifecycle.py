"""Removing what was registered: `infaas models delete MODEL [--version N]` and `infaas app delete APP`.

Deleting a model (all its versions, or its newest) goes in an order that loses no query:
1. its variant rows go, so dispatchers and the scaler stop choosing them at their next catalogue
   refresh (every `CATALOG_GRACE_S` at most), and the gateway reports the name unknown;
2. a worker that sees a hosted variant gone from the catalogue drains and unloads it on its own; after
   that grace, every worker still hosting one is also told to UNLOAD it: a worker first serves what is
   queued for the variant (drain), then unloads;
3. once no worker reports hosting any of them, the rows left (profiles, model versions, the task if it
   has no model left) and the repository objects nobody else references are removed, and the
   variants' topics deleted.
Deleting an older version (not the newest) only removes that version's model row and objects: its
variants were already replaced by the newer version's when that was registered.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from . import bus
from .errors import InfaasError
from .repository import Repository
from .schemas.codec import default_codec
from .settings import Settings
from .store import Store, now_ms

CATALOG_GRACE_S = 6.0  # the services refresh their catalogue every 5 s
UNLOAD_TIMEOUT_S = 120.0


class LifecycleError(InfaasError, ValueError):
    """What was asked cannot be done; the message says why."""


@dataclass
class Deletion:
    model: str
    versions: list[int]
    variants: list[str] = field(default_factory=list)
    unloaded_from: dict[str, list[str]] = field(default_factory=dict)  # variant -> workers told to unload
    objects_removed: int = 0
    topics_deleted: list[str] = field(default_factory=list)
    task_removed: bool = False


def delete_model(settings: Settings, model: str, version: int | None = None,
                 say: Callable[[str], None] = lambda _msg: None) -> Deletion:
    with Store(settings) as store:
        versions = store.model_versions(model)
        if not versions:
            raise LifecycleError(f"no model {model!r} is registered")
        newest = versions[0]["version"]
        if version is not None and version not in {v["version"] for v in versions}:
            raise LifecycleError(f"model {model!r} has no version {version} (it has "
                                 f"{', '.join(str(v['version']) for v in versions)})")
        if version is not None and version == newest and len(versions) > 1:
            raise LifecycleError(f"version {version} is the newest of {model!r}, which serves it: delete the "
                                 "whole model, or register a newer version first")
        doomed = [v["version"] for v in versions if version is None or v["version"] == version]
        task = versions[0]["task"]
        infos = [store.get_model(model, v) for v in doomed]
        deletion = Deletion(model, doomed)
        variants = store.variants_for_model(task, model) if newest in doomed else []
        deletion.variants = [v.variant_id for v in variants]
        if variants:
            hosting = _hosting(store, set(deletion.variants))  # workers may unload on their own from now on
            store.delete_variants(task, deletion.variants)
            say(f"{len(variants)} variants out of the catalogue; waiting {CATALOG_GRACE_S:g} s for the services "
                "to refresh theirs")
            time.sleep(CATALOG_GRACE_S)  # no service is told; each rereads the catalogue on its own clock
            for variant, workers in _unload_everywhere(settings, store, set(deletion.variants), say).items():
                hosting[variant] = sorted(set(hosting.get(variant, [])) | set(workers))
            deletion.unloaded_from = hosting
            store.delete_profiles({v.base_id for v in variants})
        for number in doomed:
            store.delete_model(task, model, number)
        if not store.models_for_task(task):
            store.delete_task(task)
            deletion.task_removed = True
        referenced = _referenced_objects(store)
    repository = Repository.from_settings(settings)
    candidates = {v.artifact for v in variants} | {a for i in infos if i for a in (i.artifact, i.validation_artifact)}
    for url in sorted(candidates - referenced - {""}):
        repository.delete(url)
        deletion.objects_removed += 1
    deletion.topics_deleted = _delete_topics(settings, [settings.variant_topic(v) for v in deletion.variants])
    return deletion


def _unload_everywhere(settings: Settings, store: Store, variants: set[str],
                       say: Callable[[str], None]) -> dict[str, list[str]]:
    """UNLOAD each variant on every worker hosting it; wait until none reports hosting it."""
    hosting = _hosting(store, variants)
    codec, producer = default_codec(), bus.producer(settings)
    for variant, workers in hosting.items():
        for worker_id in workers:
            command = {"command_id": uuid.uuid4().hex, "at": now_ms(), "action": "UNLOAD", "worker_id": worker_id,
                       "hardware": None, "variant_id": variant, "replicas": 0, "reason": "model deleted"}
            producer.produce(settings.topic("control"), key=worker_id.encode(),
                             value=codec.encode("WorkerCommand", command))
    producer.flush(30)
    if hosting:
        say(f"draining and unloading {sum(map(len, hosting.values()))} replica set(s) ...")
    deadline = time.monotonic() + UNLOAD_TIMEOUT_S
    while _hosting(store, variants):
        if time.monotonic() > deadline:
            raise LifecycleError(f"workers still host {sorted(_hosting(store, variants))} after "
                                 f"{UNLOAD_TIMEOUT_S:g} s; run the deletion again")
        time.sleep(0.5)
    return hosting


def _hosting(store: Store, variants: set[str]) -> dict[str, list[str]]:
    """Variant -> workers whose last report (the workers table, 1 s heartbeats) says they host it."""
    hosting: dict[str, list[str]] = {}
    for worker in store.workers():
        for variant, replicas in (worker.get("variants") or {}).items():
            if variant in variants and replicas:
                hosting.setdefault(variant, []).append(worker["worker_id"])
    return hosting


def _referenced_objects(store: Store) -> set[str]:
    """Repository objects still named by a row (objects are content-addressed, so shared)."""
    urls = {v.artifact for v in store.all_variants()}
    for model in store.list_models():
        urls |= {model.artifact, model.validation_artifact}
    return urls


def _delete_topics(settings: Settings, topics: list[str]) -> list[str]:
    client = bus.admin(settings)
    present = [t for t in topics if t in bus.existing_topics(settings, client)]
    if present:
        for future in client.delete_topics(present, operation_timeout=30).values():
            future.result()
    return present


def delete_app(settings: Settings, app_id: str) -> list[str]:
    """Remove an app that owns no model: its row, its results topics or its analytics output and
    changelog topics (on a secure stack also every ACL of its principal). Returns the topics deleted."""
    with Store(settings) as store:
        if store.get_app(app_id) is None:
            raise LifecycleError(f"no app {app_id!r}")
        owned = sorted({m.model for m in store.list_models() if m.app_id == app_id})
        if owned:
            raise LifecycleError(f"app {app_id!r} owns model(s) {', '.join(owned)}: delete them first "
                                 "(`infaas models delete MODEL`)")
        store.delete_app(app_id)
    own, (analytics_group, analytics_output) = settings.results_topic(app_id), bus.analytics_names(settings, app_id)
    topics = [t for t in bus.existing_topics(settings) if t in (own, analytics_output)
              or t.startswith((own + ".", analytics_group + "-"))]  # an analytics app's changelogs too
    if settings.kafka_sasl_mechanism:
        bus.delete_principal_acls(settings, bus.app_principal(app_id))
    return _delete_topics(settings, topics)
