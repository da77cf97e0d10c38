"""The AWS deployment: the CloudFormation template (deploy/aws/imagesim.yaml) against imagesim's settings and
Dagster instance file, its IAM policies, the three Dockerfiles, and the search service image's requirements
(the service must run without Dagster and with nothing but those requirements)."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as md
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from imagesim_pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "aws" / "imagesim.yaml"
DAGSTER_YAML = ROOT / "deploy" / "aws" / "dagster.yaml"
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = {name: DOCKER / f"{name}.Dockerfile" for name in ("datamaker", "trainer", "service")}
SERVICE_REQUIREMENTS = DOCKER / "service-requirements.txt"

# Sample parameter values to render the template's !Sub strings with.
PARAMS = {"BucketName": "the-bucket", "KeyPrefix": "the/prefix", "AWS::Partition": "aws", "AWS::Region": "eu-west-1",
          "AWS::AccountId": "123456789012", "AWS::StackName": "imagesim"}
BUCKET_ARN = "arn:aws:s3:::the-bucket"
OBJECTS_ARN = "arn:aws:s3:::the-bucket/the/prefix/"
S3_OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
# Actions that take no resource-level permissions: the only ones allowed on Resource "*".
NO_RESOURCE_LEVEL = {"ecs:DescribeTaskDefinition", "secretsmanager:ListSecrets"}
# GPU instances that may train: (GPUs, vCPUs, GiB of memory, CUDA compute capability).
GPU_INSTANCES = {"g4dn.12xlarge": (4, 48, 192, (7, 5)), "g5.12xlarge": (4, 48, 192, (8, 6)),
                 "g6.12xlarge": (4, 48, 192, (8, 9)), "g6e.12xlarge": (4, 48, 384, (8, 9)),
                 "p3.8xlarge": (4, 32, 244, (7, 0))}
DAGSTER_FAMILIES = ("imagesim-datamaker", "imagesim-trainer", "imagesim-webserver", "imagesim-daemon")


# --- loading ---------------------------------------------------------------------------------------
@cache
def template() -> dict:
    from cfnlint.decode import decode_str

    decoded, problems = decode_str(TEMPLATE.read_text())
    assert not problems, problems
    return json.loads(json.dumps(decoded))  # plain dicts: {"Ref": ...}, {"Fn::Sub": ...}


def resources(kind: str) -> dict[str, dict]:
    return {name: r for name, r in template()["Resources"].items() if r["Type"] == kind}


def props(name: str) -> dict:
    return template()["Resources"][name]["Properties"]


def ref_name(value) -> str:
    """The logical id a {"Ref": X} or {"Fn::GetAtt": [X, ...]} names."""
    if isinstance(value, dict) and "Ref" in value:
        return value["Ref"]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        att = value["Fn::GetAtt"]
        return att[0] if isinstance(att, list) else att.split(".")[0]
    raise AssertionError(f"{value!r} is not a Ref or GetAtt")


def render(value):
    """A value with !Sub strings and parameter Refs filled in from PARAMS (other references kept as <X>)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return [render(v) for v in value]
    if isinstance(value, dict) and "Fn::Sub" in value:
        text = value["Fn::Sub"]
        assert isinstance(text, str), "only the string form of !Sub is used"
        return re.sub(r"\$\{([^}]+)\}", lambda m: PARAMS.get(m.group(1), f"<{m.group(1)}>"), text)
    if isinstance(value, dict) and "Ref" in value:
        return PARAMS.get(value["Ref"], f"<{value['Ref']}>")
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return f"<{ref_name(value)}>"
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    return value


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def task_definition(family: str) -> dict:
    found = [p["Properties"] for p in resources("AWS::ECS::TaskDefinition").values()
             if p["Properties"].get("Family") == family]
    assert len(found) == 1, f"{len(found)} task definitions of family {family}"
    return found[0]


def dagster_config() -> dict:
    return yaml.safe_load(DAGSTER_YAML.read_text())


def env_names(config) -> set[str]:
    """The environment variables a Dagster config reads through {env: NAME}."""
    if isinstance(config, dict):
        if set(config) == {"env"}:
            return {config["env"]}
        return set().union(*(env_names(v) for v in config.values())) if config else set()
    if isinstance(config, list):
        return set().union(*(env_names(v) for v in config)) if config else set()
    return set()


