"""The JVM artifacts: Kafka's and Cassandra's jars, resolved from Maven Central by `infra/jvm/pom.xml`
into a cache keyed by the pom's content, and the `java` that runs them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InfaasError
from ..settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA_DIR = REPO_ROOT / "infra"
POM = INFRA_DIR / "jvm" / "pom.xml"


class LaunchError(InfaasError):
    """The stack could not be started or stopped; the message names the cause and the log."""


def _require_infra() -> None:
    if not POM.is_file():
        raise LaunchError(f"{POM} not found: run infaas from a source checkout installed with `pip install -e .`")


def jar_dir(settings: Settings, profile: str) -> Path:
    # Keyed by the pom's content, so a version change in the pom fetches a fresh set.
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12] if POM.is_file() else "none"
    return Path(settings.cache_dir).expanduser() / "jvm" / f"{profile}-{digest}"


def jars_present(settings: Settings, profile: str) -> bool:
    return (jar_dir(settings, profile) / ".complete").is_file()


def fetch_jars(settings: Settings, profiles: tuple[str, ...] = ("kafka", "cassandra"),
               say: Callable[[str], None] = print) -> dict[str, float]:
    """Resolve each profile's jars from Maven Central into the cache, once. Returns seconds spent."""
    _require_infra()
    spent: dict[str, float] = {}
    for profile in profiles:
        target = jar_dir(settings, profile)
        if jars_present(settings, profile):
            continue
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LaunchError("Maven (`mvn`) is not on PATH; it is needed once to fetch the Kafka and Cassandra "
                              "jars from Maven Central (apt install maven)")
        say(f"fetching {profile} jars from Maven Central into {target} ...")
        started = time.monotonic()
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        proc = subprocess.run([mvn, "-B", "-q", "-f", str(POM), "-P", profile, "dependency:copy-dependencies",
                               f"-DoutputDirectory={partial}"], capture_output=True, text=True,
                              env=_java_env(settings))
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise LaunchError(f"mvn could not resolve the {profile} jars (exit {proc.returncode}):\n{tail}")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        (target / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        spent[profile] = time.monotonic() - started
    return spent


def _java_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    if settings.java_home:
        env["JAVA_HOME"] = settings.java_home
    return env


def java_binary(settings: Settings) -> str:
    if settings.java_home:
        java = Path(settings.java_home) / "bin" / "java"
        if not java.is_file():
            raise LaunchError(f"no java at {java} (setting java_home)")
        return str(java)
    java = shutil.which("java")
    if java is None:
        raise LaunchError("`java` is not on PATH: Kafka 4 and Cassandra 5 need a Java 17 runtime "
                          "(apt install openjdk-17-jre-headless, or set INFAAS_JAVA_HOME)")
    return java


def jar_version(settings: Settings, profile: str, prefix: str) -> str:
    for jar in sorted(jar_dir(settings, profile).glob(f"{prefix}-*.jar")):
        rest = jar.name[len(prefix) + 1:-4]
        if rest[:1].isdigit():
            return rest
    return "?"
