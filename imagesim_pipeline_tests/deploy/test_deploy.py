"""The AWS deployment: the CloudFormation template (deploy/aws/imagesim.yaml) against imagesim's settings and
Dagster instance file, its IAM policies, its conditions (VectorEngine=pgvector) and rules, the three Dockerfiles
(the trainer's volta variant), and the search service image's requirements (the service must run without
Dagster and with nothing but those requirements)."""

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
import typing
import urllib.parse
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
# The task definitions that touch the similarity index: similarity_index's steps (and run workers), the daemon
# (model_promoted_sensor asks whether a version has an index), the search service.
INDEX_FAMILIES = ("imagesim-datamaker", "imagesim-daemon", "imagesim-search")
# Parameter overrides for each vector engine (the template's conditions resolved for them).
ENGINES = {"faiss": {}, "pgvector": {"VectorEngine": "pgvector"}}
# torch/torchvision pairs for the trainer's TORCH_VARIANT=volta (p3, V100, compute capability 7.0), with the
# index that has their CUDA builds and those builds' kernels. Each torchvision wheel's metadata requires exactly
# that torch (PyPI torchvision 0.29.0: "Requires-Dist: torch (==2.14.0)"; 0.22.1: "torch (==2.7.1)"). PyTorch's
# CUDA 12.6 wheels are built for 5.0, 6.0, 7.0, 7.5, 8.0, 8.6, 9.0 (RELEASE.md's CUDA support matrix for 2.9
# through 2.14: https://github.com/pytorch/pytorch/issues/190355); 2.15 publishes no CUDA 12.x wheels
# (https://github.com/pytorch/pytorch/issues/190385), and the CUDA 12.8 builds lost sm_70 in 2.11
# (https://github.com/pytorch/pytorch/issues/172352).
CU126_ARCHS = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
VOLTA_PAIRS = {("2.14.0", "0.29.0"): ("https://download.pytorch.org/whl/cu126", CU126_ARCHS),
               ("2.7.1", "0.22.1"): ("https://download.pytorch.org/whl/cu126", CU126_ARCHS)}


# --- loading ---------------------------------------------------------------------------------------
@cache
def raw_template() -> dict:
    from cfnlint.decode import decode_str

    decoded, problems = decode_str(TEMPLATE.read_text())
    assert not problems, problems
    return json.loads(json.dumps(decoded))  # plain dicts: {"Ref": ...}, {"Fn::Sub": ...}


def parameter_values(**overrides: str) -> dict[str, str]:
    """The template's parameter defaults with ``overrides``, as strings (how CloudFormation passes them)."""
    parameters = raw_template()["Parameters"]
    assert set(overrides) <= set(parameters), set(overrides) - set(parameters)
    values = {name: str(p["Default"]) for name, p in parameters.items() if "Default" in p}
    return values | {name: str(value) for name, value in overrides.items()}


def _scalar(node, values: dict[str, str]) -> str:
    if isinstance(node, dict):
        assert set(node) == {"Ref"}, node
        return values[node["Ref"]]
    assert isinstance(node, (str, int, float, bool)), node
    return str(node)


def _condition(node, values: dict[str, str], conditions: dict) -> bool:
    (fn, arg), = node.items()
    if fn == "Condition":
        return _condition(conditions[arg], values, conditions)
    if fn == "Fn::Equals":
        return _scalar(arg[0], values) == _scalar(arg[1], values)
    if fn == "Fn::Not":
        return not _condition(arg[0], values, conditions)
    if fn in ("Fn::And", "Fn::Or"):
        found = [_condition(c, values, conditions) for c in arg]
        return all(found) if fn == "Fn::And" else any(found)
    raise AssertionError(f"unsupported condition {node!r}")


_NO_VALUE = object()


