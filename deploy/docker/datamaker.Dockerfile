# syntax=docker/dockerfile:1
# The datamaker image (CPU): the Dagster webserver, the daemon, every run worker and every CPU step
# (ECS task definitions imagesim-webserver, imagesim-daemon, imagesim-datamaker in deploy/aws/imagesim.yaml).
#
#   docker build -f deploy/docker/datamaker.Dockerfile -t imagesim-datamaker .      (from the repository root)
#
# ECS gives every task its command: `dagster-webserver -h 0.0.0.0 -p 3000 -w workspace.yaml`,
# `imagesim daemon` (checks, pools, then dagster-daemon run), and for runs and steps the `dagster api execute_run|execute_step ...`
# that Dagster's EcsRunLauncher and ECS executor put in the container overrides.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies first, from pyproject.toml alone (an empty package stands in for the code), so that a
# code change does not reinstall torch; then the project itself.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir imagesim_pipeline && touch imagesim_pipeline/__init__.py \
    && pip install . && pip uninstall -y imagesim-pipeline && rm -rf imagesim_pipeline build ./*.egg-info
COPY imagesim_pipeline/ imagesim_pipeline/
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps . \
    && python -c "import imagesim_pipeline.definitions, dagster_aws.ecs, dagster_postgres"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/opt/imagesim \
    DAGSTER_HOME=/opt/dagster/home \
    IMAGESIM_DATA=/opt/imagesim/data
RUN groupadd --system --gid 10001 imagesim \
    && useradd --system --uid 10001 --gid imagesim --home-dir /opt/imagesim --no-create-home imagesim
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/imagesim
COPY workspace.yaml ./
COPY deploy/aws/dagster.yaml /opt/dagster/home/dagster.yaml
# DAGSTER_HOME holds Dagster's local files (compute logs); IMAGESIM_DATA the training runs and caches.
RUN mkdir -p /opt/imagesim/data /opt/dagster/home/storage \
    && chown -R imagesim:imagesim /opt/imagesim /opt/dagster/home
USER 10001:10001
CMD ["dagster", "api", "--help"]