def statements_by_role() -> dict[str, list[dict]]:
    """Every Allow/Deny statement of the template's IAM policies, by the role that holds it."""
    out: dict[str, list[dict]] = {name: [] for name in resources("AWS::IAM::Role")}
    for name, role in resources("AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            out[name] += as_list(policy["PolicyDocument"]["Statement"])
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
        for policy in resources(kind).values():
            p = policy["Properties"]
            roles = [ref_name(r) for r in p.get("Roles", [])] + ([p["RoleName"]] if "RoleName" in p else [])
            assert roles, "a policy attached to no role"
            for role in roles:
                out[ref_name(role) if isinstance(role, dict) else role] += as_list(p["PolicyDocument"]["Statement"])
    return out


def allowed_actions(statements: list[dict]) -> set[str]:
    return {a for s in statements if s["Effect"] == "Allow" for a in as_list(s["Action"])}


# --- (a) the template is valid CloudFormation ------------------------------------------------------
def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), str(TEMPLATE)], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- (b) the template and imagesim agree on names ----------------------------------------------------
def _default(field: str) -> str:
    return Settings.model_fields[field].default


def test_capacity_providers_and_task_families_are_the_settings_defaults():
    providers = {p["Properties"]["Name"]: name for name, p in resources("AWS::ECS::CapacityProvider").items()}
    assert set(providers) == {_default("ecs_datamaker_capacity_provider"), _default("ecs_trainer_capacity_provider")}
    for name in providers.values():
        assert props(name)["AutoScalingGroupProvider"]["ManagedScaling"]["Status"] == "ENABLED"
    (association,) = resources("AWS::ECS::ClusterCapacityProviderAssociations").values()
    assert {ref_name(c) for c in association["Properties"]["CapacityProviders"]} == set(providers.values())
    families = {p["Properties"]["Family"] for p in resources("AWS::ECS::TaskDefinition").values()}
    assert {_default("ecs_datamaker_task_definition"), _default("ecs_trainer_task_definition")} <= families
    # dagster.yaml's run launcher: the same container name and capacity provider
    launcher = dagster_config()["run_launcher"]["config"]
    for family in (_default("ecs_datamaker_task_definition"), _default("ecs_trainer_task_definition")):
        names = [c["Name"] for c in task_definition(family)["ContainerDefinitions"]]
        assert names == [launcher["container_name"]], (family, names)
    strategy = launcher["run_task_kwargs"]["capacityProviderStrategy"]
    assert [s["capacityProvider"] for s in strategy] == [_default("ecs_datamaker_capacity_provider")]


def _asg_of(provider_name: str) -> dict:
    (cp,) = [p["Properties"] for p in resources("AWS::ECS::CapacityProvider").values()
             if p["Properties"]["Name"] == provider_name]
    return props(ref_name(cp["AutoScalingGroupProvider"]["AutoScalingGroupArn"]))


def _instance_type(asg: dict):
    return props(ref_name(asg["LaunchTemplate"]["LaunchTemplateId"]))["LaunchTemplateData"]["InstanceType"]


def test_the_datamaker_profile_runs_on_m5_xlarge():
    asg = _asg_of(_default("ecs_datamaker_capacity_provider"))
    assert _instance_type(asg) == "m5.xlarge"
    assert "DesiredCapacity" not in asg, "managed scaling sets the desired capacity"


def _arch_supported(capability: tuple[int, int], arch_flags: list[str]) -> bool:
    """Whether torch's compiled kernels run on a GPU of this compute capability: a cubin for sm_Mx runs on
    M.y for x <= y; PTX for compute_ab is compiled on the fly for any newer GPU."""
    major, minor = capability
    for flag in arch_flags:
        kind, _, number = flag.partition("_")
        a, b = int(number[:-1]), int(number[-1])
        if kind == "sm" and a == major and b <= minor:
            return True
        if kind == "compute" and (a, b) <= capability:
            return True
    return False


