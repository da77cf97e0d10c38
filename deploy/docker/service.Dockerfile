# syntax=docker/dockerfile:1
# The search service image: `imagesim serve` (HTTP API, ARD map tiles, the Leaflet page) without Dagster
# (ECS task definition imagesim-search in deploy/aws/imagesim.yaml).
#
#   docker build -f deploy/docker/service.Dockerfile -t imagesim-search .      (from the repository root)
#
# The project is installed with --no-deps, then only deploy/docker/service-requirements.txt.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# Leaflet for the page, from npm at build time (never a CDN): the lock file of imagesim_pipeline/service/web.
FROM ${NODE_IMAGE} AS web
WORKDIR /web
COPY imagesim_pipeline/service/web/package.json imagesim_pipeline/service/web/package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY deploy/docker/service-requirements.txt ./
RUN --mount=type=cache,target=/root/.cache/pip pip install -r service-requirements.txt
COPY pyproject.toml README.md ./
COPY imagesim_pipeline/ imagesim_pipeline/
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps .
# The app serves Leaflet from imagesim_pipeline/service/web/node_modules beside its installed code.
COPY --from=web /web/node_modules /tmp/node_modules
RUN web="$(python -c 'import imagesim_pipeline.service, pathlib; print(pathlib.Path(imagesim_pipeline.service.__file__).parent / "web")')" \
    && mv /tmp/node_modules "$web/node_modules" \
    && python -c "import importlib.util as u; assert u.find_spec('dagster') is None, 'dagster in the service image'; import imagesim_pipeline.service.app"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/opt/imagesim \
    IMAGESIM_DATA=/opt/imagesim/data
RUN groupadd --system --gid 10001 imagesim \
    && useradd --system --uid 10001 --gid imagesim --home-dir /opt/imagesim --no-create-home imagesim
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/imagesim
RUN mkdir -p /opt/imagesim/data && chown -R imagesim:imagesim /opt/imagesim
USER 10001:10001
EXPOSE 8000
# The bucket comes from IMAGESIM_BUCKET (s3://bucket/prefix); the model is the published `latest`.
CMD ["imagesim", "serve", "--host", "0.0.0.0", "--port", "8000"]
