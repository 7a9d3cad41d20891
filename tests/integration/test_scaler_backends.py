"""The scaler's worker backends: local processes for real, EC2 Auto Scaling against moto's AWS
mock (no cloud exists here), and the Kubernetes requests the backend builds."""

from __future__ import annotations

import time

import boto3
import pytest
from confluent_kafka import OFFSET_END, TopicPartition
from moto import mock_aws

from infaas import bus
from infaas.scaler.backends import (
    AwsBackend,
    BackendError,
    KubernetesBackend,
    LocalBackend,
    deployment_scale_body,
    pod_deletion_cost_body,
)
from infaas.schemas.codec import default_codec
from tests.conftest import settings_env


def test_local_backend_starts_and_stops_real_worker_processes(settings, tmp_path):
    consumer = bus.consumer(settings, "test-backend")
    topic = settings.topic("metrics")
    consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
    backend = LocalBackend(tmp_path, settings_env(settings))
    try:
        [worker_id] = backend.start_workers("cpu", 1)
        process = backend.workers[worker_id]
        process.wait_ready(60)
        seen, deadline = set(), time.monotonic() + 20
        while worker_id not in seen and time.monotonic() < deadline:
            for message in consumer.consume(50, 0.5):
                seen.add(default_codec().decode_as("WorkerReport", message.value())["worker_id"])
        assert worker_id in seen, "the started worker never reported"
        assert backend.stop_worker(worker_id)
        assert not process.alive and process.proc.returncode == 0
        assert not backend.stop_worker("not-ours")  # a worker it did not start: the scaler sends STOP instead
    finally:
        backend.close()
        consumer.close()


@pytest.fixture
def aws():
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        image = ec2.describe_images()["Images"][0]["ImageId"]
        ec2.create_launch_template(LaunchTemplateName="infaas-cpu",
                                   LaunchTemplateData={"ImageId": image, "InstanceType": "c5.large"})
        autoscaling = boto3.client("autoscaling", region_name="us-east-1")
        autoscaling.create_auto_scaling_group(AutoScalingGroupName="infaas-cpu-workers", MinSize=0, MaxSize=4,
                                              DesiredCapacity=1, AvailabilityZones=["us-east-1a"],
                                              LaunchTemplate={"LaunchTemplateName": "infaas-cpu"})
        yield autoscaling


def test_aws_backend_sets_the_desired_capacity(aws):
    backend = AwsBackend({"cpu": "infaas-cpu-workers"}, client=aws)
    assert backend.desired("cpu") == 1
    backend.start_workers("cpu", 2)
    assert backend.desired("cpu") == 3
    backend.start_workers("cpu", 5)
    assert backend.desired("cpu") == 4  # never above the group's maximum
    group = aws.describe_auto_scaling_groups(AutoScalingGroupNames=["infaas-cpu-workers"])["AutoScalingGroups"][0]
    instance = group["Instances"][0]["InstanceId"]
    backend.stop_worker(instance)  # the worker id is the instance id
    assert backend.desired("cpu") == 3
    with pytest.raises(BackendError, match="no Auto Scaling group configured for hardware 'gpu-t4'"):
        backend.start_workers("gpu-t4", 1)


class RecordingApi:
    """Stands in for the Kubernetes API server: records the requests (no cluster exists here)."""

    def __init__(self, replicas: int):
        self.replicas, self.calls = replicas, []

    def read_namespaced_deployment_scale(self, name, namespace):
        self.calls.append(("read", name, namespace))
        return type("Scale", (), {"spec": type("Spec", (), {"replicas": self.replicas})})()

    def patch_namespaced_deployment_scale(self, name, namespace, body):
        self.calls.append(("scale", name, namespace, body))
        self.replicas = body["spec"]["replicas"]

    def patch_namespaced_pod(self, name, namespace, body):
        self.calls.append(("pod", name, namespace, body))


def test_kubernetes_backend_builds_the_scale_and_deletion_cost_requests():
    api = RecordingApi(replicas=2)
    backend = KubernetesBackend({"cpu": "infaas-worker-cpu"}, namespace="serving", api=api, core=api)
    backend.start_workers("cpu", 2)
    assert api.calls[-1] == ("scale", "infaas-worker-cpu", "serving", {"spec": {"replicas": 4}})
    backend.stop_worker("infaas-worker-cpu-7f9c-x2", "cpu")
    assert ("pod", "infaas-worker-cpu-7f9c-x2", "serving",
            {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-1000"}}}) in api.calls
    assert api.calls[-1] == ("scale", "infaas-worker-cpu", "serving", {"spec": {"replicas": 3}})
    assert deployment_scale_body(0) == {"spec": {"replicas": 0}}
    assert pod_deletion_cost_body(5)["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"] == "5"
    with pytest.raises(BackendError):
        deployment_scale_body(-1)


class ScalesPerDeployment(RecordingApi):
    """Like RecordingApi, with a replica count per Deployment."""

    def __init__(self, replicas: dict[str, int]):
        super().__init__(0)
        self.by_name = replicas

    def read_namespaced_deployment_scale(self, name, namespace):
        self.replicas = self.by_name[name]
        return super().read_namespaced_deployment_scale(name, namespace)

    def patch_namespaced_deployment_scale(self, name, namespace, body):
        super().patch_namespaced_deployment_scale(name, namespace, body)
        self.by_name[name] = body["spec"]["replicas"]


def test_kubernetes_backend_stops_a_pod_by_shrinking_its_own_hardwares_deployment():
    """The scaler names only the pod: a GPU pod shrinks the GPU Deployment, not the first one (CPU)."""
    deployments = {"cpu": "infaas-worker", "gpu": "infaas-worker-gpu"}  # one name prefixes the other
    api = ScalesPerDeployment({"infaas-worker": 3, "infaas-worker-gpu": 2})
    backend = KubernetesBackend(deployments, namespace="serving", api=api, core=api)
    assert backend.stop_worker("infaas-worker-gpu-7f9c5d8b4-x2kq9")
    assert api.by_name == {"infaas-worker": 3, "infaas-worker-gpu": 1}
    assert backend.stop_worker("infaas-worker-6d4cf56db6-8zq7w")
    assert api.by_name == {"infaas-worker": 2, "infaas-worker-gpu": 1}
    with pytest.raises(BackendError, match="belongs to none"):
        backend.stop_worker("someone-else-7f9c5d8b4-x2kq9")
    assert api.by_name == {"infaas-worker": 2, "infaas-worker-gpu": 1}
