# One image for every edgefleet part; the command picks the part (node now, orchestrator later).
# Builds llama.cpp portably through scripts/setup (set EDGEFLEET_CMAKE_ARGS for ARM/CUDA devices).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ make && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/edgefleet
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY node/ node/
COPY proto/ proto/
COPY plumbing/ plumbing/
COPY orchestrator/ orchestrator/
COPY fleet/ fleet/
COPY firmware_profiles/ firmware_profiles/
COPY deploy/ deploy/
ARG EDGEFLEET_CMAKE_ARGS=""
RUN EDGEFLEET_CMAKE_ARGS="$EDGEFLEET_CMAKE_ARGS" EDGEFLEET_SETUP_BROWSER=0 scripts/setup
ENV PATH=/opt/edgefleet/.venv/bin:$PATH \
    EDGEFLEET_DATA_DIR=/var/lib/edgefleet
VOLUME /var/lib/edgefleet
EXPOSE 50051 50050 8080 8088
CMD ["edgefleet-node", "serve", "--port", "50051"]
