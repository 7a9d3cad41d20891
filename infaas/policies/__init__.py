"""Selection and scaling decisions: pure functions of an immutable `Snapshot` (see snapshot.py).

The live services (dispatcher, load monitor, scaler) and the simulator (`infaas.sim`) call these
same functions; neither keeps a copy of the logic.
"""

from .actions import Action
from .baselines import BaselinePlan, TaskDemand, initial_actions, plan_baseline
from .monitoring import classify, track
from .scaling import POLICIES, decide
from .selection import Decision, Request, select
from .snapshot import PolicyConfig, Snapshot, VariantLive, WorkerLive

__all__ = ["POLICIES", "Action", "BaselinePlan", "Decision", "PolicyConfig", "Request", "Snapshot", "TaskDemand",
           "VariantLive", "WorkerLive", "classify", "decide", "initial_actions", "plan_baseline", "select", "track"]