def test_the_trainer_profile_scales_from_zero_on_gpus_that_the_pinned_torch_supports():
    asg = _asg_of(_default("ecs_trainer_capacity_provider"))
    assert str(asg["MinSize"]) == "0" and "DesiredCapacity" not in asg
    instance_type = _instance_type(asg)
    parameter = template()["Parameters"][ref_name(instance_type)] if isinstance(instance_type, dict) else None
    choices = parameter["AllowedValues"] if parameter else [instance_type]
    default = parameter["Default"] if parameter else instance_type
    assert default in choices
    trainer = task_definition(_default("ecs_trainer_task_definition"))
    (container,) = trainer["ContainerDefinitions"]
    gpus = {r["Type"]: int(r["Value"]) for r in container.get("ResourceRequirements", [])}.get("GPU")
    assert gpus == 4, "a training step takes the instance's four GPUs"

    def number(value) -> int:
        return int(template()["Parameters"][value["Ref"]]["Default"] if isinstance(value, dict) else value)

    cpu, memory = number(trainer["Cpu"]), number(trainer["Memory"])
    import torch

    flags = torch._C._cuda_getArchFlags().split() if hasattr(torch._C, "_cuda_getArchFlags") else []
    if not flags:
        pytest.skip(f"torch {torch.__version__} has no CUDA kernels to check")
    for choice in choices:
        assert choice in GPU_INSTANCES, f"{choice}: add its GPUs, vCPUs, memory and compute capability here"
        n_gpus, vcpus, gib, capability = GPU_INSTANCES[choice]
        assert _arch_supported(capability, flags), (
            f"{choice}: torch {torch.__version__} (CUDA {torch.version.cuda}) has kernels for {flags}, "
            f"none for compute capability {capability[0]}.{capability[1]}")
        assert n_gpus >= gpus and cpu <= vcpus * 1024 and memory <= gib * 1024 * 0.95, choice


def test_dagster_tasks_get_every_variable_the_instance_file_reads():
    needed = env_names(dagster_config())
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_PASSWORD", "IMAGESIM_ECS_CLUSTER"} <= needed
    for family in DAGSTER_FAMILIES:
        (container,) = task_definition(family)["ContainerDefinitions"]
        env = {e["Name"]: e["Value"] for e in container.get("Environment", [])}
        secrets = {s["Name"] for s in container.get("Secrets", [])}
        assert needed <= set(env) | secrets, (family, needed - set(env) - secrets)
        # every IMAGESIM_ variable is a setting (a typo would silently fall back to the default)
        for name in env:
            if name.startswith("IMAGESIM_"):
                assert name.removeprefix("IMAGESIM_").lower() in Settings.model_fields, (family, name)
        assert env["IMAGESIM_DEPLOYMENT"] == "aws"
        assert render(env["IMAGESIM_BUCKET"]) == "s3://the-bucket/the/prefix"
        assert ref_name(env["IMAGESIM_ECS_CLUSTER"]) in resources("AWS::ECS::Cluster")
        for profile in ("datamaker", "trainer"):
            assert env[f"IMAGESIM_ECS_{profile.upper()}_TASK_DEFINITION"] == f"imagesim-{profile}"
            provider = ref_name(env[f"IMAGESIM_ECS_{profile.upper()}_CAPACITY_PROVIDER"])
            assert props(provider)["Name"] == f"imagesim-{profile}"


def test_services_and_commands():
    services = {p["Properties"]["ServiceName"]: p["Properties"] for p in resources("AWS::ECS::Service").values()}
    assert set(services) == {"imagesim-webserver", "imagesim-daemon", "imagesim-search"}
    for service in services.values():
        (strategy,) = service["CapacityProviderStrategy"]
        assert props(ref_name(strategy["CapacityProvider"]))["Name"] == _default("ecs_datamaker_capacity_provider")
    daemon = services["imagesim-daemon"]
    assert daemon["DesiredCount"] == 1 and daemon["DeploymentConfiguration"]["MaximumPercent"] == 100
    commands = {family: task_definition(family)["ContainerDefinitions"][0].get("Command")
                for family in ("imagesim-webserver", "imagesim-daemon")}
    assert commands == {"imagesim-webserver": ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w",
                                               "workspace.yaml"],
                        "imagesim-daemon": ["imagesim", "daemon"]}
    images = {family: ref_name(task_definition(family)["ContainerDefinitions"][0]["Image"])
              for family in (*DAGSTER_FAMILIES, "imagesim-search")}
    assert images == {"imagesim-datamaker": "DatamakerImage", "imagesim-trainer": "TrainerImage",
                      "imagesim-webserver": "DatamakerImage", "imagesim-daemon": "DatamakerImage",
                      "imagesim-search": "ServiceImage"}


