"""Secure mode (`infaas infra up --secure`) on a secure stack of its own (own state directory and
ports): Kafka with SASL/SCRAM and ACLs, Cassandra with password authentication, two tenants, a
private model and the serving pipeline; then registration's refusals of executable content.

The two apps are `acme` and `acme-rival` on purpose: a results ACL that was a bare prefix
(`infaas.results.acme`) would also match `infaas.results.acme-rival`."""

from __future__ import annotations

import os
import pickle
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer, TopicPartition

from infaas import bus, credentials, launcher
from infaas.client import InfaasClient
from infaas.launcher import LaunchError
from infaas.registration import RegistrationError, register_model
from infaas.registration.validate import check_model, load_validation
from infaas.schemas.codec import default_codec
from infaas.serve import Pipeline, ServeOptions
from infaas.store import Store, StoreError
from tests.conftest import free_port
from tests.unit.test_executors import tiny_model

APP, RIVAL = "acme", "acme-rival"
TASK, PRIVATE_MODEL = "secret-task", "rival-secret"
ENV_NAMES = ("home", "kafka_bootstrap", "kafka_port", "kafka_controller_port", "cassandra_port",
             "cassandra_storage_port", "repository_url", "kafka_security_protocol", "kafka_sasl_mechanism",
             "kafka_sasl_username", "kafka_sasl_password", "cassandra_username", "cassandra_password",
             "query_partitions", "variant_partitions", "result_partitions")


def env_of(settings) -> dict[str, str]:
    """The environment that makes a child process (CLI, service) use these settings."""
    return {**os.environ, **{f"INFAAS_{name.upper()}": str(getattr(settings, name)) for name in ENV_NAMES}}


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infaas", *args], env=env_of(settings), capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def secure(base_settings, tmp_path_factory):
    """The secure stack, started once for this module; yields (settings, launcher and CLI output)."""
    ports = set()
    while len(ports) < 4:
        ports.add(free_port())
    kafka, controller, cql, storage = sorted(ports)
    home = tmp_path_factory.mktemp("secure-stack")
    own = base_settings.replace(home=str(home), kafka_port=kafka, kafka_controller_port=controller,
                                cassandra_port=cql, cassandra_storage_port=storage,
                                kafka_bootstrap=f"127.0.0.1:{kafka}", kafka_heap_mb=256, cassandra_heap_mb=512,
                                repository_url=f"file://{home / 'repository'}", query_partitions=2,
                                variant_partitions=1, result_partitions=1, variant_batch_sizes=(1,),
                                variant_optimizers=("ort-fp32",), variant_threads=(1,))
    output: list[str] = []
    try:
        launcher.up(own, say=output.append, secure=True)
        again = cli(own, "infra", "up", "--secure")  # already running: prints where the secrets are
        assert again.returncode == 0, again.stderr
        output += [again.stdout, again.stderr]
        yield own, output
    finally:
        launcher.down(own)


@pytest.fixture(scope="module")
def apps(secure):
    """Both apps created through the CLI; their client settings from the printed exports."""
    own, output = secure
    clients = {}
    for app in (APP, RIVAL):
        made = cli(own, "app", "create", app, "--print-credentials")
        assert made.returncode == 0, made.stderr
        output.append(made.stderr)
        exports = dict(line.removeprefix("export ").split("=", 1) for line in made.stdout.splitlines())
        values = {k.removeprefix("INFAAS_").lower(): shlex.split(v)[0] for k, v in exports.items()}
        assert values["kafka_sasl_username"] == f"app-{app}" and "cassandra_password" not in values
        clients[app] = own.replace(**values)
    return clients


def authorization_error(settings, topic: str) -> str | None:
    """The error a topic's metadata carries for these credentials (None: visible)."""
    consumer = bus.consumer(settings, f"{settings.topic_prefix}.client.probe")
    try:
        error = consumer.list_topics(topic, timeout=10).topics[topic].error
        return error.name() if error else None
    finally:
        consumer.close()


