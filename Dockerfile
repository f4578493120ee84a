# syntax=docker/dockerfile:1
# llmaz-serverless: admission webhook + reconciler.
#
#   docker build -t ghcr.io/llmaz-serverless/llmaz-serverless:0.1.0 .
#
# Without a Docker daemon or a registry of base images: deploy/image/build.sh builds a Debian base image
# locally and runs this same file with buildah (BASE_IMAGE below points at that base).
#
# BASE_IMAGE: any Debian-based image with CPython 3.11, `python3 -m venv` and useradd (python:3.11-slim, or
# Debian bookworm with python3, python3-venv and passwd). Both stages use it, so the venv's interpreter link
# resolves in the runtime stage.
ARG BASE_IMAGE=python:3.11-slim

# Build stage: the pinned dependencies (all wheels) and the project into a venv.
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A private package index or a TLS-intercepting proxy: pass PIP_INDEX_URL / PIP_CERT (a CA bundle mounted
# into the build) as build arguments. They exist in this stage only, never in the runtime image.
ARG PIP_INDEX_URL
ARG PIP_CERT
WORKDIR /src
COPY deploy/image/requirements.lock ./
COPY pyproject.toml README.md* ./
COPY webhook ./webhook
COPY certs ./certs
# `pip check` fails the build when the lock no longer satisfies pyproject.toml. Bytecode is compiled with
# hashes instead of source timestamps so that two builds of one commit give the same files.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: --no-compile --no-deps -r requirements.lock \
 && /opt/venv/bin/pip install --no-compile --no-deps --no-build-isolation . \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools wheel \
 && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/venv/lib

# Runtime stage: the venv only; no compilers, no pip in the venv, no sources.
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# useradd dates the account by SOURCE_DATE_EPOCH when it is set (a reproducible /etc/shadow).
ARG SOURCE_DATE_EPOCH
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
USER 65532:65532
# 9443: admission webhook (HTTPS), 8080: metrics and probes (HTTP)
EXPOSE 9443 8080
ENTRYPOINT ["llmaz-serverless"]
CMD ["--help"]
