"""One settings object for every infaas service.

Values come, in increasing priority, from the defaults below, an optional TOML file
(`infaas.toml` in the working directory or the path in `INFAAS_CONFIG`) and `INFAAS_*`
environment variables (`INFAAS_KAFKA_BOOTSTRAP`, `INFAAS_CASSANDRA_HOSTS`, ...). In the TOML
file, keys may be grouped in tables: `[kafka] bootstrap = "..."` is the setting `kafka_bootstrap`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from .errors import InfaasError

POLICY_NAMES = ("infaas", "static", "replica-only")  # the scaling policies (infaas.policies.scaling)
SCALER_BACKENDS = ("local", "aws", "kubernetes")  # where workers come from (infaas.scaler.backends)


class SettingsError(InfaasError, ValueError):
    """A setting is missing, malformed or inconsistent; the message names it."""


def _default_home() -> str:
    return str(Path.home() / ".local" / "state" / "infaas")


def _default_cache() -> str:
    return str(Path.home() / ".cache" / "infaas")


@dataclass(frozen=True)
class Settings:
    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Passed through to every Kafka client (librdkafka names), e.g. SASL/SSL options.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_ca_location: str = ""
    topic_prefix: str = "infaas"
    query_partitions: int = 4
    variant_partitions: int = 4
    result_partitions: int = 2
    # A query carries its input tensor: the largest accepted input, and the Kafka message limit applied
    # to every topic, producer and consumer of infaas (it must leave room for the envelope).
    max_input_mb: int = 16
    max_message_mb: int = 20
    topic_replication_factor: int = 1  # Kafka's, for the topics we create (production: 3)
    min_insync_replicas: int = 1  # with acks=all, writes need this many replicas (production: 2)
    # Client-side adaptive throttling (`InfaasClient`): a class of queries is refused locally, as
    # THROTTLED, with probability max(0, (requests - k * accepted) / (requests + 1)) over the last
    # 5 s (once the service shed 20 of the class there), so that load shed anyway costs no broker,
    # dispatcher or client work. 0: off.
    client_throttle_k: float = 2.0
    # --- Cassandra -------------------------------------------------------------------------
    cassandra_hosts: tuple[str, ...] = ("127.0.0.1",)
    cassandra_port: int = 9042
    cassandra_username: str = ""
    cassandra_password: str = field(default="", repr=False)
    keyspace: str = "infaas"
    replication_class: str = "SimpleStrategy"
    replication_factor: int = 1
    load_window_ttl_s: int = 7 * 24 * 3600
    # --- Model repository ------------------------------------------------------------------
    repository_url: str = ""  # default: file://<home>/repository
    s3_endpoint_url: str = ""
    # --- Local stack (the launcher) --------------------------------------------------------
    home: str = field(default_factory=_default_home)
    cache_dir: str = field(default_factory=_default_cache)
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap_mb: int = 512
    cassandra_storage_port: int = 7000
    cassandra_heap_mb: int = 1024
    java_home: str = ""
    start_timeout_s: float = 180.0
    stop_timeout_s: float = 30.0
    # --- Services --------------------------------------------------------------------------
    log_level: str = "INFO"
    metrics_host: str = "127.0.0.1"  # /metrics, /healthz, /readyz of each service (0.0.0.0 in a container)
    metrics_port: int = 0  # 0: a free port, advertised under <home>/run/ (see infaas/metrics.py)
    hardware_catalog: str = ""  # TOML file; default: the catalogue shipped in infaas/hardware.toml
    offline_chunk_size: int = 64
    offline_lease_s: float = 15.0  # a batch chunk whose worker is silent this long is taken over
    # Workers and the scaler (`infaas worker/serve/scaler` flags override these per process).
    worker_memory_mb: float = 2048.0  # memory budget for the variants a worker hosts
    max_batch_delay_ms: float = 5.0  # longest wait for a batch to fill (the deadlines bound it too)
    offline_cpu_threshold: float = 0.4  # batch-job chunks run only while a worker's CPU is at most this
    scaling_policy: str = "infaas"  # infaas, static or replica-only
    scaler_backend: str = "local"  # local, aws or kubernetes
    scaler_interval_s: float = 1.0  # seconds between scaling decisions
    min_workers: int = 1
    max_workers: int = 4
    unload_idle_s: float = 60.0  # a variant unused this long is unloaded
    # --- Registration, variant generation and profiling -------------------------------------
    max_model_mb: int = 512  # largest ONNX file accepted by `infaas register`
    max_validation_mb: int = 256  # largest validation set (.npz) accepted
    max_model_nodes: int = 10_000  # largest ONNX graph accepted (nodes, subgraphs and functions included)
    allow_custom_ops: bool = False  # accept ONNX nodes outside the standard ai.onnx / ai.onnx.ml domains
    variant_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    variant_threads: tuple[int, ...] = ()  # CPU thread counts; empty: 1 and all cores
    variant_optimizers: tuple[str, ...] = ()  # restrict generation (e.g. "ort-fp32,tvm"); empty: all
    gpu_hardware: str = ""  # catalogue name of this host's GPU when it cannot be recognised (e.g. gpu-a10g)
    tvm_tune_trials: int = 0  # MetaSchedule trials per TVM variant; 0: no tuning (default schedules)
    profile_warmup: int = 10  # runs discarded before timing each batch size
    profile_runs: int = 100  # timed runs per batch size (fewer when profile_max_s is reached first)
    profile_max_s: float = 2.0  # time budget per batch size
    registration_workers: int = 2  # threads for non-timing work (artifact builds, accuracy runs)

    # -- derived values ---------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return Path(self.home).expanduser()

    @property
    def model_repository_url(self) -> str:
        return self.repository_url or f"file://{self.state_dir / 'repository'}"

    @property
    def max_input_bytes(self) -> int:
        return self.max_input_mb << 20

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb << 20

    def topic(self, name: str) -> str:
        """A core topic name under the configured prefix, e.g. `infaas.queries`."""
        return f"{self.topic_prefix}.{name}"

    def results_topic(self, app_id: str) -> str:
        return f"{self.topic_prefix}.results.{app_id}"

    def variant_topic(self, variant_id: str) -> str:
        # Kafka topic names allow [a-zA-Z0-9._-]; variant ids use ':' between their parts.
        return f"{self.topic_prefix}.variant.{variant_id.replace(':', '.')}"

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka options shared by every producer, consumer and admin client."""
        conf = {"bootstrap.servers": self.kafka_bootstrap,
                "security.protocol": self.kafka_security_protocol}
        optional = {"sasl.mechanism": self.kafka_sasl_mechanism,
                    "sasl.username": self.kafka_sasl_username,
                    "sasl.password": self.kafka_sasl_password,
                    "ssl.ca.location": self.kafka_ssl_ca_location}
        conf.update({k: v for k, v in optional.items() if v})
        return conf

    def as_env(self) -> dict[str, str]:
        """These settings as `INFAAS_*` variables, so a child process (a service) gets exactly them."""
        env = {}
        for name, value in dataclasses.asdict(self).items():
            env[f"INFAAS_{name.upper()}"] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return env

    def replace(self, **changes: Any) -> Settings:
        merged = {**dataclasses.asdict(self), **changes}
        return _validated(merged)


