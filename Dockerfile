# One image for every edgefleet part; the command picks the part (node, orchestrator, console).
# Two stages: `build` compiles llama.cpp (through scripts/setup, which also installs the bundled
# default model into the virtual environment); `runtime` carries only the result, as a non-root user.
#
# Build args:
#   DEVICE_CLASS          x86-64 (default) | rpi4 | rpi5 | jetson-orin: picks llama.cpp's CPU flags
#   EDGEFLEET_CMAKE_ARGS  overrides those flags entirely (e.g. add -DGGML_CUDA=ON on a CUDA base image)
#   PYTHON_IMAGE          the base of both stages (balena's Dockerfile.template swaps in balenalib images)
# e.g. docker buildx build --platform linux/arm64 --build-arg DEVICE_CLASS=rpi5 -t edgefleet:rpi5 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ make \
    && rm -rf /var/lib/apt/lists/*
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
ARG DEVICE_CLASS=x86-64
ARG EDGEFLEET_CMAKE_ARGS=""
# Portable per device class: never GGML_NATIVE (the build host is not the device). OpenMP off.
# rpi4: Cortex-A72 (armv8-a); rpi5: Cortex-A76 (armv8.2-a, dotprod, fp16); jetson-orin: Cortex-A78AE.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN case "$DEVICE_CLASS" in \
      x86-64) flags="" ;; \
      rpi4) flags="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_CPU_ARM_ARCH=armv8-a" ;; \
      rpi5) flags="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" ;; \
      jetson-orin) flags="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" ;; \
      *) echo "unknown DEVICE_CLASS $DEVICE_CLASS (x86-64, rpi4, rpi5, jetson-orin)" >&2; exit 1 ;; \
    esac \
    && EDGEFLEET_CMAKE_ARGS="${EDGEFLEET_CMAKE_ARGS:-$flags}" EDGEFLEET_SETUP_BROWSER=0 scripts/setup \
    && .venv/bin/edgefleet-node --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 edgefleet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgefleet --create-home edgefleet
WORKDIR /opt/edgefleet
COPY --from=build /opt/edgefleet /opt/edgefleet
ENV PATH=/opt/edgefleet/.venv/bin:$PATH \
    EDGEFLEET_DATA_DIR=/var/lib/edgefleet
USER 10001:10001
VOLUME /var/lib/edgefleet
EXPOSE 50051 50050 8080 8088 9101
# The node's gRPC health, through the CLI (compose gives the orchestrator and console their own checks).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["edgefleet", "--node", "127.0.0.1:50051", "--timeout", "2", "node-info"]
CMD ["edgefleet-node", "serve", "--port", "50051"]
