# syntax=docker/dockerfile:1
# The trainer image (CUDA): training steps on the GPU instances (ECS task definition imagesim-trainer in
# deploy/aws/imagesim.yaml; container "run", command `dagster api execute_step ...` from the ECS executor).
#
#   docker build -f deploy/docker/trainer.Dockerfile -t imagesim-trainer .      (from the repository root)
#   docker build -f deploy/docker/trainer.Dockerfile --build-arg TORCH_VARIANT=volta -t imagesim-trainer:volta .
#
# No CUDA base image is needed: the torch wheels bring the CUDA runtime, cuDNN, cuBLAS and NCCL as nvidia-*
# wheels; the host gives the driver (the ECS GPU-optimized AMI, through the NVIDIA container runtime).
#
# TORCH_VARIANT=default: pyproject.toml's pins, torch==2.15.0 from PyPI (CUDA 13.2) with torchvision==0.29.2.
#   Kernels for compute capability 7.5 and newer (sm_75 ... sm_120): T4, A10G, L4, L40S, A100, H100 -- not the
#   V100 (sm_70).
# TORCH_VARIANT=volta: for p3 (V100) instances (stack parameter TrainerImageVariant=volta). torch 2.14.0 and
#   torchvision 0.29.0 (whose metadata requires torch==2.14.0), CUDA 12.6 builds from download.pytorch.org:
#   PyTorch's CUDA 12.6 wheels are the last with sm_70 kernels (sm_50 ... sm_90), and 2.14 is the last release
#   that publishes them (2.15 has CUDA 13.x only). The pair goes in first; then pyproject.toml's other
#   dependencies, constrained to that pair, and the project itself with --no-deps (so `pip check` reports the
#   project's own torch pin as unmet: expected). The last step checks the installed versions and sm_70 in
#   torch's compiled architectures (no GPU needed for either).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=default
ARG VOLTA_TORCH_VERSION=2.14.0
ARG VOLTA_TORCHVISION_VERSION=0.29.0
ARG VOLTA_TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir imagesim_pipeline && touch imagesim_pipeline/__init__.py \
    && case "$TORCH_VARIANT" in \
      default) pip install . ;; \
      volta) pip install --index-url "$VOLTA_TORCH_INDEX_URL" \
               "torch==$VOLTA_TORCH_VERSION" "torchvision==$VOLTA_TORCHVISION_VERSION" \
             && pip freeze | grep -E '^(torch|torchvision)==' > /tmp/torch-pair.txt \
             && python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if re.match(r'[A-Za-z0-9._-]+', d).group().lower() not in ('torch', 'torchvision')))" > /tmp/requirements.txt \
             && pip install -r /tmp/requirements.txt -c /tmp/torch-pair.txt ;; \
      *) echo "TORCH_VARIANT must be default or volta, not $TORCH_VARIANT" >&2; exit 1 ;; \
    esac \
    && pip uninstall -y imagesim-pipeline && rm -rf imagesim_pipeline build ./*.egg-info
COPY imagesim_pipeline/ imagesim_pipeline/
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps . \
    && python -c "import re, sys, tomllib, torch, torchvision, imagesim_pipeline.definitions; \
variant, volta_torch, volta_vision = sys.argv[1:]; \
pins = dict(m.groups() for m in (re.fullmatch(r'(torch|torchvision)==(\S+)', d) for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']) if m); \
want = (volta_torch, volta_vision, 'sm_70') if variant == 'volta' else (pins['torch'], pins['torchvision'], 'sm_75'); \
got = (torch.__version__.split('+')[0], torchvision.__version__.split('+')[0]); \
arch = torch._C._cuda_getArchFlags().split(); \
assert torch.version.cuda, 'torch without CUDA'; \
assert got == want[:2], f'TORCH_VARIANT={variant}: torch/torchvision {got}, expected {want[:2]}'; \
assert want[2] in arch, f'TORCH_VARIANT={variant}: torch has kernels for {arch}, none for {want[2]}'" \
       "$TORCH_VARIANT" "$VOLTA_TORCH_VERSION" "$VOLTA_TORCHVISION_VERSION"

FROM ${PYTHON_IMAGE}
ARG TORCH_VARIANT=default
LABEL imagesim.torch-variant=$TORCH_VARIANT
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/opt/imagesim \
    DAGSTER_HOME=/opt/dagster/home \
    IMAGESIM_DATA=/opt/imagesim/data \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --system --gid 10001 imagesim \
    && useradd --system --uid 10001 --gid imagesim --home-dir /opt/imagesim --no-create-home imagesim
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/imagesim
COPY workspace.yaml ./
COPY deploy/aws/dagster.yaml /opt/dagster/home/dagster.yaml
RUN mkdir -p /opt/imagesim/data /opt/dagster/home/storage \
    && chown -R imagesim:imagesim /opt/imagesim /opt/dagster/home
USER 10001:10001
CMD ["dagster", "api", "--help"]