_SETTING_TYPES = get_type_hints(Settings)


def _coerce(name: str, raw: Any) -> Any:
    kind = _SETTING_TYPES[name]
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[
                str(raw).strip().lower()]
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if kind is float:
            return float(raw)
        if kind == tuple[str, ...]:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(str(item).strip() for item in items if str(item).strip())
        if kind == tuple[int, ...]:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            if any(isinstance(item, bool) for item in items):
                raise ValueError
            return tuple(int(str(item).strip()) for item in items if str(item).strip())
        return str(raw)
    except (ValueError, KeyError, TypeError):
        type_name = getattr(kind, "__name__", str(kind))
        raise SettingsError(f"setting {name!r}: {raw!r} is not a valid {type_name}") from None


def _check(settings: Settings) -> None:
    ports = {"kafka_port": settings.kafka_port, "kafka_controller_port": settings.kafka_controller_port,
             "cassandra_port": settings.cassandra_port,
             "cassandra_storage_port": settings.cassandra_storage_port}
    for name, port in ports.items():
        if not 0 < port < 65536:
            raise SettingsError(f"setting {name!r}: {port} is not a TCP port (1-65535)")
    if len(set(ports.values())) != len(ports):
        raise SettingsError(f"the local stack's ports must differ: {ports}")
    for name in ("query_partitions", "variant_partitions", "result_partitions", "replication_factor",
                 "topic_replication_factor", "min_insync_replicas",
                 "kafka_heap_mb", "cassandra_heap_mb", "offline_chunk_size", "load_window_ttl_s"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"setting {name!r} must be at least 1, not {getattr(settings, name)}")
    if settings.min_insync_replicas > settings.topic_replication_factor:
        raise SettingsError(f"setting 'min_insync_replicas' ({settings.min_insync_replicas}) is more than "
                            f"'topic_replication_factor' ({settings.topic_replication_factor}): no write could succeed")
    for name in ("max_model_mb", "max_validation_mb", "max_model_nodes", "profile_runs", "registration_workers"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"setting {name!r} must be at least 1, not {getattr(settings, name)}")
    for name in ("variant_batch_sizes", "variant_threads"):
        if any(value < 1 for value in getattr(settings, name)):
            raise SettingsError(f"setting {name!r}: every value must be at least 1, not {getattr(settings, name)}")
    if not settings.variant_batch_sizes:
        raise SettingsError("setting 'variant_batch_sizes' is empty")
    if not 1 <= settings.max_input_mb < settings.max_message_mb <= 1024:
        raise SettingsError(f"settings 'max_input_mb' ({settings.max_input_mb}) and 'max_message_mb' "
                            f"({settings.max_message_mb}): need 1 <= max_input_mb < max_message_mb <= 1024 "
                            "(a message holds the input and its envelope)")
    if settings.profile_warmup < 0 or settings.tvm_tune_trials < 0 or settings.profile_max_s <= 0:
        raise SettingsError("settings 'profile_warmup' and 'tvm_tune_trials' must be >= 0, 'profile_max_s' > 0")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,47}", settings.keyspace):
        raise SettingsError(f"setting 'keyspace': {settings.keyspace!r} is not a valid CQL keyspace name")
    if not re.fullmatch(r"[a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*", settings.topic_prefix):
        raise SettingsError(f"setting 'topic_prefix': {settings.topic_prefix!r} is not a valid topic prefix")
    if not settings.cassandra_hosts:
        raise SettingsError("setting 'cassandra_hosts' is empty")
    if settings.replication_class not in ("SimpleStrategy", "NetworkTopologyStrategy"):
        raise SettingsError("setting 'replication_class' must be SimpleStrategy or NetworkTopologyStrategy")
    url = settings.model_repository_url
    if not (url.startswith("file://") or re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?", url)):
        raise SettingsError(f"setting 'repository_url': {url!r} must be file://PATH or s3://BUCKET[/PREFIX]")
    if not 0 <= settings.metrics_port < 65536:
        raise SettingsError(f"setting 'metrics_port': {settings.metrics_port} is not a TCP port (0 for a free one)")
    if settings.scaling_policy not in POLICY_NAMES:
        raise SettingsError(f"setting 'scaling_policy': {settings.scaling_policy!r} is not one of {', '.join(POLICY_NAMES)}")
    if settings.scaler_backend not in SCALER_BACKENDS:
        raise SettingsError(f"setting 'scaler_backend': {settings.scaler_backend!r} is not one of "
                            f"{', '.join(SCALER_BACKENDS)}")
    if not 0 < settings.min_workers <= settings.max_workers:
        raise SettingsError(f"settings 'min_workers' ({settings.min_workers}) and 'max_workers' "
                            f"({settings.max_workers}): need 1 <= min_workers <= max_workers")
    for name in ("worker_memory_mb", "scaler_interval_s", "unload_idle_s"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"setting {name!r} must be positive, not {getattr(settings, name)}")
    if settings.client_throttle_k != 0 and settings.client_throttle_k < 1:
        raise SettingsError(f"setting 'client_throttle_k' must be 0 (off) or at least 1, not {settings.client_throttle_k}")
    if settings.max_batch_delay_ms < 0 or not 0 <= settings.offline_cpu_threshold <= 1:
        raise SettingsError("setting 'max_batch_delay_ms' must be >= 0 and 'offline_cpu_threshold' 0..1")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"setting 'log_level': {settings.log_level!r} is not DEBUG, INFO, WARNING or ERROR")


def _validated(values: dict[str, Any]) -> Settings:
    unknown = sorted(set(values) - set(_SETTING_TYPES))
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
    settings = Settings(**{name: _coerce(name, value) for name, value in values.items()})
    _check(settings)
    return settings


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}".replace("-", "_")
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return _flatten(tomllib.load(handle))
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"config file {path}: {err}") from None
    except OSError as err:
        raise SettingsError(f"config file {path}: {err.strerror}") from None


def load_settings(config_file: str | os.PathLike | None = None,
                  environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings: defaults < config file < environment < overrides."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or env.get("INFAAS_CONFIG")
    if path:
        values.update(_from_file(Path(path)))
    elif Path("infaas.toml").is_file():
        values.update(_from_file(Path("infaas.toml")))
    names = {f.name for f in fields(Settings)}
    for key, raw in env.items():
        if key.startswith("INFAAS_") and key != "INFAAS_CONFIG":
            name = key[len("INFAAS_"):].lower()
            if name in names:
                values[name] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _validated(values)