def read_all(settings, topic: str, seconds: float = 4.0, partitions: int = 1) -> list[bytes]:
    """Every message a reader with these credentials gets from the topic's start (assign, as the client)."""
    consumer = bus.consumer(settings, f"{settings.topic_prefix}.client.reader")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    values, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        values += [m.value() for m in consumer.consume(100, 0.2) if not m.error()]
    consumer.close()
    return values


def deliver(settings, topic: str, value: bytes, **conf) -> KafkaError | None:
    """Produce one message and wait for its delivery report: None when delivered, else the error."""
    reports: list = []
    producer = bus.producer(settings, **conf)
    producer.produce(topic, value, on_delivery=lambda err, msg: reports.append(err))
    producer.flush(30)
    assert len(reports) == 1, "no delivery report"
    return reports[0]


# --- the state directory ----------------------------------------------------------------------------
def test_secrets_are_private_and_the_mode_is_recorded(secure):
    own, _ = secure
    secrets = credentials.load_secrets(own)
    assert set(secrets) == set(credentials.SECRET_NAMES) and len(set(secrets.values())) == 4
    for path in (credentials.secrets_file(own), launcher.service_dir(own, "kafka") / "server.properties"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert launcher.stack_mode(own) == "secure"
    elsewhere = own.replace(kafka_bootstrap="kafka.example.com:9092")
    assert credentials.admin_settings(elsewhere) == elsewhere  # local passwords never go to other clusters
    assert credentials.admin_settings(own).kafka_sasl_username == "admin"
    with pytest.raises(LaunchError, match="set up in secure mode .* run `infaas infra up --secure`"):
        launcher.up(own, say=lambda m: None)  # plain mode on secure data: refused, nothing restarted


def test_a_plain_state_directory_is_not_started_secure(base_settings, tmp_path):
    ports = set()
    while len(ports) < 4:  # never the default ports, even if the check under test were broken
        ports.add(free_port())
    kafka, controller, cql, storage = sorted(ports)
    plain = base_settings.replace(home=str(tmp_path), kafka_port=kafka, kafka_controller_port=controller,
                                  cassandra_port=cql, cassandra_storage_port=storage,
                                  kafka_bootstrap=f"127.0.0.1:{kafka}")
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("node.id=1\n")  # formatted, no mode recorded
    with pytest.raises(LaunchError, match="set up in plain mode and is not started in secure mode"):
        launcher.up(plain, say=lambda m: None, secure=True)
    assert not credentials.secrets_file(plain).exists() and launcher.running_pid(plain, "kafka") is None


def test_cli_env_prints_the_services_credentials_and_init_uses_the_admin(secure):
    own, _ = secure
    shown = cli(own, "infra", "env")  # the explicit request: its output is not collected for the leak check
    assert shown.returncode == 0, shown.stderr
    exports = dict(shlex.split(line)[1].split("=", 1) for line in shown.stdout.splitlines())
    secrets = credentials.load_secrets(own)
    assert exports["INFAAS_KAFKA_SASL_USERNAME"] == "infaas-service"
    assert exports["INFAAS_KAFKA_SASL_PASSWORD"] == secrets["kafka_service_password"]
    assert exports["INFAAS_CASSANDRA_PASSWORD"] == secrets["cassandra_password"]
    service = credentials.service_settings(own)
    assert deliver(service, own.topic("deadletter"), b"service write") is None
    init = cli(own, "init")  # no credentials in the environment: the local admin's are used
    assert init.returncode == 0 and "created topics: none (all existed)" in init.stdout, init.stderr


# --- Kafka: authentication and ACLs -----------------------------------------------------------------
def test_unauthenticated_and_wrong_password_clients_are_refused(secure, apps):
    own, _ = secure
    queries = own.topic("queries")
    anonymous = own.replace(kafka_security_protocol="PLAINTEXT", kafka_sasl_mechanism="",
                            kafka_sasl_username="", kafka_sasl_password="")
    error = deliver(anonymous, queries, b"no credentials", **{"message.timeout.ms": 3000})
    assert error is not None and error.code() == KafkaError._MSG_TIMED_OUT

    errors: list[KafkaError] = []
    wrong = {**apps[APP].kafka_client_config(), "sasl.password": "not-the-password", "error_cb": errors.append}
    producer = Producer(wrong)
    producer.produce(queries, b"wrong password")
    producer.flush(5)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    admin = credentials.admin_settings(own)
    arrived = read_all(admin, queries, 2.0, own.query_partitions)
    assert not {b"no credentials", b"wrong password"} & set(arrived)


def test_an_app_writes_queries_and_reads_only_its_own_results(secure, apps):
    own, _ = secure
    admin, mine = credentials.admin_settings(own), apps[APP]
    for app in (APP, RIVAL):  # what the dispatcher would write to each reply topic
        assert deliver(admin, own.results_topic(app), f"result for {app}".encode()) is None
    assert deliver(mine, own.topic("queries"), b"a query") is None

    assert read_all(mine, own.results_topic(APP)) == [b"result for acme"]
    assert authorization_error(mine, own.results_topic(RIVAL)) == "TOPIC_AUTHORIZATION_FAILED"
    assert read_all(mine, own.results_topic(RIVAL)) == []
    assert read_all(admin, own.results_topic(RIVAL)) == [b"result for acme-rival"]  # it was there to read
    assert b"a query" in read_all(admin, own.topic("queries"), 2.0, own.query_partitions)
    assert read_all(mine, own.topic("queries"), 2.0, own.query_partitions) == []  # write-only


def test_an_app_cannot_write_service_topics_or_create_topics(secure, apps):
    own, _ = secure
    mine = apps[APP]
    for topic in (own.variant_topic("any:variant"), own.topic("control"), own.results_topic(RIVAL)):
        error = deliver(mine, topic, b"forged", **{"message.timeout.ms": 10000})
        assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, error)
    with pytest.raises(bus.BusError, match="infaas.results.acme.mine is missing and cannot be created"):
        InfaasClient(mine, app_id=APP, reply_topic=own.results_topic(APP) + ".mine")


