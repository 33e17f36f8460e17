# syntax=docker/dockerfile:1
# spec-exporter: the exporter and its request-path tap, one process, as a fixed non-root user on a read-only root.
#   docker build -t spec-exporter --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg BRANCH="$(git rev-parse --abbrev-ref HEAD)" .
#   docker run --rm -p 9811:9811 spec-exporter --target http://vllm:8000
# The Helm chart (helm/spec-exporter) runs it with runAsUser 10001 and readOnlyRootFilesystem; keep the two in step.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Every dependency ships a manylinux wheel, so this stage needs no compiler either; it only builds our own wheel.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY scripts/image-install.sh scripts/
COPY pyproject.toml README.md ./
COPY spec_exporter/ spec_exporter/
# The git revision and branch for spec_decode_exporter_build_info (image-install.sh records them in the package);
# declared here, after the COPY steps, so that their layers stay cached across revisions.
ARG REVISION
ARG BRANCH
RUN sh scripts/image-install.sh /src /opt/spec-exporter

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION
LABEL org.opencontainers.image.title="spec-exporter" \
      org.opencontainers.image.description="Prometheus exporter for vLLM speculative-decoding health" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# pip and setuptools are build tools the running image never uses; the user is numeric so that Kubernetes'
# runAsNonRoot can verify it without reading /etc/passwd.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --system --gid 10001 spec-exporter \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin spec-exporter
# Same path as in the build stage: the venv's scripts carry absolute shebangs.
COPY --from=build /opt/spec-exporter /opt/spec-exporter
# No bytecode writes at run time (the root filesystem is read-only); logs unbuffered so they reach `kubectl logs`.
ENV PATH=/opt/spec-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# 9811: /metrics, /healthz, /readyz. 8001: the tap, when --tap.listen-address :8001 (or tap.listen_address) is set.
EXPOSE 9811 8001
# No curl in a slim image: the interpreter checks /healthz on whatever port SPEC_EXPORTER_WEB_LISTEN_ADDRESS names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SPEC_EXPORTER_WEB_LISTEN_ADDRESS', ':9811').rsplit(':', 1)[1]; urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]
ENTRYPOINT ["spec-exporter"]
