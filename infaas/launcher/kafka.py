"""The local Kafka: a single KRaft node (broker and controller in one JVM)."""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

from ..credentials import ADMIN_USER, admin_settings, load_secrets
from ..settings import Settings
from .config import render
from .jars import INFRA_DIR, LaunchError, jar_dir
from .processes import marker, port_in_use, service_dir


def command(settings: Settings, java: str, secure: bool = False) -> list[str]:
    home = service_dir(settings, "kafka")
    conf = home / "server.properties"
    templates = [INFRA_DIR / "kafka" / "server.properties"]
    values = {"PORT": str(settings.kafka_port), "CONTROLLER_PORT": str(settings.kafka_controller_port),
              "DATA_DIR": str(home / "data")}
    if secure:
        templates.append(INFRA_DIR / "kafka" / "server-secure.properties")
        values.update(ADMIN_USER=ADMIN_USER, ADMIN_PASSWORD=load_secrets(settings)["kafka_admin_password"])
    render(templates, conf, values)
    classpath = str(jar_dir(settings, "kafka") / "*")
    jvm = [java, f"-Xms{settings.kafka_heap_mb}m", f"-Xmx{settings.kafka_heap_mb}m", "-XX:+UseG1GC",
           "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={INFRA_DIR / 'kafka' / 'log4j2.yaml'}",
           f"-Dkafka.logs.dir={home / 'logs'}", *marker(settings, "kafka"), "-cp", classpath]
    if not (home / "data" / "meta.properties").is_file():
        _format_storage(settings, jvm, conf, secure)
    return [*jvm, "kafka.Kafka", str(conf)]


def _format_storage(settings: Settings, jvm: list[str], conf: Path, secure: bool) -> None:
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    command = [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config", str(conf),
               "--standalone"]
    password = ""
    if secure:  # the admin's SCRAM credential must exist before the broker's first start
        from ..bus import SCRAM_MECHANISM
        password = load_secrets(settings)["kafka_admin_password"]
        command += ["--add-scram", f"{SCRAM_MECHANISM}=[name={ADMIN_USER},password={password}]"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        if password:
            output = output.replace(password, "***")
        raise LaunchError(f"formatting Kafka storage in {service_dir(settings, 'kafka') / 'data'} failed:\n{output}")


def ready(settings: Settings) -> str | None:
    from .. import bus
    if not port_in_use(settings.kafka_port):
        return None
    try:
        return f"brokers {bus.broker_ids(admin_settings(settings), timeout=1.0)}"
    except bus.BusError:
        return None
