"""A routed query at a replica: admitted to run (inputs checked against the task's signature), or
answered at once; and the Result record every answer is built from."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..catalog import Variant
from ..schemas.messages import Result
from ..settings import Settings
from ..tensors import TensorError, check_input, from_tensor

if TYPE_CHECKING:
    from .replica import HostedVariant


def now_ms() -> float:
    return time.time() * 1000.0


def admit(routed: dict, hosted: HostedVariant, settings: Settings):
    """A routed query as a dict to run, or (topic, result) to answer at once (bad input).

    A module function rather than a Replica method so that it can be exercised without Kafka."""
    query = routed["query"]
    topic = query["reply_topic"] or settings.results_topic(query["app_id"])
    try:
        inputs = from_tensor(query["inputs"])
        info = hosted.task
        check_input(inputs, info.input_dtype, info.input_shape, 1 << 20)
    except TensorError as err:
        return (topic, result_for(hosted.variant, query, "BAD_INPUT", f"inputs: {err}", routed))
    return {"topic": topic, "query": query, "routed": routed, "inputs": inputs, "rows": int(inputs.shape[0])}


def result_for(variant: Variant, query: dict, status: str, error: str | None, routed: dict, compute_ms: float = 0.0,
               compute_started: float | None = None, outputs: list[dict] | None = None) -> Result:
    done = now_ms()
    queue_ms = (compute_started or done) - routed["dispatched_at"]
    return Result(query_id=query["query_id"], app_id=query["app_id"], status=status, error=error,
                  outputs=outputs or [], model=variant.model, variant=variant.variant_id, hardware=variant.hardware,
                  accuracy=variant.accuracy, latency_ms=max(done - query["sent_at"], 0.0),
                  queue_ms=max(queue_ms, 0.0), compute_ms=compute_ms, best_accuracy_within_slo=None,
                  fastest_latency_ms=None, completed_at=int(done))


def estimate_overrun_ms(routed: dict, completed_at: float, serving_since: float | None) -> float | None:
    """How much later than the dispatcher estimated (`estimated_ms`, from `dispatched_at`) a query was
    answered, or None for one routed before the replica served its first query: that one waited for the
    replica to start (load, group join), which the estimate does not count, and the first report's
    margin would otherwise keep the variant's queue refused for a whole interval after every start."""
    if serving_since is None or routed["dispatched_at"] < serving_since:
        return None
    return completed_at - routed["dispatched_at"] - routed["estimated_ms"]
