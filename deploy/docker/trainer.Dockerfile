# syntax=docker/dockerfile:1
# The trainer image (CUDA): training steps on the GPU instances (ECS task definition imagesim-trainer in
# deploy/aws/imagesim.yaml; container "run", command `dagster api execute_step ...` from the ECS executor).
#
#   docker build -f deploy/docker/trainer.Dockerfile -t imagesim-trainer .      (from the repository root)
#
# No CUDA base image is needed: the PyPI torch==2.15.0 wheel (pinned in pyproject.toml) is built for CUDA 13.2
# and brings the CUDA runtime, cuDNN, cuBLAS and NCCL as nvidia-* wheels; the host gives the driver (the ECS
# GPU-optimized AMI, through the NVIDIA container runtime). That wheel's kernels are for compute capability
# 7.5 and newer (sm_75 ... sm_120): T4, A10G, L4, L40S, A100, H100 -- not the V100 (sm_70).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir imagesim_pipeline && touch imagesim_pipeline/__init__.py \
    && pip install . && pip uninstall -y imagesim-pipeline && rm -rf imagesim_pipeline build ./*.egg-info
COPY imagesim_pipeline/ imagesim_pipeline/
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps . \
    && python -c "import torch, imagesim_pipeline.definitions; assert torch.version.cuda, 'torch without CUDA'"

FROM ${PYTHON_IMAGE}
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
