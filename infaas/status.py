"""`infaas status`: the running services of this installation (topic prefix), from what each advertises
under `<state dir>/run/<prefix>/` (see infaas/metrics.py), with their liveness and readiness asked live."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from .metrics import run_dir
from .settings import Settings


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _probe(url: str, timeout_s: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return "ok" if response.status == 200 else str(response.status)
    except urllib.error.HTTPError as err:
        return "not ready" if err.code == 503 else str(err.code)
    except (urllib.error.URLError, OSError) as err:
        return f"no answer ({getattr(err, 'reason', err)})"


def services(settings: Settings, timeout_s: float = 2.0, prune: bool = True) -> list[dict]:
    """One row per advertised service: name, service, pid, url (metrics at url/metrics), health, ready.
    The advertisement of a process that is gone (killed without cleaning up) is reported once as
    `gone` and removed."""
    rows = []
    for path in sorted(Path(run_dir(settings)).glob("*.json")):
        try:
            entry = json.loads(path.read_text())
            pid, url = int(entry["pid"]), str(entry["url"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours
        row = {"name": entry.get("name", path.stem), "service": entry.get("service", ""), "pid": pid,
               "metrics_url": f"{url}/metrics"}
        if _alive(pid):
            row["health"] = _probe(f"{url}/healthz", timeout_s)
            row["ready"] = _probe(f"{url}/readyz", timeout_s)
        else:
            row["health"] = row["ready"] = "gone"
            if prune:
                path.unlink(missing_ok=True)
        rows.append(row)
    return rows
