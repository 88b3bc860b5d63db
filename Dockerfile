# The edgeplane images, one per side of the wire (compose.yaml builds both):
#   --target agent       `pip install edgeplane`: the edge agent and what it needs, nothing more
#   --target controller  `pip install 'edgeplane[controller]'`: the controller and the
#                        operator commands
# The broker is eclipse-mosquitto:2.
FROM python:3.11-slim AS source

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Each side runs as an unprivileged user of its own that owns only its data directory (a
# volume in compose.yaml). Two users, because the agent reads the controller's public
# command key from a volume the controller shares: the private key beside it (mode 0600)
# stays the controller's alone.
RUN useradd --system --uid 10001 --home-dir /data --create-home edgeplane \
 && useradd --system --uid 10002 --home-dir /data --no-create-home edgeagent \
 && install -d -o edgeplane -g edgeplane -m 0755 /keys
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY shared ./shared
COPY controller ./controller
COPY edge_agent ./edge_agent

FROM source AS agent
RUN pip install . && rm -rf /src && chown edgeagent /data
USER edgeagent
WORKDIR /data
CMD ["edge-agent", "--help"]

FROM source AS controller
RUN pip install '.[controller]' && rm -rf /src
USER edgeplane
WORKDIR /data
CMD ["edgeplane", "--help"]
