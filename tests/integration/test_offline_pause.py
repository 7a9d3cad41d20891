"""Batch work yields to online load: with an online backlog on the worker, no batch chunk runs
(the job shows PAUSED); once the backlog is served, the job completes. A module of its own, so
no other test's workers are there to take the chunks."""

from __future__ import annotations

import time

import numpy as np

from infaas import offline
from infaas.client import InfaasClient
from infaas.registration import compute_bound
from infaas.registration.register import register_model
from infaas.serve import Pipeline, ServeOptions
from infaas.store import Store
from tests.conftest import settings_env


def test_batch_work_pauses_under_online_load(settings, tmp_path_factory, tmp_path):
    model, validation = compute_bound.build(tmp_path_factory.mktemp("slow-offline"))
    narrow = settings.replace(variant_batch_sizes=(1,), variant_optimizers=("ort-fp32",), variant_threads=(1,))
    variant = register_model(narrow, "demo", "slow-offline", "deep-mlp", model, validation, public=True,
                             quick=True, name="slow-offline-mlp").variants[0]
    options = ServeOptions(workers=1, preload=[variant.variant_id], scaler=False,
                           worker_extra=["--offline-cpu-threshold", "0.2"])
    x = np.zeros((1, compute_bound.INPUT), np.float32)
    inputs = tmp_path / "slow-in.npy"
    np.save(inputs, np.zeros((256, compute_bound.INPUT), np.float32))
    with Pipeline(settings, options, env=settings_env(settings)) as running, \
            InfaasClient(settings, app_id="demo", timeout_s=120) as client:
        futures = [client.submit(x, variant=variant.variant_id) for _ in range(3000)]  # a long online backlog
        client.flush()
        futures[0].result(60)  # the backlog has reached the worker (the dispatcher routed it)
        job = offline.submit(settings, "demo", f"file://{inputs}", f"file://{tmp_path}/slow-out.npy",
                             model="slow-offline-mlp", chunk_size=32)
        seen = set()
        while sum(not f.done() for f in futures) > 200:  # a long online backlog remains
            with Store(settings) as store:
                status = offline.job_status(store, job["job_id"])
            seen.add(status["status"])
            assert status["chunks_done"] == 0, "a batch chunk ran while online queries waited"
            time.sleep(0.3)
        assert "PAUSED" in seen, seen
        final = offline.wait_for(settings, job["job_id"], timeout_s=120)  # the backlog is served: it resumes
        assert final["status"] == "DONE", final
        assert running.services
