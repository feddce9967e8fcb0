# syntax=docker/dockerfile:1
# The trio-grpc-health image: the health server (entrypoint `trio-grpc-health`) and the
# grpc_health_probe drop-in (`trio-grpc-health-probe`, on PATH for exec probes).
#
#   docker build -t trio-grpc-health:0.1.0 .
#   docker run --rm -p 50051:50051 trio-grpc-health:0.1.0 serve --host 0.0.0.0
#
# Every install step is in .ci/image-install.sh, which CI also runs in a fresh venv
# (tests/test_image.py); CI does not run this build itself.
ARG PYTHON_IMAGE=python:3.12-slim

# ---- build: the wheel from this repository, installed into a venv at /opt/trio-grpc-health
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY . .
RUN sh .ci/image-install.sh install /opt/trio-grpc-health metrics

# ---- runtime: the same slim Python, the venv, no pip, no compilers, a non-root user
FROM ${PYTHON_IMAGE}
COPY --from=build /src/.ci/image-install.sh /tmp/image-install.sh
RUN sh /tmp/image-install.sh remove-pip /usr/local/bin/python3 \
    && rm /tmp/image-install.sh \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin health
# The venv's interpreter is a link to /usr/local/bin/python3, the same in both stages.
COPY --from=build /opt/trio-grpc-health /opt/trio-grpc-health
ENV PATH=/opt/trio-grpc-health/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# gRPC health; admin API and /metrics (with --admin-port 8081 --admin-host 0.0.0.0).
EXPOSE 50051 8081
# The server drains on SIGTERM (NOT_SERVING, Watch streams ended, GOAWAY, --grace).
STOPSIGNAL SIGTERM
# For `docker run` (Kubernetes ignores it and uses the pod's probes): the default port's "".
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s \
    CMD ["trio-grpc-health-probe", "-addr=127.0.0.1:50051", "-connect-timeout=2s"]
ENTRYPOINT ["/opt/trio-grpc-health/bin/trio-grpc-health"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051"]
