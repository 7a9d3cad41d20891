"""The local Cassandra: a single node; in secure mode with password authentication."""

from __future__ import annotations

import contextlib
import logging

from ..credentials import (
    CASSANDRA_SUPERUSER,
    admin_settings,
    cassandra_superuser,
    load_secrets,
    local_secrets,
)
from ..settings import Settings
from .config import render
from .jars import INFRA_DIR, LaunchError, jar_dir
from .processes import marker, port_in_use, service_dir


def command(settings: Settings, java: str, secure: bool = False) -> list[str]:
    home = service_dir(settings, "cassandra")
    conf = home / "conf" / "cassandra.yaml"
    render([INFRA_DIR / "cassandra" / "cassandra.yaml"], conf,
           {"PORT": str(settings.cassandra_port), "STORAGE_PORT": str(settings.cassandra_storage_port),
            "DATA_DIR": str(home),
            "AUTHENTICATOR": "PasswordAuthenticator" if secure else "AllowAllAuthenticator",
            "AUTHORIZER": "CassandraAuthorizer" if secure else "AllowAllAuthorizer"})
    options = [line.strip() for line in (INFRA_DIR / "cassandra" / "jvm17-server.options").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    jvm_options = []
    for option in options:  # "--add-exports X" is one option spelled as two arguments
        jvm_options += option.split(" ", 1) if option.startswith("--") else [option]
    return [java, f"-Xms{settings.cassandra_heap_mb}m", f"-Xmx{settings.cassandra_heap_mb}m", *jvm_options,
            f"-Dcassandra.config=file://{conf}", f"-Dcassandra.logdir={home / 'logs'}",
            f"-Dcassandra.storagedir={home}", "-Dcassandra-foreground=yes",
            f"-Dlogback.configurationFile=file://{INFRA_DIR / 'cassandra' / 'logback.xml'}",
            f"-XX:HeapDumpPath={home / 'logs'}", *marker(settings, "cassandra"),
            "-cp", str(jar_dir(settings, "cassandra") / "*"), "org.apache.cassandra.service.CassandraDaemon"]


def _logins(settings: Settings) -> list[Settings]:
    """Whom to try: the settings as given; on a secure stack the `infaas` role, then the superuser with
    its generated password, then with its default one (before the first setup)."""
    found = local_secrets(settings)
    if not found:
        return [settings]
    return [admin_settings(settings), cassandra_superuser(settings, found["cassandra_superuser_password"]),
            cassandra_superuser(settings, CASSANDRA_SUPERUSER)]


@contextlib.contextmanager
def driver_quiet():
    """Failed attempts are expected while a node starts or a login is tried; the driver would log
    each one with a traceback."""
    driver = logging.getLogger("cassandra")
    level = driver.level
    driver.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        driver.setLevel(level)


def ready(settings: Settings) -> str | None:
    from ..store import Store
    if not port_in_use(settings.cassandra_port):
        return None
    for login in _logins(settings):
        try:
            with driver_quiet(), Store(login, connect_timeout=2.0) as store:
                return f"release {store.release_version()}"
        except Exception:  # the driver raises several types while the node starts or a login fails
            continue
    return None


def secure(settings: Settings) -> None:
    """Replace the default superuser's password and create the services' role (idempotent)."""
    from ..credentials import CASSANDRA_ROLE, secrets_file
    from ..store import Store, StoreError
    found = load_secrets(settings)
    for password in (found["cassandra_superuser_password"], CASSANDRA_SUPERUSER):
        try:
            with driver_quiet():
                store = Store(cassandra_superuser(settings, password), connect_timeout=5.0).connect()
            break
        except StoreError:
            continue
    else:
        raise LaunchError(f"cannot log in to Cassandra as {CASSANDRA_SUPERUSER!r} with the password in "
                          f"{secrets_file(settings)} nor with the default one")
    with store, driver_quiet():  # quiet: a repeated GRANT draws a server warning
        store.secure_roles(CASSANDRA_SUPERUSER, found["cassandra_superuser_password"], CASSANDRA_ROLE,
                           found["cassandra_password"])
