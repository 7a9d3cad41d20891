"""One small registered variant (logistic regression on the digits, ort-fp32, batch 8, 1 thread) for
tests that need a model to serve but not the whole zoo: a task of the caller's own, so it changes no
other test's model-less choice, and seconds to register instead of minutes."""

from __future__ import annotations

from infaas.catalog import Variant
from infaas.registration.register import register_model
from infaas.registration.zoo import export_zoo


def register_small_variant(settings, folder, task: str, name: str) -> Variant:
    path = export_zoo(folder, quick=True, names=("logreg",))["logreg"]
    narrow = settings.replace(variant_batch_sizes=(8,), variant_optimizers=("ort-fp32",), variant_threads=(1,))
    return register_model(narrow, "demo", task, "logistic-regression", path, folder / "validation.npz",
                          public=True, quick=True, name=name).variants[0]
