"""Where workers come from: local processes, an EC2 Auto Scaling group, or a Kubernetes Deployment.

Every backend answers the same two requests from the scaler: start `count` workers of a hardware
kind, and stop one worker. Workers announce themselves on `infaas.metrics` once they are up,
which is how the scaler (and the dispatcher) learn about them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InfaasError
from .processes import ServiceProcess, supervised_env

log = logging.getLogger(__name__)


class BackendError(InfaasError, RuntimeError):
    """The backend refused or failed a request."""


class LocalBackend:
    """Worker processes on this machine (`infaas worker`), one per requested worker.

    It owns the workers it starts: `exited()` tells the scaler which of them ended without being
    asked to (crashed), so that it starts one replacement (`replaces_crashed`). A cloud backend's
    group or Deployment replaces crashed instances itself, so the scaler does not."""

    replaces_crashed = True

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None, worker_args: list[str] | None = None,
                 echo: Callable[[str], None] | None = None):
        self.log_dir = log_dir
        self.env = supervised_env(env)  # under `serve`, workers watch serve (they outlive a scaler restart)
        self.worker_args = worker_args or []
        self.echo = echo
        self.workers: dict[str, ServiceProcess] = {}
        self._counter = 0

    def start_workers(self, hardware: str, count: int, preload: list[str] = ()) -> list[str]:
        started = []
        for _ in range(count):
            self._counter += 1
            worker_id = f"{hardware}-worker-{os.getpid()}-{self._counter}"
            args = ["worker", "--hardware", hardware, "--worker-id", worker_id, *self.worker_args]
            if preload:
                args += ["--variants", ",".join(preload)]
            process = ServiceProcess(worker_id, args, self.log_dir, self.env, self.echo)
            self.workers[worker_id] = process.start()
            started.append(worker_id)
        return started

    def wait_ready(self, worker_ids: list[str], timeout_s: float) -> None:
        for worker_id in worker_ids:
            self.workers[worker_id].wait_ready(timeout_s)

    def exited(self) -> dict[str, str]:
        """Workers of ours that ended without a stop request: worker id -> exit cause. Each is
        told once (it is then no longer ours)."""
        gone = {wid: p.exit_cause for wid, p in self.workers.items() if not p.alive}
        for worker_id in gone:
            del self.workers[worker_id]
        return gone

    def stop_worker(self, worker_id: str) -> bool:
        process = self.workers.pop(worker_id, None)
        if process is None:
            return False  # not one of ours (e.g. started by an earlier scaler): the scaler sends it STOP instead
        process.stop()
        return True

    def close(self) -> None:
        for process in self.workers.values():  # all drain at once, not one after the other
            if process.alive:
                process.proc.terminate()
        for worker_id in list(self.workers):
            self.stop_worker(worker_id)


class AwsBackend:
    """An EC2 Auto Scaling group per hardware kind; workers are its instances (worker id = instance id)."""

    def __init__(self, groups: dict[str, str], client: Any | None = None, region: str | None = None):
        import boto3
        self.groups = groups
        self.client = client or boto3.client("autoscaling", region_name=region)

    def _group(self, hardware: str) -> dict:
        name = self.groups.get(hardware)
        if name is None:
            raise BackendError(f"no Auto Scaling group configured for hardware {hardware!r}")
        found = self.client.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
        if not found:
            raise BackendError(f"Auto Scaling group {name!r} does not exist")
        return found[0]

    def desired(self, hardware: str) -> int:
        return int(self._group(hardware)["DesiredCapacity"])

    def start_workers(self, hardware: str, count: int) -> list[str]:
        group = self._group(hardware)
        target = min(group["DesiredCapacity"] + count, group["MaxSize"])
        self.client.set_desired_capacity(AutoScalingGroupName=group["AutoScalingGroupName"], DesiredCapacity=target,
                                         HonorCooldown=False)
        return []  # instance ids are known once EC2 launches them; they report as workers

    def stop_worker(self, worker_id: str) -> bool:
        """Terminate that instance and shrink its group by one."""
        self.client.terminate_instance_in_auto_scaling_group(InstanceId=worker_id,
                                                             ShouldDecrementDesiredCapacity=True)
        return True

    def close(self) -> None:
        pass


def deployment_scale_body(replicas: int) -> dict:
    """The body of a `PATCH .../deployments/{name}/scale` request."""
    if replicas < 0:
        raise BackendError(f"cannot scale a Deployment to {replicas} replicas")
    return {"spec": {"replicas": int(replicas)}}


def pod_deletion_cost_body(cost: int) -> dict:
    """Annotate a pod so the ReplicaSet removes it first when the Deployment shrinks."""
    return {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": str(int(cost))}}}


class KubernetesBackend:
    """A Deployment of workers per hardware kind; scaling changes its `replicas`.

    Worker ids are pod names (`--worker-id $(POD_NAME)` in the pod spec), so a chosen worker is
    removed by lowering its pod-deletion cost and then shrinking the Deployment by one.
    """

    def __init__(self, deployments: dict[str, str], namespace: str = "infaas", api: Any | None = None,
                 core: Any | None = None):
        self.deployments = deployments
        self.namespace = namespace
        if api is None or core is None:
            from kubernetes import client, config  # the optional `kubernetes` extra
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api, core = api or client.AppsV1Api(), core or client.CoreV1Api()
        self.api, self.core = api, core

    def _name(self, hardware: str) -> str:
        name = self.deployments.get(hardware)
        if name is None:
            raise BackendError(f"no Deployment configured for hardware {hardware!r}")
        return name

    def replicas(self, hardware: str) -> int:
        scale = self.api.read_namespaced_deployment_scale(self._name(hardware), self.namespace)
        return int(scale.spec.replicas or 0)

    def _scale(self, hardware: str, replicas: int) -> None:
        self.api.patch_namespaced_deployment_scale(self._name(hardware), self.namespace,
                                                   deployment_scale_body(replicas))

    def start_workers(self, hardware: str, count: int) -> list[str]:
        self._scale(hardware, self.replicas(hardware) + count)
        return []

    def stop_worker(self, worker_id: str, hardware: str | None = None) -> bool:
        """Remove that pod: the Deployment of its hardware shrinks by one (the scaler names only the pod)."""
        hardware = hardware or self.hardware_of(worker_id)
        self.core.patch_namespaced_pod(worker_id, self.namespace, pod_deletion_cost_body(-1000))
        self._scale(hardware, max(self.replicas(hardware) - 1, 0))
        return True

    def hardware_of(self, pod: str) -> str:
        """The hardware whose Deployment owns `pod`: Deployment pods are named
        `<deployment>-<pod-template-hash>-<suffix>`, so exactly two parts follow the Deployment's name
        (which tells `workers-gpu` from `workers-gpu-big`)."""
        for hardware, deployment in self.deployments.items():
            rest = pod.removeprefix(deployment + "-")
            if rest != pod and len(rest.split("-")) == 2:
                return hardware
        raise BackendError(f"pod {pod!r} belongs to none of the Deployments {sorted(self.deployments.values())}")

    def close(self) -> None:
        pass
