# syntax=docker/dockerfile:1
# llmaz-serverless: admission webhook + reconciler.
#
#   docker build -t ghcr.io/llmaz-serverless/llmaz-serverless:0.1.0 .
#
# Build stage: install the project and its dependencies (all available as wheels) into a venv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY webhook ./webhook
COPY certs ./certs
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: --no-compile . \
 && /opt/venv/bin/pip uninstall -y pip \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# Runtime stage: the venv only; no compilers, no pip in the venv, no sources.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
USER 65532:65532
# 9443: admission webhook (HTTPS), 8080: metrics and probes (HTTP)
EXPOSE 9443 8080
ENTRYPOINT ["llmaz-serverless"]
CMD ["--help"]