def test_app_create_is_idempotent_and_without_the_flag_shows_no_password(secure, apps):
    own, output = secure
    again = cli(own, "app", "create", APP)
    output += [again.stdout, again.stderr]
    assert again.returncode == 0 and "PASSWORD" not in again.stdout + again.stderr
    assert f"app {APP} created" in again.stdout
    assert deliver(apps[APP], own.topic("queries"), b"still allowed") is None  # the password was kept
    assert cli(own, "app", "create", "Bad_Name").returncode == 2


# --- the third kind of user: streaming analytics ------------------------------------------------
ANALYST = "acme-watch"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analytics" / "app.py"


@pytest.fixture(scope="module")
def analyst(secure, apps):
    """An analytics app over acme's results, made through the CLI; its client settings."""
    own, output = secure
    refused = cli(own, "app", "create", "watch-nothing", "--analytics", "--apps", "no-such-app")
    assert refused.returncode == 2 and "no app no-such-app" in refused.stderr
    made = cli(own, "app", "create", ANALYST, "--analytics", "--apps", APP, "--print-credentials")
    assert made.returncode == 0, made.stderr
    output.append(made.stderr)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in made.stdout.splitlines())
    return own.replace(**{k.removeprefix("INFAAS_").lower(): shlex.split(v)[0] for k, v in exports.items()})


def test_an_analytics_principal_reads_load_scaling_and_the_named_results_only(secure, analyst):
    own, _ = secure
    admin = credentials.admin_settings(own)
    readable = [own.topic("load"), own.topic("scaling"), own.results_topic(APP)]
    for topic in (*readable, own.results_topic(RIVAL)):
        assert deliver(admin, topic, f"for analytics on {topic}".encode()) is None
    for topic in readable:
        assert f"for analytics on {topic}".encode() in read_all(analyst, topic), topic
    for topic in (own.results_topic(RIVAL), own.topic("queries"), own.topic("control"), own.topic("metrics")):
        assert authorization_error(analyst, topic) == "TOPIC_AUTHORIZATION_FAILED", topic
    for topic in (own.topic("queries"), own.topic("load"), own.results_topic(APP)):  # it never writes infaas's topics
        error = deliver(analyst, topic, b"forged", **{"message.timeout.ms": 10000})
        assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, error)
    assert deliver(analyst, bus.analytics_names(own, ANALYST)[1], b"its own output") is None


