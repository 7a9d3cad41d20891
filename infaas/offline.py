"""Offline (batch) queries: a whole `.npy` of inputs served from spare capacity.

`submit` validates the input against the task's signature, picks the variant (the cheapest that
meets the accuracy demand and the cost cap), copies the input into the model repository (so any
worker can read it) and records the job and its chunks in Cassandra. Workers run chunks only
while they have room (CPU utilization at most the offline threshold and no online queue on any
variant they host), claiming each chunk with a lease through a lightweight transaction: a chunk
whose worker died is taken over when its lease passes, so a crash costs at most that chunk. The
worker that finishes the last chunk writes the output.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from .catalog import Variant
from .errors import InfaasError
from .policies.selection import Request, select_offline
from .policies.snapshot import Snapshot
from .repository import Repository, RepositoryError, s3_client
from .settings import Settings
from .store import Store, now_ms
from .tensors import TensorError, check_input

log = logging.getLogger(__name__)

MAX_ROWS = 10_000_000


class OfflineError(InfaasError, ValueError):
    """A batch job that cannot be accepted or run; the message says why."""


# --- input and output files -----------------------------------------------------------------------
def _split(url: str) -> tuple[str, str, str]:
    parsed = urlparse(url)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return "file", "", unquote(parsed.path)
    if parsed.scheme == "s3" and parsed.netloc and parsed.path.strip("/"):
        return "s3", parsed.netloc, parsed.path.lstrip("/")
    raise OfflineError(f"{url!r}: use file:///PATH or s3://BUCKET/KEY")


def read_array(settings: Settings, url: str) -> np.ndarray:
    scheme, bucket, key = _split(url)
    try:
        if scheme == "file":
            return np.load(key, allow_pickle=False)
        body = s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
        return np.load(io.BytesIO(body), allow_pickle=False)
    except (OSError, ValueError) as err:  # missing file, not .npy, object arrays (pickles) refused
        raise OfflineError(f"cannot read {url}: {err}") from None
    except Exception as err:  # botocore errors
        raise OfflineError(f"cannot read {url}: {type(err).__name__}: {err}") from None


def write_array(settings: Settings, url: str, arrays: dict[str, np.ndarray]) -> None:
    """`.npz` URLs get every output by name; anything else gets the first output as `.npy`."""
    scheme, bucket, key = _split(url)
    buffer = io.BytesIO()
    if key.endswith(".npz"):
        np.savez(buffer, **arrays)
    else:
        np.save(buffer, next(iter(arrays.values())), allow_pickle=False)
    if scheme == "file":
        Path(key).parent.mkdir(parents=True, exist_ok=True)
        Path(key).write_bytes(buffer.getvalue())
    else:
        s3_client(settings).put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())


# --- submission and status ------------------------------------------------------------------------
def submit(settings: Settings, app_id: str, input_url: str, output_url: str, task: str | None = None,
           model: str | None = None, min_accuracy: float | None = None, max_cost: float | None = None,
           chunk_size: int | None = None, variant: str | None = None) -> dict:
    if sum(x is not None for x in (task, model, variant)) != 1:
        raise OfflineError("give exactly one of a task, a model or a variant")
    _split(output_url)
    chunk_size = chunk_size or settings.offline_chunk_size
    with Store(settings) as store:
        if store.get_app(app_id) is None:
            raise OfflineError(f"unknown app {app_id!r}")
        variants = store.all_variants()
        variant = choose_variant(variants, app_id, task, model, min_accuracy, max_cost, variant)
        info = store.get_task(variant.task)
        inputs = read_array(settings, input_url)
        try:
            check_input(inputs, info.input_dtype, info.input_shape, MAX_ROWS)
        except TensorError as err:
            raise OfflineError(f"{input_url}: {err}") from None
        buffer = io.BytesIO()
        np.save(buffer, inputs, allow_pickle=False)
        artifact = Repository.from_settings(settings).put_bytes(buffer.getvalue(), ".npy")
        job_id = uuid.uuid4().hex[:12]
        chunks = math.ceil(len(inputs) / chunk_size)
        job = {"job_id": job_id, "app_id": app_id, "task": variant.task, "model": model, "input_url": input_url,
               "input_artifact": artifact, "output_url": output_url, "min_accuracy": min_accuracy,
               "max_cost": max_cost, "status": "QUEUED", "chunks": chunks, "chunk_size": chunk_size,
               "rows": len(inputs), "variant_id": variant.variant_id, "submitted_at": now_ms()}
        for chunk in range(chunks):
            rows = min(chunk_size, len(inputs) - chunk * chunk_size)
            store.put_chunk({"job_id": job_id, "chunk": chunk, "status": "PENDING", "rows": rows})
        store.put_job(job)
    return job


def choose_variant(variants: list[Variant], app_id: str, task: str | None, model: str | None,
                   min_accuracy: float | None, max_cost: float | None, variant_id: str | None = None) -> Variant:
    snapshot = Snapshot(variants={v.variant_id: v for v in variants})
    if variant_id is not None:  # the caller's choice (e.g. to compare variants), if the app may use it
        chosen = snapshot.variants.get(variant_id)
        if chosen is None or not chosen.visible_to(app_id):
            raise OfflineError(f"UNKNOWN_MODEL: no variant {variant_id!r} is registered for app {app_id!r}")
        return chosen
    decision = select_offline(snapshot, Request(app_id, task=task, model=model, min_accuracy=min_accuracy,
                                                max_cost=max_cost))
    if not decision.ok:
        raise OfflineError(f"{decision.status}: {decision.reason}")
    return snapshot.variants[decision.variant_id]


def job_status(store: Store, job_id: str) -> dict | None:
    job = store.get_job(job_id)
    if job is None:
        return None
    chunks = store.chunks(job_id)
    done = sum(c["status"] == "DONE" for c in chunks)
    return {**job, "chunks_done": done, "rows_done": sum(c["rows"] or 0 for c in chunks if c["status"] == "DONE"),
            "running_on": sorted({c["worker_id"] for c in chunks if c["status"] == "RUNNING" and c["worker_id"]})}


# --- running, inside a worker ---------------------------------------------------------------------
class OfflineRunner(threading.Thread):
    """Serves chunks of batch jobs from a worker's spare capacity."""

    def __init__(self, worker, cpu_threshold: float, poll_s: float = 1.0):
        super().__init__(name="offline-runner", daemon=True)
        self.worker = worker
        self.settings: Settings = worker.settings
        self.cpu_threshold = cpu_threshold
        self.poll_s = poll_s
        self.store = Store(self.settings)
        self.repository = Repository.from_settings(self.settings)
        self.stopping = threading.Event()
        self._executors: dict[str, object] = {}
        self.chunks_done = 0

    def run(self) -> None:
        while not self.stopping.wait(self.poll_s):
            try:
                self._work()
            except Exception as err:  # Cassandra away, a bad artifact...: try again later
                log.warning("offline work failed, retrying: %s", err)
        for executor, _ in self._executors.values():
            executor.close()
        self.store.close()

    def busy(self) -> bool:
        """Online work first: no offline chunk while the CPU is busy or an online queue waits."""
        return self.worker.cpu_util > self.cpu_threshold or self.worker.online_queue() > 0

    def _work(self) -> None:
        for job in self.store.list_jobs():
            if job["status"] in ("DONE", "FAILED") or not self._runs_on_this_hardware(job):
                continue
            while not self.stopping.is_set():
                if self.busy():
                    self._set_status(job, "PAUSED")
                    return
                chunk = self._claim(job)
                if chunk is None:
                    break
                self._set_status(job, "RUNNING")
                self._run_chunk(job, chunk)
            self._maybe_finish(job)

    def _runs_on_this_hardware(self, job: dict) -> bool:
        variant = self._variant(job["variant_id"])
        return variant is not None and variant.hardware == self.worker.hardware

    def _variant(self, variant_id: str) -> Variant | None:
        return self.worker.catalog().variants.get(variant_id)

    def _claim(self, job: dict) -> dict | None:
        now = now_ms()
        for chunk in self.store.chunks(job["job_id"]):
            if chunk["status"] == "DONE":
                continue
            lease_until = now + int(self.settings.offline_lease_s * 1000)
            if self.store.claim_chunk(job["job_id"], chunk["chunk"], self.worker.worker_id, lease_until, now):
                return chunk
        return None

    def _run_chunk(self, job: dict, chunk: dict) -> None:
        executor, variant = self._executor(job["variant_id"])
        inputs = np.load(self.repository.fetch(job["input_artifact"]), allow_pickle=False, mmap_mode="r")
        start = chunk["chunk"] * job["chunk_size"]
        rows = np.ascontiguousarray(inputs[start:start + chunk["rows"]])
        parts = [executor.run(rows[i:i + variant.batch_size]) for i in range(0, len(rows), variant.batch_size)]
        if len(executor.output_names) != len(parts[0]):  # never an empty (or partial) output marked done
            raise RuntimeError(f"{variant.variant_id} names {len(executor.output_names)} outputs but returned "
                               f"{len(parts[0])}")
        outputs = {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(executor.output_names)}
        buffer = io.BytesIO()
        np.savez(buffer, **outputs)
        artifact = self.repository.put_bytes(buffer.getvalue(), ".npz")
        self.store.put_chunk({"job_id": job["job_id"], "chunk": chunk["chunk"], "status": "DONE",
                              "rows": chunk["rows"], "worker_id": self.worker.worker_id,
                              "variant_id": variant.variant_id, "output_artifact": artifact})
        self.chunks_done += 1

    def _executor(self, variant_id: str):
        from .consumers.executors import open_executor
        if variant_id not in self._executors:
            variant = self._variant(variant_id)
            model = self.store.get_model(variant.model, variant.model_version)
            executor = open_executor(variant, self.repository.fetch(variant.artifact),
                                     model.output_names if model else ())
            self._executors[variant_id] = (executor, variant)
        return self._executors[variant_id]

    def _maybe_finish(self, job: dict) -> None:
        chunks = sorted(self.store.chunks(job["job_id"]), key=lambda c: c["chunk"])
        if not chunks or any(c["status"] != "DONE" for c in chunks):
            return
        if self.store.get_job(job["job_id"])["status"] == "DONE":
            return
        parts = [np.load(self.repository.fetch(c["output_artifact"]), allow_pickle=False) for c in chunks]
        names = list(parts[0].keys())
        outputs = {name: np.concatenate([p[name] for p in parts]) for name in names}
        try:
            write_array(self.settings, job["output_url"], outputs)
        except Exception as err:
            self.store.set_job_status(job["job_id"], "FAILED", f"cannot write {job['output_url']}: {err}")
            return
        self.store.set_job_status(job["job_id"], "DONE")
        log.info("batch job %s done: %d rows to %s", job["job_id"], job["rows"], job["output_url"])

    def _set_status(self, job: dict, status: str) -> None:
        if job.get("status") != status:
            job["status"] = status
            self.store.set_job_status(job["job_id"], status)


def wait_for(settings: Settings, job_id: str, timeout_s: float = 600.0, on_progress=None) -> dict:
    deadline = time.monotonic() + timeout_s
    with Store(settings) as store:
        while True:
            status = job_status(store, job_id)
            if on_progress:
                on_progress(status)
            if status["status"] in ("DONE", "FAILED") or time.monotonic() > deadline:
                return status
            time.sleep(0.5)


__all__ = ["OfflineError", "OfflineRunner", "RepositoryError", "job_status", "read_array", "submit", "wait_for",
           "write_array"]
