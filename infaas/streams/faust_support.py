"""Faust apps configured from our settings, and run as `infaas` subcommands."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

import faust
from confluent_kafka import KafkaException

from ..metrics import mark_ready
from ..settings import Settings

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 30.0
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _broker_credentials(settings: Settings):
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    import ssl
    context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location or None)
    if settings.kafka_sasl_mechanism.startswith("SCRAM"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                     mechanism=settings.kafka_sasl_mechanism,
                                     ssl_context=context if "SSL" in settings.kafka_security_protocol else None)
    return faust.SSLCredentials(context)


def faust_app(settings: Settings, service: str, web_port: int | None = None) -> faust.App:
    """A Faust app whose consumer group is `<prefix>-<service>`.

    Faust's web server binds a port even when it is disabled, so each process gets its own
    (a free loopback port unless one is given): two services on one host never collide.
    """
    datadir = settings.state_dir / "faust" / f"{settings.topic_prefix}-{service}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}-{service}",
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=_broker_credentials(settings),
        value_serializer="raw", key_serializer="raw",
        web_enabled=False, web_host="127.0.0.1", web_bind="127.0.0.1", web_port=web_port or free_port(),
        datadir=str(datadir),
        topic_disable_leader=True, topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0, broker_heartbeat_interval=1.0, broker_commit_interval=0.5,
        producer_acks=-1, stream_wait_empty=False,
        # a query may be as large as the settings allow (the Kafka clients' defaults stop at 1 MB)
        consumer_max_fetch_size=settings.max_message_bytes + (1 << 20),
        producer_max_request_size=settings.max_message_bytes + (1 << 20),
    )
    return app


async def call_patiently(patience_s: float, blocking: Callable[..., T], *args) -> T:
    """`blocking(*args)` on the default executor, called again every 0.5 s while Kafka cannot answer
    (BusError, KafkaException), for up to `patience_s`; then its error is raised."""
    from ..bus import BusError
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while True:
        try:
            return await loop.run_in_executor(None, blocking, *args)
        except (BusError, KafkaException) as err:
            if loop.time() > deadline:
                raise
            log.warning("%s failed (%s): trying again", getattr(blocking, "__name__", blocking), err)
            await asyncio.sleep(0.5)


def offsets_skipped(expected: int | None, offset: int) -> range:
    """The offsets between the one a consumer expected next and the one it was handed (none when
    it expected nothing yet, or was handed the same or an earlier one again)."""
    return range(expected, offset) if expected is not None and offset > expected else range(0)


class SkippedOffsets:
    """Faust can hand an agent a partition's messages with offsets missing around a rebalance
    (faust-streaming issue #216: a fetch before the seek to the committed offsets), and then commits
    past them. Seen here: a monitor handed offset 16 of its metrics partition without 15, and a new
    dispatcher group's first query lost (offset 0, nothing logged). This checks each message's offset
    against where the group resumes (after an assignment) and the furthest one handed, and reads the
    ones skipped back from Kafka for the agent to process first."""

    def __init__(self, app: faust.App, settings: Settings):
        self.app = app
        self.settings = settings
        self.next_offset: dict[tuple[str, int], int | None] = {}  # (topic, partition) -> expected next

        @app.on_partitions_assigned.connect
        async def forget(sender, assigned, **kwargs) -> None:
            self.next_offset.clear()  # Faust seeks to the committed offsets: look them up again

    async def _resume_offsets(self, topic: str, partitions: list[int]) -> Mapping[int, int | None]:
        """Where the group resumes each partition (the log's start where it committed nothing: a new
        group's first message was once skipped so, and lost). A broker that cannot say is asked again
        for up to LOOKUP_TIMEOUT_S; then, logged, nothing is checked until the next assignment."""
        from .. import bus
        try:
            return await call_patiently(LOOKUP_TIMEOUT_S, bus.resume_offsets, self.settings, self.app.conf.id,
                                        topic, partitions)
        except bus.BusError as err:
            log.error("%s; skipped offsets of %s are not checked until the next assignment", err, topic)
            return dict.fromkeys(partitions)

    async def read_back(self, message) -> list:
        """The messages before `message` (a Faust message) that the agent was not handed
        (confluent-kafka messages, in order)."""
        from .. import bus
        loop = asyncio.get_running_loop()
        where = (message.topic, message.partition)
        if where not in self.next_offset:  # the first message since an assignment: all its partitions at once
            partitions = sorted({tp.partition for tp in self.app.consumer.assignment() if tp.topic == message.topic}
                                | {message.partition})
            resume = await self._resume_offsets(message.topic, partitions)
            self.next_offset.update({(message.topic, p): offset for p, offset in resume.items()})
        expected = self.next_offset[where]
        skipped = offsets_skipped(expected, message.offset)
        # Handed an offset again (a seek back), the ones up to the furthest handed are not missing.
        self.next_offset[where] = max(message.offset + 1, expected or 0)
        if not skipped:
            return []
        try:
            found = await loop.run_in_executor(None, bus.read_range, self.settings, *where, skipped.start, skipped.stop)
        except KafkaException as err:  # raised here, it would stop the agent, and its batch with it
            log.error("cannot read back offsets %d-%d of %s[%d] (%s)", skipped.start, skipped.stop - 1, *where, err)
            found = []
        # Fewer than skipped: the log no longer holds them, or the broker did not answer in time.
        log.log(logging.WARNING if len(found) == len(skipped) else logging.ERROR,
                "Faust skipped offsets %d-%d of %s[%d]: read back %d message(s)", skipped.start,
                skipped.stop - 1, *where, len(found))
        return found


def run_app(app: faust.App, service: str) -> int:
    """Run a Faust app in this process until SIGINT/SIGTERM; print a readiness line once assigned."""
    announced = False

    @app.on_partitions_assigned.connect
    async def _ready(sender, assigned, **kwargs) -> None:
        nonlocal announced
        if not announced:
            announced = True
            mark_ready()
            print(f"infaas {service} ready (pid {__import__('os').getpid()}, {len(assigned)} partitions)", flush=True)

    worker = faust.Worker(app, loglevel="WARN", quiet=True, redirect_stdouts=False, stdout=sys.stdout,
                          stderr=sys.stderr)
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0
