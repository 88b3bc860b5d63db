# The edgeplane image: `edgeplane` (controller and operator commands) and `edge-agent`.
# Used by compose.yaml for the controller and the agent; the broker is eclipse-mosquitto:2.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY shared ./shared
COPY controller ./controller
COPY edge_agent ./edge_agent
# The controller extra: the controller and operator commands (the agent alone is `pip install .`).
RUN pip install '.[controller]' && rm -rf /src

# Run as an unprivileged user that owns only its data directory (a volume in compose.yaml).
RUN useradd --system --uid 10001 --home-dir /data --create-home edgeplane
USER edgeplane
WORKDIR /data

CMD ["edgeplane", "--help"]