# --- (c) least privilege -----------------------------------------------------------------------------
def test_no_wildcard_permissions():
    for role, statements in statements_by_role().items():
        for s in statements:
            if s["Effect"] != "Allow":
                continue
            actions = as_list(s["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), (role, actions)
            resources_ = [render(r) for r in as_list(s["Resource"])]
            if "*" in resources_:
                assert set(actions) <= NO_RESOURCE_LEVEL, (role, actions)
            if any(a.startswith("s3:") for a in actions):
                assert not any(r == "*" or r.startswith("arn:aws:s3:::*") for r in resources_), (role, resources_)


def test_bucket_access_stays_under_the_prefix():
    by_role = statements_by_role()
    for role, statements in by_role.items():
        for s in statements:
            actions = set(as_list(s["Action"]))
            if s["Effect"] != "Allow" or not any(a.startswith("s3:") for a in actions):
                continue
            if actions & S3_OBJECT_ACTIONS:
                assert actions <= S3_OBJECT_ACTIONS, (role, actions)
                for resource in as_list(s["Resource"]):
                    assert render(resource).startswith(OBJECTS_ARN), (role, render(resource))
            else:
                assert actions == {"s3:ListBucket"}, (role, actions)
                assert [render(r) for r in as_list(s["Resource"])] == [BUCKET_ARN], role
                prefixes = render(s["Condition"]["StringLike"]["s3:prefix"])
                assert set(s["Condition"]) == {"StringLike"} and all(
                    p.startswith("the/prefix/") for p in as_list(prefixes)), (role, s["Condition"])

    def role_of(family: str) -> str:
        return ref_name(task_definition(family)["TaskRoleArn"])

    for family in (_default("ecs_datamaker_task_definition"), _default("ecs_trainer_task_definition")):
        assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"} <= allowed_actions(
            by_role[role_of(family)]), family
    assert allowed_actions(by_role[role_of("imagesim-search")]) == {"s3:GetObject", "s3:ListBucket"}
    # training steps touch the bucket and nothing else
    assert {a.split(":")[0] for a in allowed_actions(by_role[role_of("imagesim-trainer")])} == {"s3"}


def test_ecs_and_pass_role_permissions_are_scoped():
    by_role = statements_by_role()
    task_roles = {ref_name(p["Properties"]["TaskRoleArn"]) for p in resources("AWS::ECS::TaskDefinition").values()}
    execution_roles = {ref_name(p["Properties"]["ExecutionRoleArn"])
                       for p in resources("AWS::ECS::TaskDefinition").values()}
    for role, statements in by_role.items():
        for s in statements:
            actions = set(as_list(s["Action"]))
            if "ecs:RunTask" in actions:
                assert actions == {"ecs:RunTask"}
                for resource in as_list(s["Resource"]):
                    assert re.fullmatch(r"arn:aws:ecs:eu-west-1:123456789012:task-definition/imagesim-"
                                        r"(datamaker|trainer):\*", render(resource)), render(resource)
                assert "ecs:cluster" in s["Condition"]["ArnEquals"]
            if "iam:PassRole" in actions:
                passed = {ref_name(r) for r in as_list(s["Resource"])}
                assert passed <= task_roles | execution_roles, (role, passed)
                assert s["Condition"]["StringEquals"]["iam:PassedToService"] == "ecs-tasks.amazonaws.com"
            if "secretsmanager:GetSecretValue" in actions:
                assert role in execution_roles and [ref_name(r) for r in as_list(s["Resource"])] == ["DatabaseSecret"]
    # the webserver/daemon start run workers only; run workers start steps on both profiles
    orchestrator = ref_name(task_definition("imagesim-daemon")["TaskRoleArn"])
    runs = [render(r) for s in by_role[orchestrator] if "ecs:RunTask" in as_list(s["Action"])
            for r in as_list(s["Resource"])]
    assert runs and all("task-definition/imagesim-datamaker:" in r for r in runs)
    datamaker = ref_name(task_definition("imagesim-datamaker")["TaskRoleArn"])
    steps = [render(r) for s in by_role[datamaker] if "ecs:RunTask" in as_list(s["Action"])
             for r in as_list(s["Resource"])]
    assert any("imagesim-trainer:" in r for r in steps) and any("imagesim-datamaker:" in r for r in steps)
    # EcsRunLauncher lists secrets by tag unless dagster.yaml sets secrets_tag to null
    tag = dagster_config()["run_launcher"]["config"].get("secrets_tag", "dagster")
    assert ("secretsmanager:ListSecrets" in allowed_actions(by_role[orchestrator])) == (tag is not None)
    assert "secretsmanager:ListSecrets" not in allowed_actions(by_role[datamaker])


def _may(statements: list[dict], action: str, arn: str) -> bool:
    return any(s["Effect"] == "Allow" and action in as_list(s["Action"])
               and any(fnmatch.fnmatchcase(arn, render(r)) for r in as_list(s["Resource"])) for s in statements)


def test_every_dagster_task_may_write_where_the_instance_keeps_compute_logs():
    compute_logs = dagster_config().get("compute_logs")
    if not compute_logs or compute_logs.get("class") != "S3ComputeLogManager":
        pytest.skip("dagster.yaml keeps no compute logs on S3")
    config = compute_logs["config"]
    by_role = statements_by_role()
    for family in DAGSTER_FAMILIES:
        definition = task_definition(family)
        (container,) = definition["ContainerDefinitions"]
        env = {e["Name"]: render(e["Value"]) for e in container["Environment"]}
        bucket, prefix = (env[config[k]["env"]] if isinstance(config[k], dict) else config[k]
                          for k in ("bucket", "prefix"))
        prefix = prefix.strip("/")
        assert bucket == "the-bucket" and prefix.startswith("the/prefix/"), (family, bucket, prefix)
        key = f"arn:aws:s3:::{bucket}/{prefix}/storage/run/step.out"
        statements = by_role[ref_name(definition["TaskRoleArn"])]
        assert _may(statements, "s3:PutObject", key) and _may(statements, "s3:GetObject", key), family


# --- (d) no plaintext password ------------------------------------------------------------------------
def test_the_database_password_only_travels_as_a_secret():
    for family in (*DAGSTER_FAMILIES, "imagesim-search"):
        for container in task_definition(family)["ContainerDefinitions"]:
            env = [e["Name"] for e in container.get("Environment", [])]
            assert not [n for n in env if "PASSWORD" in n or "SECRET" in n], (family, env)
            for secret in container.get("Secrets", []):
                if secret["Name"] == "DAGSTER_PG_PASSWORD":
                    assert secret["ValueFrom"] == {"Fn::Sub": "${DatabaseSecret}:password::"}
    for family in DAGSTER_FAMILIES:
        (container,) = task_definition(family)["ContainerDefinitions"]
        assert "DAGSTER_PG_PASSWORD" in {s["Name"] for s in container["Secrets"]}, family
    assert "Secrets" not in task_definition("imagesim-search")["ContainerDefinitions"][0]
    (database,) = resources("AWS::RDS::DBInstance").values()
    password = database["Properties"]["MasterUserPassword"]
    assert password == {"Fn::Sub": "{{resolve:secretsmanager:${DatabaseSecret}:SecretString:password}}"}
    (secret,) = resources("AWS::SecretsManager::Secret").values()
    assert "SecretString" not in secret["Properties"] and secret["Properties"]["GenerateSecretString"]


# --- (e) the Dockerfiles and the service image's requirements --------------------------------------
def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerfiles_copy_what_the_repository_has():
    ignored = _dockerignore()
    for name, dockerfile in DOCKERFILES.items():
        copies = [shlex.split(rest) for word, rest in _instructions(dockerfile) if word == "COPY"]
        assert copies, name
        for args in copies:
            if any(a.startswith("--from=") for a in args):
                continue
            *sources, _dest = [a for a in args if not a.startswith("--")]
            for source in sources:
                assert list(ROOT.glob(source.rstrip("/"))), f"{name}: COPY {source} matches nothing"
                for pattern in ignored:
                    bare = pattern.removeprefix("**/")
                    assert not (fnmatch.fnmatch(source.rstrip("/"), pattern)
                                or bare in Path(source).parts), f"{name}: {source} is in .dockerignore ({pattern})"


def test_images_layout():
    for name in ("datamaker", "trainer"):
        steps = _instructions(DOCKERFILES[name])
        envs = " ".join(rest for word, rest in steps if word == "ENV")
        assert "DAGSTER_HOME=/opt/dagster/home" in envs, name
        assert ("COPY", "deploy/aws/dagster.yaml /opt/dagster/home/dagster.yaml") in steps, name
        assert any(word == "COPY" and rest.startswith("workspace.yaml") for word, rest in steps), name
    trainer_env = " ".join(rest for word, rest in _instructions(DOCKERFILES["trainer"]) if word == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=" in trainer_env and "NVIDIA_DRIVER_CAPABILITIES=" in trainer_env
    for name, dockerfile in DOCKERFILES.items():
        users = [rest for word, rest in _instructions(dockerfile) if word == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), name
    service = _instructions(DOCKERFILES["service"])
    assert any(word == "RUN" and "pip install --no-deps ." in rest for word, rest in service)
    assert any(word == "RUN" and "npm ci" in rest for word, rest in service)
    (cmd,) = [json.loads(rest) for word, rest in service if word == "CMD"]
    assert cmd[:2] == ["imagesim", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def test_service_requirements_are_pyprojects_pins_without_dagster():
    pinned = _pyproject_requirements()
    requirements = _requirements(SERVICE_REQUIREMENTS)
    assert requirements
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert not name.startswith("dagster"), requirement
        assert name in pinned, f"{requirement}: not a dependency of pyproject.toml"
        assert requirement.specifier == pinned[name].specifier and requirement.extras == pinned[name].extras, (
            f"{requirement} differs from pyproject's {pinned[name]}")


# --- (f) the search service runs with its requirements alone, without Dagster ------------------------
def _closure(requirements: list[Requirement]) -> set[str]:
    """The installed distributions that ``requirements`` pull in (their names, canonical)."""
    seen: set[tuple[str, frozenset]] = set()
    stack = [(canonicalize_name(r.name), frozenset(r.extras)) for r in requirements]
    while stack:
        name, extras = stack.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            stack.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def _service_distributions() -> set[str]:
    # pip and setuptools come with a Python 3.11 venv; the project itself is installed with --no-deps
    return _closure(_requirements(SERVICE_REQUIREMENTS)) | {"imagesim-pipeline", "pip", "setuptools"}


def _owners() -> dict[str, set[str]]:
    return {module: {canonicalize_name(d) for d in dists} for module, dists in md.packages_distributions().items()}


# Runs `imagesim serve` as in the service image: the modules and metadata of every distribution that the
# image lacks (any dagster, or outside the requirements' closure) cannot be found, as if not installed. The
# third-party modules that the service imports inside functions (tiles, the ONNX session) are imported first.
GATE = """
import importlib, importlib.abc, json, sys
allowed, owners, preload = set(json.loads(sys.argv[1])), json.loads(sys.argv[2]), json.loads(sys.argv[3])

def hidden(top):
    dists = owners.get(top)
    return top.startswith("dagster") or bool(dists and not set(dists) & allowed)

class ServiceImageOnly(importlib.abc.MetaPathFinder):
    def __init__(self, finders):
        self.finders = finders
    def find_spec(self, name, path=None, target=None):
        if hidden(name.partition(".")[0]):
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
        return None
    def find_distributions(self, *args, **kwargs):
        for finder in self.finders:
            for dist in getattr(finder, "find_distributions", lambda *a, **k: ())(*args, **kwargs):
                name = (dist.metadata["Name"] or "").lower().replace("_", "-").replace(".", "-")
                if name in allowed:
                    yield dist
    def invalidate_caches(self):
        for finder in self.finders:
            getattr(finder, "invalidate_caches", lambda: None)()

sys.meta_path[:] = [ServiceImageOnly(list(sys.meta_path))]
for name in preload:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        sys.exit(f"the service imports {name}, which fails in the service image: {exc!r}")
from imagesim_pipeline.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def test_the_search_service_serves_without_dagster(tmp_path):
    from imagesim_pipeline.service.app import LEAFLET_DIR

    if not LEAFLET_DIR.is_dir():
        pytest.skip(f"Leaflet is not installed at {LEAFLET_DIR} (make setup runs npm ci)")
    allowed = _service_distributions()
    owners = {m: sorted(d) for m, d in _owners().items()}
    preload = sorted(name for name in _service_imports()[2] if name.partition(".")[0] not in NOT_IN_THE_SERVICE)
    assert "rio_tiler.io" in preload and "onnxruntime" in preload
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESIM_", "DAGSTER_"))}
    env["IMAGESIM_DATA"] = str(tmp_path / "data")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", GATE, json.dumps(sorted(allowed)), json.dumps(owners), json.dumps(preload), "serve",
             "--bucket",
             str(bucket), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`imagesim serve` exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        status, body = _get(f"{base}/api/health")
        assert status == 200 and json.loads(body)["status"] == "no_index"
        status, page = _get(f"{base}/")
        assert status == 200 and b"leaflet" in page.lower()
        assert _get(f"{base}/static/vendor/leaflet/leaflet.js")[0] == 200
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


# Third-party modules that service code imports only inside functions the service never calls.
NOT_IN_THE_SERVICE = {"geopandas": "chips.cell_chips: cloud masks, when chipping",
                      "timm": "models.backbones: building a backbone, when training",
                      "onnx": "models.export: exporting a model",
                      "scipy": "changes.scorer: smoothing a change map, when scoring changes (the service reads maps)"}


def _imports(module: str) -> tuple[Path | None, list[tuple[str, bool, bool]]]:
    """The file of an imagesim module and its imports as (name, inside a function, names a module): for
    ``from a import b``, ``a`` names a module and ``a.b`` may."""
    base = ROOT.joinpath(*module.split("."))
    path = base / "__init__.py" if (base / "__init__.py").exists() else base.with_suffix(".py")
    if not path.exists():
        return None, []
    tree = ast.parse(path.read_text())
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[str, bool, bool]] = []

    def visit(node, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, lazy, True) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base_parts = package[:len(package) - child.level + 1]
                    source = ".".join(base_parts + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                found.append((source, lazy, True))
                found.extend((f"{source}.{a.name}", lazy, False) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return path, found


@cache
def _service_imports() -> tuple[frozenset[str], dict[str, dict[str, bool]], frozenset[str]]:
    """Following imagesim's own imports (at import time or inside functions) from imagesim_pipeline.service.app:
    the imagesim modules reached; per third-party top-level module, the modules importing it and whether only
    inside functions; the third-party modules imported by name."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    seen: set[str] = set()
    stack = ["imagesim_pipeline.service.app"]
    third_party: dict[str, dict[str, bool]] = {}
    modules: set[str] = set()
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        path, imports = _imports(module)
        if path is None:
            continue
        parts = module.split(".")
        stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        for name, lazy, is_module in imports:
            top = name.partition(".")[0]
            if top == "imagesim_pipeline":
                stack.append(name)
            elif top not in stdlib:
                third_party.setdefault(top, {})[module] = third_party.get(top, {}).get(module, True) and lazy
                if is_module:
                    modules.add(name)
    return frozenset(seen), third_party, frozenset(modules)


def test_service_imports_are_covered_by_its_requirements():
    """Every third-party import of the service's modules (at import or inside functions), followed through
    imagesim's own modules from imagesim_pipeline.service.app, comes from a service requirement."""
    allowed, owners = _service_distributions(), _owners()
    seen, third_party, _ = _service_imports()
    assert "fastapi" in third_party and "imagesim_pipeline.search.engine" in seen
    problems = []
    for top, where in sorted(third_party.items()):
        if top in NOT_IN_THE_SERVICE:
            eager = [m for m, lazy in where.items() if not lazy]
            if eager:
                problems.append(f"{top} is imported at import time by {eager}: add it to service-requirements.txt")
            continue
        if top.startswith("dagster"):
            problems.append(f"{top} imported by {sorted(where)}")
        elif not owners.get(top, set()) & allowed:
            problems.append(f"{top} (from {sorted(where)}; distribution {sorted(owners.get(top, [])) or '?'}) "
                            "is not pulled in by deploy/docker/service-requirements.txt")
    assert not problems, "\n".join(problems)