def _resolve(node, truth: dict[str, bool]):
    """``node`` with every Fn::If decided by ``truth`` and every AWS::NoValue left out."""
    if isinstance(node, dict):
        if set(node) == {"Fn::If"}:
            name, yes, no = node["Fn::If"]
            return _resolve(yes if truth[name] else no, truth)
        if node == {"Ref": "AWS::NoValue"}:
            return _NO_VALUE
        resolved = {k: _resolve(v, truth) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}
    if isinstance(node, list):
        return [v for v in (_resolve(x, truth) for x in node) if v is not _NO_VALUE]
    return node


@cache
def _template(overrides: tuple[tuple[str, str], ...]) -> dict:
    raw = raw_template()
    values = parameter_values(**dict(overrides))
    conditions = raw.get("Conditions", {})
    truth = {name: _condition(c, values, conditions) for name, c in conditions.items()}
    out = dict(raw)
    for section in ("Resources", "Outputs"):
        out[section] = {name: _resolve(r, truth) for name, r in raw.get(section, {}).items()
                        if "Condition" not in r or truth[r["Condition"]]}
    return out


def template(**overrides: str) -> dict:
    """The template as CloudFormation creates it with these parameter values (defaults otherwise): resources
    and outputs whose condition is false left out, Fn::If decided."""
    return _template(tuple(sorted(overrides.items())))


def failing_rules(**overrides: str) -> list[str]:
    """The AssertDescription of every rule assertion that fails with these parameter values."""
    values = parameter_values(**overrides)

    def value(node):
        if isinstance(node, list):
            return [value(v) for v in node]
        if not isinstance(node, dict):
            return str(node)
        (fn, arg), = node.items()
        if fn == "Ref":
            return values[arg]
        if fn == "Fn::Equals":
            return value(arg[0]) == value(arg[1])
        if fn == "Fn::Not":
            return not value(arg[0])
        if fn in ("Fn::And", "Fn::Or"):
            found = [value(a) for a in arg]
            return all(found) if fn == "Fn::And" else any(found)
        if fn == "Fn::Contains":
            return value(arg[1]) in value(arg[0])
        raise AssertionError(f"unsupported rule function {fn}")

    failed = []
    for name, rule in raw_template().get("Rules", {}).items():
        if "RuleCondition" in rule and not value(rule["RuleCondition"]):
            continue
        failed += [f"{name}: {a.get('AssertDescription', '')}" for a in rule["Assertions"] if not value(a["Assert"])]
    return failed


def rule_lists(parameter: str) -> set[str]:
    """Every value a rule's Fn::Contains lists for ``parameter``."""
    found: set[str] = set()

    def visit(node):
        if isinstance(node, dict):
            if "Fn::Contains" in node and node["Fn::Contains"][1] == {"Ref": parameter}:
                found.update(node["Fn::Contains"][0])
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(raw_template().get("Rules", {}))
    return found


def resources(kind: str, **overrides: str) -> dict[str, dict]:
    return {name: r for name, r in template(**overrides)["Resources"].items() if r["Type"] == kind}


def props(name: str, **overrides: str) -> dict:
    return template(**overrides)["Resources"][name]["Properties"]


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


