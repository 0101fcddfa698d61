# ctrlplane workers in a container.
#
#   docker build -t ctrlplane-workers .
#   docker run --rm ctrlplane-workers          # with the embedded nats-server
#   docker run --rm ctrlplane-workers run --nats-url nats://nats.example:4222
#
# compose.yaml runs several replicas against a NATS service. The image holds
# only a virtualenv with the installed project: the sources stay in the build
# stage. tests/test_compose.py checks ENTRYPOINT, CMD, ENV, USER, VOLUME and
# STOPSIGNAL against pyproject.toml and the real CLI.

FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH="/opt/ctrlplane/bin:$PATH"

RUN python -m venv /opt/ctrlplane
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir .


FROM python:3.11-slim

# CTRLPLANE_DATA_DIR matches --data-dir below so that
# `docker exec <container> ctrlplane workers` finds the embedded server too.
ENV PATH="/opt/ctrlplane/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CTRLPLANE_DATA_DIR=/var/lib/ctrlplane

# The data directory (SQLite database, embedded server's store and token) is
# created owned by the unprivileged user and readable by it alone, before it
# is declared a volume: a new volume mounted there starts as this copy.
RUN groupadd --system --gid 10001 ctrlplane \
    && useradd --system --uid 10001 --gid ctrlplane --home-dir /var/lib/ctrlplane \
        --no-create-home --shell /usr/sbin/nologin ctrlplane \
    && install -d -m 0700 -o ctrlplane -g ctrlplane /var/lib/ctrlplane

COPY --from=build /opt/ctrlplane /opt/ctrlplane

USER ctrlplane:ctrlplane
VOLUME ["/var/lib/ctrlplane"]

# `ctrlplane run` stops gracefully on SIGTERM, giving runs in flight their
# stop grace; give `docker stop` a --time (or Compose a stop_grace_period)
# longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ctrlplane"]
CMD ["run", "--data-dir", "/var/lib/ctrlplane", "--log-format", "json"]
