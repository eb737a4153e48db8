# syntax=docker/dockerfile:1.7
# openfinance-exporter: build a wheel (and wheels of its dependencies) in one stage, install them
# into a slim runtime that has no compiler, no build tools and no root process.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="openfinance-exporter" \
      org.opencontainers.image.description="Prometheus exporter for bank-connection health at Mastercard Open Finance (Finicity) and MX" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/openfinance-exporter/openfinance-exporter"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Same uid/gid as the Helm chart's securityContext (65532, "nonroot" in distroless terms).
RUN groupadd --system --gid 65532 openfinance \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/openfinance-exporter \
      --no-create-home --shell /usr/sbin/nologin openfinance \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/openfinance-exporter \
 && install -d -m 0755 /etc/openfinance-exporter
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels openfinance-exporter \
 && openfinance-exporter --help >/dev/null
# The default state path (openfinance-state.db) is relative: keep it on the writable data dir.
WORKDIR /var/lib/openfinance-exporter
USER 65532:65532
EXPOSE 9877
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9877/-/healthy', timeout=4).status != 200)"]
ENTRYPOINT ["openfinance-exporter"]
CMD ["run", "--config.file", "/etc/openfinance-exporter/config.yml"]
