"""Compute profiles: which machine a step runs on, and the executor of the chosen deployment.

Two profiles, from the reference deployment: ``datamaker`` (m5.xlarge: 4 vCPU, 16 GiB) runs every CPU
step (ingest, OSM, chips, labels, dataset, embeddings, index) and ``trainer`` (4 GPUs) trains. The
reference's trainer is a p3.8xlarge (4 V100), but the pinned torch (2.15, CUDA 13.2) has no kernels for
the V100's compute capability 7.0, so the profile and the stack default to g5.12xlarge (4 A10G, 7.5+
works: g4dn, g5, g6, g6e). Each asset carries its profile's step tags. ``IMAGESIM_DEPLOYMENT`` chooses what they
mean: ``local`` runs every step in a process of this machine (multiprocess executor; the ``trainer``
pool of one slot serializes GPU work; CUDA is used when present), ``aws`` runs every step as an ECS
task (dagster-aws's ``ecs_executor``), placed by its ``ecs/*`` tags on the profile's capacity
provider and task definition, the trainer's with its GPUs reserved.
"""

import json
import os
from dataclasses import dataclass

from dagster import ConfigurableResource, ExecutorDefinition, multiprocess_executor
from pydantic import Field

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.settings import Settings, settings

TRAINER_POOL = "trainer"
"""The pool of training steps: one slot, one training at a time per instance (set by ``configure_pools``)."""
INDEX_POOL = "index"
"""The pool of the steps that rewrite the whole similarity index or change table: one at a time."""
POOL_LIMITS = {TRAINER_POOL: 1, INDEX_POOL: 1}


@dataclass(frozen=True)
class ComputeProfile:
    """One kind of machine: what a step may use of it, and where ECS finds it."""

    name: str
    instance_type: str
    task_cpu: int
    """ECS CPU units of a step (1024 a vCPU), leaving the ECS agent and the OS their share."""
    task_memory_mib: int
    gpus: int
    capacity_provider: str
    task_definition: str

    def step_tags(self) -> dict[str, str]:
        """The op tags of a step on this profile; ``ecs/*`` are read by dagster-aws's ``ecs_executor``."""
        tags = {
            "imagesim/compute": self.name,
            "ecs/cpu": str(self.task_cpu),
            "ecs/memory": str(self.task_memory_mib),
            "ecs/run_task_kwargs": json.dumps({
                "taskDefinition": self.task_definition,
                "capacityProviderStrategy": [{"capacityProvider": self.capacity_provider, "weight": 1, "base": 0}],
            }, sort_keys=True),
        }
        if self.gpus:
            tags["ecs/container_overrides"] = json.dumps(
                {"resourceRequirements": [{"type": "GPU", "value": str(self.gpus)}]}, sort_keys=True)
        return tags


def profiles(current: Settings | None = None) -> dict[str, ComputeProfile]:
    """The two profiles, with the capacity providers and task definitions of the settings."""
    current = current or settings()
    return {
        # m5.xlarge: 4 vCPU, 16 GiB; a step takes most of one instance
        "datamaker": ComputeProfile("datamaker", "m5.xlarge", task_cpu=3840, task_memory_mib=14336, gpus=0,
                                    capacity_provider=current.ecs_datamaker_capacity_provider,
                                    task_definition=current.ecs_datamaker_task_definition),
        # g5.12xlarge: 48 vCPU, 192 GiB, 4 GPUs (the stack's TrainerTaskCpu/TrainerTaskMemory defaults)
        "trainer": ComputeProfile("trainer", "g5.12xlarge", task_cpu=40960, task_memory_mib=180224, gpus=4,
                                  capacity_provider=current.ecs_trainer_capacity_provider,
                                  task_definition=current.ecs_trainer_task_definition),
    }


DATAMAKER_TAGS = profiles()["datamaker"].step_tags()
TRAINER_TAGS = profiles()["trainer"].step_tags()


def deployment_executor(current: Settings | None = None) -> ExecutorDefinition:
    """The executor of the deployment the settings choose."""
    current = current or settings()
    if current.deployment == "aws":
        from dagster_aws.ecs import ecs_executor

        # Step retries come from each asset's retry policy; the executor only caps the fan-out.
        return ecs_executor.configured({"max_concurrent": 64})
    return multiprocess_executor.configured({"max_concurrent": max(1, len(os.sched_getaffinity(0)) // 2)})


def aws_problems(current: Settings) -> list[str]:
    """What the AWS deployment lacks in the settings (empty when complete)."""
    problems = []
    if not current.bucket.startswith("s3://"):
        problems.append(f"IMAGESIM_BUCKET must be an s3://bucket/prefix URI (it is {current.bucket_uri!r})")
    if not current.ecs_cluster:
        problems.append("IMAGESIM_ECS_CLUSTER must name the ECS cluster (the stack's ClusterName output)")
    if not current.aws_region:
        problems.append("AWS_REGION (or AWS_DEFAULT_REGION) must name the region of the cluster and bucket")
    return problems


def require_deployment(deployment: str | None = None) -> None:
    """Fail with every missing setting at once when the deployment (default: the settings') is an
    incomplete AWS one."""
    current = settings()
    problems = aws_problems(current) if (deployment or current.deployment) == "aws" else []
    if problems:
        raise ImagesimError("the AWS deployment is missing settings: " + "; ".join(problems)
                            + ". Set them in the task definitions (deploy/aws/imagesim.yaml does).")


class ComputeResource(ConfigurableResource):
    """The compute of a step: the deployment's profile and, for training, the device to use."""

    deployment: str = Field(default_factory=lambda: settings().deployment,
                            description="local or aws (IMAGESIM_DEPLOYMENT)")

    def training_device(self, accelerator: str, devices: int | str) -> tuple[str, int | str, str]:
        """The accelerator and devices a training step uses here (``models.training.choose_device``)."""
        from imagesim_pipeline.models.training import choose_device

        require_deployment(self.deployment)
        return choose_device(accelerator, devices)


def configure_pools(instance) -> None:
    """Give the trainer and index pools their one slot on ``instance`` (idempotent)."""
    for pool, limit in POOL_LIMITS.items():
        info = instance.event_log_storage.get_concurrency_info(pool)
        if info.slot_count != limit:
            instance.event_log_storage.set_concurrency_slots(pool, limit)


__all__ = ["ComputeProfile", "ComputeResource", "DATAMAKER_TAGS", "INDEX_POOL", "POOL_LIMITS", "TRAINER_POOL",
           "TRAINER_TAGS", "aws_problems", "configure_pools", "deployment_executor", "profiles", "require_deployment"]