def test_the_analytics_example_runs_as_the_analytics_principal(secure, analyst, tmp_path):
    """The Faust example, with the analytics principal's credentials only: its group, changelog and
    output topic are its own; it counts acme's answers into a window and publishes it."""
    from infaas.schemas.codec import default_codec
    from tests.integration.test_analytics import result
    own, _ = secure
    admin, codec, window_s = credentials.admin_settings(own), default_codec(), 2
    log = (tmp_path / "analytics.log").open("w")
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), "--apps", APP, "--name", ANALYST, "--window",
                             str(window_s), "--grace", "1", "--no-cassandra"], env=env_of(analyst),
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert any("analytics ready" in line for line in proc.stdout), f"it exited ({proc.wait()}); see {log.name}"
        start = (int(time.time() * 1000) // (window_s * 1000) - 5) * window_s * 1000
        answers = [result("a", "OK", "v", 10.0, start + 100), result("b", "BAD_INPUT", "v", 0.0, start + 500),
                   result("c", "OK", "v", 30.0, start + 3 * window_s * 1000)]  # the last one closes the window
        producer = bus.producer(admin)
        for answer in answers:
            producer.produce(own.results_topic(APP), codec.encode("Result", {**answer, "app_id": APP}))
        producer.flush(10)
        window, records, deadline = [], [], time.monotonic() + 60
        while not window and time.monotonic() < deadline:
            records = [codec.decode_as("AnalyticsWindow", value)
                       for value in read_all(analyst, bus.analytics_names(own, ANALYST)[1], seconds=2)
                       if value != b"its own output"]  # what the test above wrote
            window = [r for r in records if (r["scope"], r["key"], r["window_start"]) == ("APP", APP, start)]
        assert window and (window[-1]["answered"], window[-1]["ok"]) == (2, 1), records
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_deleting_the_analytics_app_removes_its_acls_and_output_topic(secure, analyst):
    own, output = secure
    assert authorization_error(analyst, own.topic("load")) is None
    done = cli(own, "app", "delete", ANALYST)
    output += [done.stdout, done.stderr]
    group, output_topic = bus.analytics_names(own, ANALYST)
    assert done.returncode == 0 and output_topic in done.stdout, done.stderr
    assert f"{group}-analytics-changelog" in done.stdout  # the example's table changelog went too
    assert authorization_error(analyst, own.topic("load")) == "TOPIC_AUTHORIZATION_FAILED"


# --- tenancy through the pipeline -----------------------------------------------------------------
@pytest.fixture(scope="module")
def private_variant(secure, apps, tmp_path_factory):
    """The rival's private model, registered with one fp32 variant (batch 1, one thread)."""
    own, _ = secure
    folder = tmp_path_factory.mktemp("private-model")
    model = tiny_model(folder / "secret.onnx", inputs=8, classes=3)
    rng = np.random.default_rng(1)
    np.savez(folder / "val.npz", inputs=rng.standard_normal((30, 8)).astype(np.float32),
             labels=rng.integers(0, 3, 30))
    report = register_model(credentials.admin_settings(own), RIVAL, TASK, "tiny", model, folder / "val.npz",
                            public=False, quick=True, name=PRIVATE_MODEL)
    assert report.variants, "no variant was generated"
    return report.variants[0].variant_id


@pytest.fixture(scope="module")
def pipeline(secure, private_variant):
    own, _ = secure
    services = credentials.service_settings(own)
    options = ServeOptions(workers=1, preload=[private_variant], scaler=False, ready_timeout_s=150)
    running = Pipeline(services, options, env=env_of(services))
    running.start()
    yield running
    running.stop()


def test_a_private_model_is_unknown_to_other_apps_and_served_to_its_own(secure, apps, private_variant, pipeline):
    own, _ = secure
    x = np.random.default_rng(2).standard_normal((1, 8)).astype(np.float32)
    with InfaasClient(apps[APP], app_id=APP, timeout_s=60) as client:
        hidden = client.query(x, model=PRIVATE_MODEL)
        absent = client.query(x, model="no-such-model")
        hidden_variant = client.query(x, variant=private_variant)
        absent_variant = client.query(x, variant="no-such:variant")
    assert hidden.status == absent.status == "UNKNOWN_MODEL"
    assert hidden.error.replace(PRIVATE_MODEL, "M") == absent.error.replace("no-such-model", "M")
    assert hidden_variant.status == absent_variant.status == "UNKNOWN_MODEL"
    assert hidden_variant.error.replace(private_variant, "V") == absent_variant.error.replace("no-such:variant", "V")
    assert hidden.best_accuracy_within_slo is None and hidden.variant is None
    with InfaasClient(apps[RIVAL], app_id=RIVAL, timeout_s=60) as client:
        served = client.query(x, model=PRIVATE_MODEL)
    assert served.ok, served.error
    assert served.variant == private_variant and served.prediction.shape == (1,)


@pytest.fixture(scope="module")
def gateway(secure, pipeline):
    """`infaas gateway` with the services' credentials; yields its host:port."""
    from infaas.scaler.processes import ServiceProcess
    own, _ = secure
    services = credentials.service_settings(own)
    process = ServiceProcess("gateway", ["gateway", "--port", "0", "--timeout", "60"],
                             own.state_dir / "logs" / "test-gateway", env_of(services)).start()
    try:
        process.wait_ready(120)
        assert "each app with its HTTP basic credentials" in process.ready_line
        yield process.ready_line.split("http://")[1].split("/v2")[0]
    finally:
        process.stop()


def test_the_gateway_authenticates_each_app_and_sends_as_it(secure, apps, gateway):
    import base64

    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException
    own, _ = secure

    def basic(app: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{app}:{password}".encode()).decode()}

    def infer(client, headers):
        tensor = triton.InferInput("x", [1, 8], "FP32")
        tensor.set_data_from_numpy(np.random.default_rng(3).standard_normal((1, 8)).astype(np.float32))
        return client.infer(PRIVATE_MODEL, [tensor], headers=headers)

    def refused(call) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as raised:
            call()
        return raised.value.status(), raised.value.message()

    rival, mine = apps[RIVAL], apps[APP]
    with triton.InferenceServerClient(gateway, network_timeout=90, connection_timeout=30) as client:
        assert client.is_server_live()  # health needs no credentials
        assert refused(lambda: infer(client, {}))[0] == "401"
        assert refused(lambda: infer(client, basic(RIVAL, "not-the-password")))[0] == "401"
        assert refused(lambda: infer(client, basic(RIVAL, mine.kafka_sasl_password)))[0] == "401"  # acme's password
        assert refused(lambda: client.get_model_metadata(PRIVATE_MODEL, headers=basic(APP, mine.kafka_sasl_password)))[0] == "404"
        assert refused(lambda: infer(client, basic(APP, mine.kafka_sasl_password)))[0] == "404"  # private to the rival
        meta = client.get_model_metadata(PRIVATE_MODEL, headers=basic(RIVAL, rival.kafka_sasl_password))
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
        served = infer(client, basic(RIVAL, rival.kafka_sasl_password))
        assert served.as_numpy("probabilities").shape == (1, 3)
        assert served.get_response()["parameters"]["variant"].startswith(PRIVATE_MODEL)
    # What reached Kafka: the rival's query, as the rival, replying to the rival's gateway topic.
    queries = [default_codec().decode_as("Query", v)
               for v in read_all(credentials.admin_settings(own), own.topic("queries"), 3.0, own.query_partitions)
               if v[:2] == b"\xc3\x01"]
    sent = [q for q in queries if q["model"] == PRIVATE_MODEL and q["reply_topic"].endswith(".gateway")]
    assert sent and {(q["app_id"], q["reply_topic"]) for q in sent} <= {
        (APP, own.results_topic(APP) + ".gateway"), (RIVAL, own.results_topic(RIVAL) + ".gateway")}
    assert any(q["app_id"] == RIVAL for q in sent)


# --- Cassandra ----------------------------------------------------------------------------------------
def test_cassandra_refuses_connections_without_the_right_credentials(secure):
    own, _ = secure
    attempts = [own.replace(cassandra_username="", cassandra_password=""),  # no credentials
                own.replace(cassandra_username="cassandra", cassandra_password="cassandra"),  # the default superuser
                credentials.admin_settings(own).replace(cassandra_password="wrong")]
    for settings in attempts:
        with pytest.raises(StoreError, match="requires authentication|password are incorrect"):
            Store(settings, connect_timeout=5.0).connect()
    with Store(credentials.admin_settings(own)) as store:
        assert store.list_apps()  # the services' role works (the apps were created through it)


# --- secrets stay secret (runs after everything above wrote its logs) ------------------------------
def test_no_password_in_launcher_output_or_logs(secure, apps, pipeline):
    own, output = secure
    passwords = [*credentials.load_secrets(own).values(), *(s.kafka_sasl_password for s in apps.values())]
    allowed = {credentials.secrets_file(own), launcher.service_dir(own, "kafka") / "server.properties"}
    text_files = [p for p in own.state_dir.rglob("*") if p.is_file() and p not in allowed
                  and (p.suffix in (".log", ".properties", ".yaml", ".txt", ".json") or "logs" in p.parts)]
    logs = [p for p in text_files if "logs" in p.parts]
    assert any(p.name == "server.log" for p in logs) and any(p.name == "system.log" for p in logs)
    assert any(p.name == "dispatcher.log" for p in logs)
    status = cli(own, "infra", "status")
    output += [status.stdout, status.stderr]
    joined = "\n".join(output)
    assert "secrets.toml" in joined
    for password in passwords:
        assert password not in joined, "a password was printed"
        leaked = [str(p) for p in text_files if password.encode() in _read_if_present(p)]
        assert not leaked, f"a password is in {leaked}"


def _read_if_present(path: Path) -> bytes:
    """A file's bytes; empty when Kafka deleted it meanwhile (a deleted topic's segments go later)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


# --- registration never runs user content -----------------------------------------------------------
class _Payload:
    """Unpickling this runs a command: the file it touches shows whether anything was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_pickled_validation_sets_are_refused_without_running_them(base_settings, tmp_path):
    model = tiny_model(tmp_path / "m.onnx", inputs=4, classes=2)
    check = check_model(base_settings, model)
    marker = tmp_path / "executed"
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(RegistrationError, match="is not an .npz archive"):
        load_validation(base_settings, raw, check)
    inside = tmp_path / "inside.npz"
    np.savez(inside, inputs=np.array([_Payload(marker)] * 2, dtype=object), labels=np.zeros(2, dtype=np.int64))
    with pytest.raises(RegistrationError, match="non-numeric arrays"):
        load_validation(base_settings, inside, check)
    assert not marker.exists(), "registration executed a pickle"


def test_size_limits_and_custom_op_domains_follow_the_settings(base_settings, tmp_path):
    model = tiny_model(tmp_path / "m.onnx", inputs=4, classes=2)
    big = tmp_path / "big.npz"
    np.savez(big, inputs=np.zeros(((1 << 20) // 16 + 1, 4), dtype=np.float32), labels=np.zeros(1, dtype=np.int64))
    with pytest.raises(RegistrationError, match="over the limit of 1 MiB \\(setting max_validation_mb\\)"):
        load_validation(base_settings.replace(max_validation_mb=1), big, check_model(base_settings, model))

    import onnx
    custom = onnx.load(str(model))
    custom.graph.node[2].domain = "com.example"
    custom.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(custom, str(tmp_path / "custom.onnx"))
    with pytest.raises(RegistrationError, match="custom domain\\(s\\) com.example.*allow_custom_ops"):
        check_model(base_settings, tmp_path / "custom.onnx")
    assert check_model(base_settings.replace(allow_custom_ops=True), tmp_path / "custom.onnx").opset == 17
