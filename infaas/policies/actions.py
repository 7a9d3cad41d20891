"""What the scaling policies decide: actions with reasons, for the scaler (live) or the simulator.

Kinds are the Avro enum `ScalingKind` of `ScalingEvent.avsc` (less TRIGGER, which the monitor emits).
How an executor carries each one out:
  ADD_REPLICA        one more replica of `variant_id` on `worker_id` (loading it there if needed);
                     `worker_id` None: on the next worker of `hardware` that is ready (one is being added).
  REMOVE_REPLICA     one replica fewer on `worker_id` (it finishes the batch it runs).
  LOAD_VARIANT       load `variant_id` (not loaded anywhere) with one replica on `worker_id`.
  UNLOAD_VARIANT     remove every replica of `variant_id` (it is idle; memory goes back).
  UPGRADE_VARIANT,   move the traffic of `variant_id` to `target_variant_id`: load the target
  DOWNGRADE_VARIANT  (`to_count` replicas; the first on `worker_id`, the others come as ADD_REPLICA
                     actions in the same list), and once the target serves, retire the source: it
                     gets no new queries and its replicas go once the queries it has queued are served.
  ADD_WORKER         start `to_count - from_count` workers of `hardware`.
  REMOVE_WORKER      stop `worker_id` (it hosts nothing that has traffic and no other replica).
`from_count`/`to_count`: replicas of the variant (workers of the hardware for worker actions)
before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schemas.messages import ScalingEvent

ADD_REPLICA, REMOVE_REPLICA = "ADD_REPLICA", "REMOVE_REPLICA"
LOAD_VARIANT, UNLOAD_VARIANT = "LOAD_VARIANT", "UNLOAD_VARIANT"
UPGRADE_VARIANT, DOWNGRADE_VARIANT = "UPGRADE_VARIANT", "DOWNGRADE_VARIANT"
ADD_WORKER, REMOVE_WORKER = "ADD_WORKER", "REMOVE_WORKER"
KINDS = (ADD_REPLICA, REMOVE_REPLICA, LOAD_VARIANT, UNLOAD_VARIANT, UPGRADE_VARIANT, DOWNGRADE_VARIANT,
         ADD_WORKER, REMOVE_WORKER)
WORKER_KINDS = (ADD_WORKER, REMOVE_WORKER)


@dataclass(frozen=True, slots=True)
class Action:
    kind: str
    reason: str
    variant_id: str | None = None
    target_variant_id: str | None = None
    worker_id: str | None = None
    hardware: str | None = None
    from_count: int = 0
    to_count: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown scaling action kind {self.kind!r}; one of {', '.join(KINDS)}")

    def as_event(self, policy: str, at_ms: int, event_id: str, task: str | None = None) -> ScalingEvent:
        """The `ScalingEvent` message for this action."""
        return ScalingEvent(event_id=event_id, at=at_ms, kind=self.kind, policy=policy, task=task,
                            variant_id=self.variant_id, target_variant_id=self.target_variant_id,
                            worker_id=self.worker_id, hardware=self.hardware, from_count=self.from_count,
                            to_count=self.to_count, reason=self.reason)
