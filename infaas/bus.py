"""Kafka plumbing shared by every service: client configs, producers, consumers, topics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from .errors import InfaasError
from .settings import Settings

log = logging.getLogger(__name__)
_quiet = logging.getLogger("infaas.librdkafka")


class BusError(InfaasError, RuntimeError):
    """Kafka is unreachable or refused a request."""


@dataclass(frozen=True)
class TopicSpec:
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def core_topics(settings: Settings) -> dict[str, TopicSpec]:
    """The topics every deployment has; variant and result topics are created on demand."""
    day_ms = str(24 * 3600 * 1000)
    return {
        settings.topic("queries"): TopicSpec(settings.query_partitions),
        settings.topic("deadletter"): TopicSpec(1, {"retention.ms": str(7 * 24 * 3600 * 1000)}),
        settings.topic("metrics"): TopicSpec(1, {"retention.ms": day_ms}),
        settings.topic("load"): TopicSpec(1, {"retention.ms": day_ms}),
        # Latest state per variant: compaction keeps one record per key forever.
        settings.topic("state"): TopicSpec(1, {"cleanup.policy": "compact", "segment.ms": "60000",
                                               "min.cleanable.dirty.ratio": "0.1"}),
        settings.topic("scaling"): TopicSpec(1, {"retention.ms": str(7 * 24 * 3600 * 1000)}),
        settings.topic("control"): TopicSpec(1, {"retention.ms": day_ms}),
    }


def _base(settings: Settings, **overrides) -> dict:
    conf = settings.kafka_client_config()
    conf["logger"] = _quiet  # librdkafka's connection chatter goes to logging, not stderr
    conf.update(overrides)
    return conf


def producer(settings: Settings, **overrides) -> Producer:
    """An idempotent producer tuned for low latency (queries are small and latency-bound): no
    lingering; under load, messages produced while a request is in flight still travel together."""
    conf = _base(settings, **{"enable.idempotence": True, "linger.ms": 0, "acks": "all",
                              "compression.type": "none", "message.timeout.ms": 60000,
                              "message.max.bytes": settings.max_message_bytes})
    conf.update(overrides)
    return Producer(conf)


def fetch_limits(settings: Settings) -> dict:
    """Consumer limits that let one message of the largest allowed size through."""
    most = settings.max_message_bytes
    return {"fetch.max.bytes": most + (1 << 20), "max.partition.fetch.bytes": most + (1 << 20),
            "receive.message.max.bytes": max(100_000_000, most + (2 << 20))}


def topic_limits(settings: Settings) -> dict[str, str]:
    """Topic config every infaas topic gets: its messages may be as large as the settings allow."""
    return {"max.message.bytes": str(settings.max_message_bytes)}


def consume_ready(consumer: Consumer, most: int, timeout_s: float) -> list:
    """Up to `most` messages: waits up to `timeout_s` for the first, then takes only what is already
    there. `Consumer.consume(n, timeout)` returns when n messages came or the timeout passed, so a lone
    message waits the whole timeout: a worker's LOAD command waited 200 ms (measured)."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(most - 1, 0)] if most > 1 else [first]


def consumer(settings: Settings, group_id: str, **overrides) -> Consumer:
    """A consumer that commits offsets explicitly (at-least-once)."""
    conf = _base(settings, **{"group.id": group_id, "enable.auto.commit": False,
                              "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                              "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 100,
                              "enable.partition.eof": False, **fetch_limits(settings)})
    conf.update(overrides)
    return Consumer(conf)