def task_definition(family: str, **overrides: str) -> dict:
    found = [p["Properties"] for p in resources("AWS::ECS::TaskDefinition", **overrides).values()
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


def statements_by_role(**overrides: str) -> dict[str, list[dict]]:
    """Every Allow/Deny statement of the template's IAM policies, by the role that holds it."""
    out: dict[str, list[dict]] = {name: [] for name in resources("AWS::IAM::Role", **overrides)}
    for name, role in resources("AWS::IAM::Role", **overrides).items():
        for policy in role["Properties"].get("Policies", []):
            out[name] += as_list(policy["PolicyDocument"]["Statement"])
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
        for policy in resources(kind, **overrides).values():
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


def _installed_torch_arch_flags() -> list[str] | None:
    """The compiled CUDA architectures of the installed torch (pyproject's pin: the default trainer image's);
    None for a torch without CUDA kernels."""
    import torch

    flags = torch._C._cuda_getArchFlags().split() if hasattr(torch._C, "_cuda_getArchFlags") else []
    return flags or None


def test_the_trainer_profile_scales_from_zero_on_gpus_that_its_torch_supports():
    """Every TrainerInstanceType, with every TrainerImageVariant and TrainerTaskCpu that the rules let through,
    gets a torch with kernels for its GPUs and room for the training step."""
    asg = _asg_of(_default("ecs_trainer_capacity_provider"))
    assert str(asg["MinSize"]) == "0" and "DesiredCapacity" not in asg
    instance_type = _instance_type(asg)
    parameters = template()["Parameters"]
    parameter = parameters[ref_name(instance_type)] if isinstance(instance_type, dict) else None
    choices = parameter["AllowedValues"] if parameter else [instance_type]
    default = parameter["Default"] if parameter else instance_type
    assert default in choices
    trainer = task_definition(_default("ecs_trainer_task_definition"))
    (container,) = trainer["ContainerDefinitions"]
    gpus = {r["Type"]: int(r["Value"]) for r in container.get("ResourceRequirements", [])}.get("GPU")
    assert gpus == 4, "a training step takes the instance's four GPUs"
    assert ref_name(container["Image"]) == "TrainerImage"
    variants = parameters["TrainerImageVariant"]["AllowedValues"]
    assert set(variants) == {"default", "volta"} and parameters["TrainerImageVariant"]["Default"] == "default"

    def number(value) -> int:
        return int(parameters[value["Ref"]]["Default"] if isinstance(value, dict) else value)

    memory = number(trainer["Memory"])
    # the CPU values to try: the default and every value a rule lists for the parameter
    cpu_parameter = ref_name(trainer["Cpu"]) if isinstance(trainer["Cpu"], dict) else None
    cpus = ({str(number(trainer["Cpu"]))} | rule_lists(cpu_parameter)) if cpu_parameter else {str(trainer["Cpu"])}
    volta_torch, volta_vision = _volta_pair()
    archs = {"default": _installed_torch_arch_flags(), "volta": list(VOLTA_PAIRS[(volta_torch, volta_vision)][1])}
    import torch

    for choice in choices:
        assert choice in GPU_INSTANCES, f"{choice}: add its GPUs, vCPUs, memory and compute capability here"
        n_gpus, vcpus, gib, capability = GPU_INSTANCES[choice]
        deployable = []
        for variant in variants:
            for cpu in sorted(cpus):
                overrides = {"TrainerInstanceType": choice, "TrainerImageVariant": variant}
                if cpu_parameter:
                    overrides[cpu_parameter] = cpu
                if failing_rules(**overrides):
                    continue
                deployable.append((variant, cpu))
                assert n_gpus >= gpus and int(cpu) <= vcpus * 1024 and memory <= gib * 1024 * 0.95, (
                    f"{choice} with TrainerImageVariant={variant}: a step of {cpu} CPU units and {memory} MiB "
                    f"does not fit {vcpus} vCPUs and {gib} GiB")
                flags = archs[variant]
                if flags is None:
                    continue  # the installed torch has no CUDA kernels to check
                what = (f"torch {torch.__version__} (CUDA {torch.version.cuda})" if variant == "default"
                        else f"torch {volta_torch} (TORCH_VARIANT=volta)")
                assert _arch_supported(capability, flags), (
                    f"{choice} with TrainerImageVariant={variant}: {what} has kernels for {flags}, none for "
                    f"compute capability {capability[0]}.{capability[1]}")
        assert deployable, f"{choice}: no TrainerImageVariant and TrainerTaskCpu pass the template's rules"
    assert not failing_rules(), "the default parameters break a rule"


def test_p3_trainers_are_allowed_only_with_the_volta_image():
    choices = template()["Parameters"]["TrainerInstanceType"]["AllowedValues"]
    assert "p3.8xlarge" in choices
    p3 = {"TrainerInstanceType": "p3.8xlarge"}
    assert failing_rules(**p3, TrainerTaskCpu="28672"), "p3.8xlarge with the default image"
    assert failing_rules(**p3, TrainerImageVariant="volta"), "p3.8xlarge with 40 vCPUs of its 32"
    assert not failing_rules(**p3, TrainerImageVariant="volta", TrainerTaskCpu="28672")
    for choice in set(choices) - {"p3.8xlarge"}:
        for variant in ("default", "volta"):
            assert not failing_rules(TrainerInstanceType=choice, TrainerImageVariant=variant), (choice, variant)


# --- the trainer image's volta variant ---------------------------------------------------------------
def _dockerfile_args(dockerfile: Path) -> dict[str, str]:
    """The ARG defaults of a Dockerfile (a name declared in several stages must keep one default)."""
    args: dict[str, str] = {}
    for word, rest in _instructions(dockerfile):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            assert args.setdefault(name, value) == value, f"ARG {name}: {args[name]} and {value}"
    return args


def _volta_pair() -> tuple[str, str]:
    args = _dockerfile_args(DOCKERFILES["trainer"])
    return args["VOLTA_TORCH_VERSION"], args["VOLTA_TORCHVISION_VERSION"]


def test_the_volta_trainer_image_installs_a_known_pair_with_sm_70_kernels():
    args = _dockerfile_args(DOCKERFILES["trainer"])
    assert args["TORCH_VARIANT"] == "default", "a plain build is the pinned torch"
    pair = _volta_pair()
    assert pair in VOLTA_PAIRS, f"torch/torchvision {pair}: not a pair known to ship sm_70 kernels"
    index, archs = VOLTA_PAIRS[pair]
    assert args["VOLTA_TORCH_INDEX_URL"] == index
    assert _arch_supported((7, 0), list(archs))
    pinned = _pyproject_requirements()
    assert pair != (str(pinned["torch"].specifier).lstrip("="), str(pinned["torchvision"].specifier).lstrip("="))
    # the project's other pins accept that torch (lightning, torchmetrics and timm are pyproject's versions)
    from packaging.version import Version

    for name in ("lightning", "pytorch-lightning", "torchmetrics", "timm"):
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            pytest.fail(f"{name} is not installed")
        if name in pinned:
            assert md.version(name) in pinned[name].specifier, f"installed {name} {md.version(name)} is not the pin"
        for line in requires:
            req = Requirement(line)
            if canonicalize_name(req.name) in ("torch", "torchvision") and not req.marker:
                version = Version(pair[0] if canonicalize_name(req.name) == "torch" else pair[1])
                assert req.specifier.contains(version, prereleases=True), f"{name} requires {req}"
    # the build: the variants the stack knows, the pair from its index first, the rest constrained to it, and a
    # check of the installed versions and of sm_70
    runs = [rest for word, rest in _instructions(DOCKERFILES["trainer"]) if word == "RUN"]
    (install,) = [r for r in runs if 'case "$TORCH_VARIANT" in' in r]
    branches = set(re.findall(r"(\w+)\)\s", install.split(" in ", 1)[1]))
    assert branches == set(template()["Parameters"]["TrainerImageVariant"]["AllowedValues"]), branches
    volta = install.split("volta)", 1)[1].split(";;", 1)[0]
    assert ('--index-url "$VOLTA_TORCH_INDEX_URL" "torch==$VOLTA_TORCH_VERSION" '
            '"torchvision==$VOLTA_TORCHVISION_VERSION"') in re.sub(r"\s+", " ", volta)
    assert re.search(r"pip install -r \S+ -c \S+", volta), "the other dependencies must be constrained to the pair"
    assert "pip install ." not in volta, "pip install . would pull pyproject's torch"
    (check,) = [r for r in runs if "pip install --no-deps ." in r]
    assert "'sm_70'" in check and '"$TORCH_VARIANT" "$VOLTA_TORCH_VERSION" "$VOLTA_TORCHVISION_VERSION"' in check


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
@pytest.mark.parametrize("engine", ENGINES)
def test_no_wildcard_permissions(engine):
    for role, statements in statements_by_role(**ENGINES[engine]).items():
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


@pytest.mark.parametrize("engine", ENGINES)
def test_bucket_access_stays_under_the_prefix(engine):
    by_role = statements_by_role(**ENGINES[engine])
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


@pytest.mark.parametrize("engine", ENGINES)
def test_ecs_and_pass_role_permissions_are_scoped(engine):
    by_role = statements_by_role(**ENGINES[engine])
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
                assert role in execution_roles and actions == {"secretsmanager:GetSecretValue"}, (role, actions)
    # the secrets each execution role reads: the Dagster tasks' the database's (and with pgvector the vector
    # database's); the search service's none, or with pgvector exactly the vector database's
    def secrets(role: str) -> set[str]:
        return {ref_name(r) for s in by_role[role] if s["Effect"] == "Allow"
                and "secretsmanager:GetSecretValue" in as_list(s["Action"]) for r in as_list(s["Resource"])}

    vector = {"VectorDatabaseSecret"} if engine == "pgvector" else set()
    dagster_execution = {ref_name(task_definition(f)["ExecutionRoleArn"]) for f in DAGSTER_FAMILIES}
    search_execution = ref_name(task_definition("imagesim-search")["ExecutionRoleArn"])
    assert search_execution not in dagster_execution
    for role in dagster_execution:
        assert secrets(role) == {"DatabaseSecret"} | vector, role
    assert secrets(search_execution) == vector
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
@pytest.mark.parametrize("engine", ENGINES)
def test_the_database_password_only_travels_as_a_secret(engine):
    overrides = ENGINES[engine]
    secret_of = {"DAGSTER_PG_PASSWORD": "DatabaseSecret", "PGPASSWORD": "VectorDatabaseSecret"}
    for family in (*DAGSTER_FAMILIES, "imagesim-search"):
        for container in task_definition(family, **overrides)["ContainerDefinitions"]:
            env = {e["Name"]: e["Value"] for e in container.get("Environment", [])}
            assert not [n for n in env if "PASSWORD" in n or "SECRET" in n], (family, list(env))
            if "IMAGESIM_PGVECTOR_DSN" in env:
                assert urllib.parse.urlsplit(render(env["IMAGESIM_PGVECTOR_DSN"])).password is None, family
            for secret in container.get("Secrets", []):
                assert secret["Name"] in secret_of, (family, secret["Name"])
                assert secret["ValueFrom"] == {"Fn::Sub": f"${{{secret_of[secret['Name']]}}}:password::"}, family
    for family in DAGSTER_FAMILIES:
        (container,) = task_definition(family, **overrides)["ContainerDefinitions"]
        assert "DAGSTER_PG_PASSWORD" in {s["Name"] for s in container["Secrets"]}, family
    (search,) = task_definition("imagesim-search", **overrides)["ContainerDefinitions"]
    assert {s["Name"] for s in search.get("Secrets", [])} == ({"PGPASSWORD"} if engine == "pgvector" else set())
    databases = resources("AWS::RDS::DBInstance", **overrides)
    assert set(databases) == {"Database"} | ({"VectorDatabase"} if engine == "pgvector" else set())
    secrets = {}
    for name, database in databases.items():
        password = database["Properties"]["MasterUserPassword"]["Fn::Sub"]
        (secret,) = re.fullmatch(r"\{\{resolve:secretsmanager:\$\{(\w+)\}:SecretString:password\}\}", password).groups()
        secrets[name] = secret
    assert len(set(secrets.values())) == len(secrets), f"the databases share a secret: {secrets}"
    assert set(resources("AWS::SecretsManager::Secret", **overrides)) == set(secrets.values())
    for secret in resources("AWS::SecretsManager::Secret", **overrides).values():
        assert "SecretString" not in secret["Properties"] and secret["Properties"]["GenerateSecretString"]


# --- (d2) the vector engine: faiss in the search tasks, or a second PostgreSQL with pgvector ------------------
def test_the_vector_engine_parameter_is_the_settings_choice():
    parameter = template()["Parameters"]["VectorEngine"]
    engines = set(typing.get_args(Settings.model_fields["vector_engine"].annotation))
    assert set(parameter["AllowedValues"]) == engines == set(ENGINES)
    assert parameter["Default"] == _default("vector_engine") == "faiss"


def test_the_vector_database_exists_only_with_pgvector():
    vector = {"VectorDatabase", "VectorDatabaseSecret", "VectorDatabaseSecurityGroup"}
    raw = raw_template()["Resources"]
    assert raw["Database"].get("Condition") is None
    for name in vector:
        assert raw[name].get("Condition") == "UsePgvector", name
    assert raw_template()["Conditions"]["UsePgvector"] == {"Fn::Equals": [{"Ref": "VectorEngine"}, "pgvector"]}
    faiss, pgvector = (set(template(**ENGINES[e])["Resources"]) for e in ("faiss", "pgvector"))
    assert not faiss & vector and vector <= pgvector
    assert pgvector - faiss == vector, pgvector - faiss
    # the outputs that name it exist only with it too
    for name, output in raw_template()["Outputs"].items():
        if "VectorDatabase" in json.dumps(output["Value"]):
            assert output.get("Condition") == "UsePgvector", name
            assert name not in template()["Outputs"]


def test_the_vector_database_is_private_encrypted_and_its_own():
    pg = ENGINES["pgvector"]
    db, dagster_db = props("VectorDatabase", **pg), props("Database", **pg)
    parameters = template()["Parameters"]
    assert db["Engine"] == "postgres" and db["StorageEncrypted"] is True and db["PubliclyAccessible"] is False
    assert db["StorageType"] == "gp3"
    assert ref_name(db["DBInstanceClass"]) != ref_name(dagster_db["DBInstanceClass"])
    assert parameters[ref_name(db["DBInstanceClass"])]["Default"].startswith(("db.r", "db.x")), "memory-optimised"
    version = parameters[ref_name(db["EngineVersion"])]["Default"]
    assert int(version.split(".")[0]) >= 17, f"PostgreSQL {version}: pgvector >= 0.8 needs a current RDS version"
    assert "AllocatedStorage" in db and ref_name(db["AllocatedStorage"]) in parameters
    assert raw_template()["Resources"]["VectorDatabase"]["DeletionPolicy"] == "Snapshot"
    # the private subnets, behind its own security group that only the ECS instances reach, on 5432
    group = props(ref_name(db["DBSubnetGroupName"]), **pg)
    assert group["SubnetIds"] == {"Ref": "PrivateSubnetIds"}
    (sg,) = [ref_name(g) for g in db["VPCSecurityGroups"]]
    assert sg not in [ref_name(g) for g in dagster_db["VPCSecurityGroups"]]
    (ingress,) = props(sg, **pg)["SecurityGroupIngress"]
    assert (ingress["FromPort"], ingress["ToPort"], ingress["IpProtocol"]) == (5432, 5432, "tcp")
    assert set(ingress) & {"CidrIp", "CidrIpv6", "SourcePrefixListId"} == set()
    assert ref_name(ingress["SourceSecurityGroupId"]) == "InstanceSecurityGroup"
    instances = props("DatamakerLaunchTemplate", **pg)["LaunchTemplateData"]["SecurityGroupIds"]
    assert "InstanceSecurityGroup" in [ref_name(g) for g in instances]


def _dsn(value) -> urllib.parse.SplitResult:
    """IMAGESIM_PGVECTOR_DSN with the vector database's endpoint filled in (any other reference fails)."""
    endpoint = {"VectorDatabase.Endpoint.Address": "vectors.abc123.eu-west-1.rds.amazonaws.com",
                "VectorDatabase.Endpoint.Port": "5432"}
    assert set(value) == {"Fn::Sub"}, value
    return urllib.parse.urlsplit(re.sub(r"\$\{([^}]+)\}", lambda m: endpoint[m.group(1)], value["Fn::Sub"]))


def test_index_writers_and_search_get_the_engine_settings():
    pg = ENGINES["pgvector"]
    secret = props("VectorDatabaseSecret", **pg)["GenerateSecretString"]
    user = json.loads(secret["SecretStringTemplate"])["username"]
    for family in INDEX_FAMILIES:
        for engine, overrides in ENGINES.items():
            (container,) = task_definition(family, **overrides)["ContainerDefinitions"]
            env = {e["Name"]: e["Value"] for e in container["Environment"]}
            assert env["IMAGESIM_VECTOR_ENGINE"] == {"Ref": "VectorEngine"}, family
            for name in env:
                if name.startswith("IMAGESIM_"):
                    assert name.removeprefix("IMAGESIM_").lower() in Settings.model_fields, (family, name)
            secrets = {s["Name"]: s["ValueFrom"] for s in container.get("Secrets", [])}
            if engine == "faiss":
                assert "IMAGESIM_PGVECTOR_DSN" not in env and "PGPASSWORD" not in secrets, family
                continue
            dsn = _dsn(env["IMAGESIM_PGVECTOR_DSN"])
            assert dsn.scheme in ("postgresql", "postgres") and dsn.password is None, family
            assert (dsn.username, dsn.hostname, dsn.port) == (user, "vectors.abc123.eu-west-1.rds.amazonaws.com",
                                                              5432), family
            assert dsn.path == "/" + props("VectorDatabase", **pg)["DBName"], family
            assert secrets["PGPASSWORD"] == {"Fn::Sub": "${VectorDatabaseSecret}:password::"}, family
    # the webserver and the training steps never touch the index
    for family in ("imagesim-webserver", "imagesim-trainer"):
        (container,) = task_definition(family, **pg)["ContainerDefinitions"]
        names = {e["Name"] for e in container["Environment"]} | {s["Name"] for s in container.get("Secrets", [])}
        assert not names & {"IMAGESIM_VECTOR_ENGINE", "IMAGESIM_PGVECTOR_DSN", "PGPASSWORD"}, family


def test_pgvector_runs_two_or_more_search_tasks():
    assert template()["Parameters"]["SearchDesiredCount"]["Default"] == 1
    for count in ("0", "1"):
        assert not failing_rules(SearchDesiredCount=count), f"faiss refuses SearchDesiredCount={count}"
        assert failing_rules(VectorEngine="pgvector", SearchDesiredCount=count), f"pgvector with {count} task(s)"
    for count in ("2", "3", "10"):
        assert not failing_rules(VectorEngine="pgvector", SearchDesiredCount=count), count
    services = {e: {p["Properties"]["ServiceName"]: p["Properties"]
                    for p in resources("AWS::ECS::Service", **o).values()} for e, o in ENGINES.items()}
    for engine in ENGINES:
        assert ref_name(services[engine]["imagesim-search"]["DesiredCount"]) == "SearchDesiredCount"
    # faiss as before: every task stopped before new ones start; pgvector keeps half of them serving
    assert services["faiss"]["imagesim-search"]["DeploymentConfiguration"] == {"MinimumHealthyPercent": 0,
                                                                                "MaximumPercent": 100}
    assert services["pgvector"]["imagesim-search"]["DeploymentConfiguration"]["MinimumHealthyPercent"] >= 50


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


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``: a block only type checkers read."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


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
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:  # the body only runs under a type checker
                    visit(ast.Module(body=[other], type_ignores=[]), lazy)
                continue
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
