"""Compute profiles: every step's ECS placement, rendered through dagster-aws's own step handler, and the
executor and checks of each deployment."""

from __future__ import annotations

import json

import pytest
import yaml
from dagster import Failure

from imagesim_pipeline.orchestration.compute import (
    ComputeResource,
    aws_problems,
    deployment_executor,
    profiles,
)
from imagesim_pipeline.settings import PROJECT_ROOT, Settings

TRAINING_STEPS = {"smlc_model"}


def _placement(step_tags: dict[str, str]) -> tuple[dict, dict, dict]:
    """(run_task kwargs, task overrides, container overrides) of one step, as the ecs_executor builds them:
    the production run launcher's run_task_kwargs under the step's ``ecs/run_task_kwargs``, and the
    handler's own override methods (its constructor needs a live ECS task, so it is not called)."""
    from dagster_aws.ecs.executor import EcsStepHandler

    launcher = yaml.safe_load((PROJECT_ROOT / "deploy/aws/dagster.yaml").read_text())["run_launcher"]["config"]
    handler = object.__new__(EcsStepHandler)
    handler._task_overrides, handler._cpu, handler._memory, handler._ephemeral_storage = {}, None, None, None
    kwargs = {**launcher["run_task_kwargs"], **json.loads(step_tags.get("ecs/run_task_kwargs", "{}"))}
    return kwargs, handler._get_task_overrides(step_tags), handler._get_container_overrides(step_tags)


def _template_defaults() -> dict[str, str]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((PROJECT_ROOT / "deploy/aws/imagesim.yaml").read_text(), Loader=Loader)
    return {name: str(p.get("Default")) for name, p in template["Parameters"].items()}


def test_cpu_steps_go_to_the_m5_provider_and_training_to_the_gpu_provider():
    from imagesim_pipeline.definitions import defs

    names = [key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()]
    steps = {name: defs.resolve_assets_def(name).op.tags for name in names}
    assert len(steps) == 11
    defaults = _template_defaults()
    for name, tags in steps.items():
        kwargs, task, container = _placement(tags)
        provider = [s["capacityProvider"] for s in kwargs["capacityProviderStrategy"]]
        assert "launchType" not in kwargs  # a capacity provider strategy excludes a launch type
        if name in TRAINING_STEPS:
            assert tags["imagesim/compute"] == "trainer"
            assert provider == ["imagesim-trainer"] and kwargs["taskDefinition"] == "imagesim-trainer", name
            assert container == {"resourceRequirements": [{"type": "GPU", "value": "4"}]}
            assert (task["cpu"], task["memory"]) == (defaults["TrainerTaskCpu"], defaults["TrainerTaskMemory"])
        else:
            assert tags["imagesim/compute"] == "datamaker", name
            assert provider == ["imagesim-datamaker"] and kwargs["taskDefinition"] == "imagesim-datamaker", name
            assert container == {}, name
            # fits an m5.xlarge (4 vCPU = 4096 units, 16 GiB) beside the ECS agent
            assert int(task["cpu"]) < 4096 and int(task["memory"]) < 15 * 1024, name
    assert _template_defaults()["TrainerInstanceType"] == profiles()["trainer"].instance_type


def test_every_step_retries_transient_errors_only():
    from imagesim_pipeline.definitions import defs
    from imagesim_pipeline.orchestration.failures import TRANSIENT_RETRY

    names = [key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()]
    assert all(defs.resolve_assets_def(name).op.retry_policy == TRANSIENT_RETRY for name in names)


def test_the_settings_name_the_providers_and_task_definitions():
    renamed = profiles(Settings(ecs_trainer_capacity_provider="gpu-pool", ecs_trainer_task_definition="train-v2"))
    kwargs, _, _ = _placement(renamed["trainer"].step_tags())
    assert kwargs["capacityProviderStrategy"][0]["capacityProvider"] == "gpu-pool"
    assert kwargs["taskDefinition"] == "train-v2"


def test_each_deployment_has_its_executor():
    assert deployment_executor(Settings(deployment="local")).name == "multiprocess"
    assert deployment_executor(Settings(deployment="aws")).name == "ecs"


def test_the_aws_deployment_names_every_missing_setting(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    problems = aws_problems(Settings(deployment="aws", bucket="/data/bucket"))
    assert len(problems) == 3
    assert any("IMAGESIM_BUCKET must be an s3://" in p for p in problems)
    assert any("IMAGESIM_ECS_CLUSTER" in p for p in problems) and any("AWS_REGION" in p for p in problems)
    assert not aws_problems(Settings(deployment="aws", bucket="s3://b/p", ecs_cluster="c", aws_region="eu-west-1"))


def test_a_step_in_the_aws_deployment_refuses_a_local_bucket(monkeypatch, tmp_path):
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.orchestration.resources import BucketResource

    monkeypatch.setenv("IMAGESIM_DEPLOYMENT", "aws")
    with pytest.raises(Failure, match="the AWS deployment needs an s3:// bucket"):
        BucketResource(uri=str(tmp_path)).get_bucket()
    with pytest.raises(ImagesimError, match="the AWS deployment is missing settings: IMAGESIM_BUCKET"):
        ComputeResource(deployment="aws").training_device("auto", "auto")