def subscribe_from_start(consumer: Consumer, topics: list[str], timeout_s: float = 5.0) -> None:
    """Subscribe; a partition the group never committed starts at its first message at once.

    Finding no committed offset, librdkafka applies `auto.offset.reset` only after a fixed 100 ms
    back-off: a new variant's first replica got its first query 105-200 ms after its assignment
    (measured with librdkafka's debug log). Looking the committed offsets up on assignment and naming the
    start of the log for the partitions that have none starts fetching at once (2-6 ms). Only for
    consumers that reset to the earliest offset: it is the same choice, made without the wait."""

    def on_assign(assigned: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            committed = assigned.committed(partitions, timeout=timeout_s)
        except KafkaException as err:  # librdkafka's own lookup then applies, after its back-off
            log.warning("committed offsets of %s not read (%s): starting after librdkafka's back-off", topics, err)
            return
        assigned.assign([TopicPartition(tp.topic, tp.partition,
                                        OFFSET_BEGINNING if tp.offset < 0 and tp.error is None else tp.offset)
                         for tp in committed])

    consumer.subscribe(topics, on_assign=on_assign)


def admin(settings: Settings) -> AdminClient:
    return AdminClient(_base(settings))


def broker_ids(settings: Settings, timeout: float = 2.0) -> list[int]:
    try:
        return sorted(admin(settings).list_topics(timeout=timeout).brokers)
    except KafkaException as err:
        raise BusError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {err.args[0]}") from None


def existing_topics(settings: Settings, client: AdminClient | None = None) -> set[str]:
    client = client or admin(settings)
    return set(client.list_topics(timeout=10).topics)


def ensure_topics(settings: Settings, specs: dict[str, TopicSpec], client: AdminClient | None = None,
                  timeout: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent."""
    client = client or admin(settings)
    missing = {name: spec for name, spec in specs.items() if name not in existing_topics(settings, client)}
    if not missing:
        return []
    new = [NewTopic(name, num_partitions=spec.partitions, replication_factor=settings.topic_replication_factor,
                    config={**topic_limits(settings), "min.insync.replicas": str(settings.min_insync_replicas),
                            **spec.config})
           for name, spec in missing.items()]
    created = []
    for name, future in client.create_topics(new, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as err:
            if err.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another process won the race
                raise BusError(f"cannot create topic {name}: {err.args[0].str()}") from None
    _wait_for_metadata(client, set(missing), timeout)
    return created


def _wait_for_metadata(client: AdminClient, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = client.list_topics(timeout=5).topics
        if all(name in topics and not topics[name].error for name in names):
            return
        time.sleep(0.1)
    raise BusError(f"topics {sorted(names)} were created but their metadata did not appear")


def ensure_core_topics(settings: Settings) -> list[str]:
    return ensure_topics(settings, core_topics(settings))


# --- secure mode: SCRAM principals and ACLs ---------------------------------------------------------
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
SERVICE_PRINCIPAL = "infaas-service"
ANALYTICS_RETENTION = {"retention.ms": str(7 * 24 * 3600 * 1000)}


def app_principal(app_id: str) -> str:
    return f"app-{app_id}"


def _admin_request(what: str, client: AdminClient, futures) -> None:
    """Wait for an admin request's futures (the client must live until then); a refusal names what was asked."""
    for future in futures:
        try:
            future.result(timeout=30)
        except KafkaException as err:
            error = err.args[0]
            hint = (" (this needs a principal allowed to ALTER the cluster, e.g. the local stack's admin)"
                    if "AUTHORIZATION" in error.name() else "")
            raise BusError(f"cannot {what}: {error.str()}{hint}") from None


def set_scram_password(settings: Settings, user: str, password: str) -> None:
    """Create the SCRAM-SHA-512 user, or give it a new password."""
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upsert = UserScramCredentialUpsertion(user, info, password.encode())
    client = admin(settings)
    _admin_request(f"set the SCRAM credential of {user}", client,
                   client.alter_user_scram_credentials([upsert]).values())


def authenticates(settings: Settings, timeout: float = 10.0) -> bool:
    """Do these settings' credentials log in to Kafka? False when the broker refuses them; BusError
    when it cannot be asked (unreachable)."""
    refusals: list[KafkaError] = []
    client = AdminClient({**settings.kafka_client_config(), "error_cb": refusals.append})
    try:
        client.list_topics(timeout=timeout)
        return True
    except KafkaException as err:
        client.poll(1.0)  # serves the error callback, which names an authentication failure
        if any(e.code() == KafkaError._AUTHENTICATION for e in [*refusals, err.args[0]]):
            return False
        raise BusError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {err.args[0].str()}") from None


def has_scram_user(settings: Settings, user: str) -> bool:
    client = admin(settings)
    future = client.describe_user_scram_credentials([user])[user]
    try:
        return bool(future.result(timeout=30).scram_credential_infos)
    except KafkaException as err:
        if err.args[0].name() == "RESOURCE_NOT_FOUND":
            return False
        raise BusError(f"cannot describe the SCRAM user {user}: {err.args[0].str()}") from None


def _acl(resource: str, name: str, pattern: str, principal: str, operation: str):
    return AclBinding(ResourceType[resource], name, ResourcePatternType[pattern], f"User:{principal}", "*",
                      AclOperation[operation], AclPermissionType.ALLOW)


def service_acls(settings: Settings) -> list:
    """The services (dispatcher, monitor, scaler, workers) own everything under the topic prefix:
    topics `<prefix>.*` and Faust's `<prefix>-<service>-*`, and consumer groups of either form."""
    prefix = settings.topic_prefix
    return [_acl(kind, prefix, "PREFIXED", SERVICE_PRINCIPAL, "ALL") for kind in ("TOPIC", "GROUP")]


def app_acls(settings: Settings, app_id: str) -> list:
    """An app may write queries and read its own results topic, nothing else. The prefixed rule ends
    with "." so that app `a` cannot read app `ab`'s topic (`<prefix>.results.ab`)."""
    principal, results = app_principal(app_id), settings.results_topic(app_id)
    return [_acl("TOPIC", settings.topic("queries"), "LITERAL", principal, "WRITE"),
            _acl("TOPIC", settings.topic("queries"), "LITERAL", principal, "DESCRIBE"),
            *[_acl("TOPIC", name, pattern, principal, operation)
              for name, pattern in ((results, "LITERAL"), (results + ".", "PREFIXED"))
              for operation in ("READ", "DESCRIBE")]]


def analytics_names(settings: Settings, name: str) -> tuple[str, str]:
    """An analytics app's own Faust application id (its consumer group, and the prefix of its
    changelog topics) and its output topic."""
    return f"{settings.topic_prefix}-analytics-{name}", f"{settings.topic('analytics')}.{name}"


def analytics_acls(settings: Settings, name: str, apps: list[str]) -> list:
    """A streaming-analytics principal reads the load and scaling streams and the results of the apps
    named (their own topics and their `.`-suffixed ones), and nothing else of infaas; it owns its
    Faust application's group and changelog topics, and writes (and reads) its output topic."""
    principal = app_principal(name)
    group, output = analytics_names(settings, name)
    readable = [(settings.topic("load"), "LITERAL"), (settings.topic("scaling"), "LITERAL"),
                *[(topic, pattern) for app in apps
                  for topic, pattern in ((settings.results_topic(app), "LITERAL"),
                                         (settings.results_topic(app) + ".", "PREFIXED"))]]
    return [*[_acl("TOPIC", topic, pattern, principal, operation)
              for topic, pattern in readable for operation in ("READ", "DESCRIBE")],
            _acl("GROUP", group, "LITERAL", principal, "READ"),
            _acl("TOPIC", group + "-", "PREFIXED", principal, "ALL"),
            *[_acl("TOPIC", output, "LITERAL", principal, operation) for operation in ("WRITE", "READ", "DESCRIBE")]]


def provision_analytics(settings: Settings, name: str, apps: list[str]) -> list[str]:
    """An analytics principal's ACLs and output topic (idempotent); returns the topics created."""
    create_acls(settings, analytics_acls(settings, name, apps))
    return ensure_topics(settings, {analytics_names(settings, name)[1]: TopicSpec(1, ANALYTICS_RETENTION)})


def create_acls(settings: Settings, bindings: list) -> None:
    """Add ACLs (adding one that exists is a no-op)."""
    client = admin(settings)
    _admin_request("create ACLs", client, client.create_acls(bindings).values())


def delete_principal_acls(settings: Settings, principal: str) -> None:
    """Remove every ACL that names the principal (an app's, whatever kind of app it was)."""
    client = admin(settings)
    anything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{principal}", None,
                                AclOperation.ANY, AclPermissionType.ANY)
    _admin_request("delete ACLs", client, client.delete_acls([anything]).values())


def provision_app(settings: Settings, app_id: str) -> list[str]:
    """An app's results topic and ACLs (idempotent); returns the topics created. Its SCRAM password
    is set separately (`set_scram_password`), only when someone asks to see it."""
    create_acls(settings, app_acls(settings, app_id))
    return ensure_topics(settings, {settings.results_topic(app_id): TopicSpec(settings.result_partitions)})


def delete_prefixed_topics(settings: Settings) -> list[str]:
    """Delete every topic under the settings' prefix (a benchmark's or a test's own topics)."""
    client = admin(settings)
    ours = [t for t in existing_topics(settings, client) if t.startswith(settings.topic_prefix + ".")]
    if ours:
        for future in client.delete_topics(ours, operation_timeout=30).values():
            future.result()
    return ours


# --- consumer groups --------------------------------------------------------------------------------
def committed_total(consumer, partitions: list, timeout_s: float = 30.0) -> int:
    """The sum of a group's committed offsets over `partitions` (none committed counts 0). Retried while
    the group's coordinator is not ready: on a new broker the offsets topic is still being created."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
        except KafkaException as err:
            transient = err.args[0].retriable() or err.args[0].code() == KafkaError.NOT_COORDINATOR
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def committed_offsets(settings: Settings, group_id: str, topic: str, partitions: list[int]) -> dict[int, int | None]:
    """Where a group resumes reading each partition: its committed offset, or None when it has
    none (or the broker cannot say). Read without joining the group, in one request."""
    probe = consumer(settings, group_id)
    try:
        found = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=5)
        return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in found}
    except KafkaException:
        return dict.fromkeys(partitions)
    finally:
        probe.close()


def resume_offsets(settings: Settings, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """Where the group reads each partition from next: its committed offset, or the log's first
    offset where it has committed nothing (our consumers reset to the earliest). Read without joining
    the group. Raises BusError when the broker cannot say: unlike `committed_offsets`, whose None
    reads as "nothing committed", a caller checking for skipped messages must not guess."""
    probe = consumer(settings, group_id)
    try:
        offsets = {}
        for tp in probe.committed([TopicPartition(topic, p) for p in partitions], timeout=5):
            if tp.error is not None:
                raise BusError(f"no committed offset of {topic}[{tp.partition}] for {group_id}: {tp.error}")
            if tp.offset >= 0:
                offsets[tp.partition] = tp.offset
            else:
                offsets[tp.partition] = probe.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=5)[0]
        return offsets
    except KafkaException as err:
        raise BusError(f"cannot read where {group_id} resumes {topic}: {err}") from err
    finally:
        probe.close()


def read_range(settings: Settings, topic: str, partition: int, start: int, end: int,
               timeout_s: float = 10.0) -> list:
    """The messages at offsets [start, end) of one partition, read without joining a group: what a
    consumer skipped. Fewer when the log no longer holds them or the broker does not answer in time."""
    reader = consumer(settings, f"{settings.topic_prefix}.range-reader")
    found = []
    try:
        reader.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in reader.consume(500, 0.5):
                if message.error() is not None:
                    continue
                if start <= message.offset() < end:
                    found.append(message)
                if message.offset() >= end - 1:
                    return found
    finally:
        reader.close()
    return found


def uncommitted_queries(settings: Settings, variant_id: str, probe=None) -> int:
    """Queries in the variant's topic its consumer group has not committed: what leaving the group
    now could strand. Read from the broker, not from the replicas' positions, which read 0 while a
    rebalance has taken their partitions away. Unknown (broker away) counts as not empty.
    `probe`: a consumer from `group_probe` to reuse across calls (one is opened otherwise)."""
    topic = settings.variant_topic(variant_id)
    own = probe is None
    probe = group_probe(settings, variant_id) if own else probe
    try:
        partitions = probe.list_topics(topic, timeout=5).topics[topic].partitions
        committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=5)
        backlog = 0
        for tp in committed:
            low, high = probe.get_watermark_offsets(tp, timeout=5)
            backlog += high - (tp.offset if tp.offset >= 0 else low)
        return backlog
    except KafkaException:
        return 1
    finally:
        if own:
            probe.close()


def group_probe(settings: Settings, variant_id: str):
    """A consumer with the variant group's id that never subscribes, so it never joins the group."""
    return consumer(settings, settings.variant_topic(variant_id))
