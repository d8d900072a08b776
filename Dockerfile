# syntax=docker/dockerfile:1.7
#
# afunet-service images, one file, three targets:
#
#   docker build --target api        -t afunet-service-api:0.1.0 .
#   docker build --target worker     -t afunet-service-worker:0.1.0 .
#   docker build --target worker-cpu -t afunet-service-worker-cpu:0.1.0 .
#
# api         slim Python, no torch and no CUDA: the API process validates uploads, queues
#             jobs and serves results; it never imports torch (docker/requirements/api.txt
#             is pyproject's dependency list less torch and tqdm, and the package goes in
#             with --no-deps). Every image installs docker/requirements/s3.txt (the `s3`
#             extra, boto3) for s3:// blob stores.
# worker      NVIDIA CUDA 13.0 runtime (Ubuntu 24.04, Python 3.12) with torch 2.13.0 (PyPI's
#             CUDA 13.0 build), ONNX Runtime GPU and TensorRT 10.16 (tensorrt-cu13): one
#             process per GPU. Needs an NVIDIA driver of the R580 branch or newer (CUDA 13.0;
#             on datacenter GPUs with an older driver, see NVIDIA's CUDA forward
#             compatibility). For CUDA 12 hosts: a cuda:12.x CUDA_IMAGE, torch from the
#             PyTorch index's cu12x wheels, tensorrt-cu12 in docker/requirements.
# worker-cpu  slim Python with the CPU build of torch 2.13.0, for hosts without a GPU.
#
# Dependencies install in layers of their own, before the code, so that a code change
# rebuilds only the last layers. The model repository is mounted, not baked: the images
# hold only model_repo/*/config.yaml, at /opt/hdr/model_repo (HDR_MODEL_REPO), so the
# weight-free `classical` model serves out of the box; mount your repository over that
# path, or just your weights at /opt/hdr/model_repo/afunet/<version>/model.pth.
# Engines built from the weights (ONNX, TensorRT plans) go to HDR_ENGINE_CACHE,
# /var/cache/hdr/engines: mount a volume there to keep them across restarts.
# glibc malloc tuning is not set here (no MALLOC_* variables): the worker applies it
# itself at start-up (service/engines/runtime.py).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG CUDA_IMAGE=nvcr.io/nvidia/cuda:13.0.2-runtime-ubuntu24.04
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TENSORRT_INDEX=https://pypi.nvidia.com

# --------------------------------------------------------------------------------------
# The package as a wheel (the code), and the model configurations (no weights)

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
# README.m[d]: pyproject names README.md as the long description; the pattern copies it
# when it exists and does not fail the build when it does not.
COPY pyproject.toml README.m[d] ./
COPY service/ service/
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /wheels .

FROM scratch AS model-configs
COPY model_repo/afunet/config.yaml /model_repo/afunet/config.yaml
COPY model_repo/classical/config.yaml /model_repo/classical/config.yaml

# --------------------------------------------------------------------------------------
# API

FROM ${PYTHON_IMAGE} AS api-venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY docker/requirements/api.txt docker/requirements/s3.txt docker/requirements/constraints.txt \
     /tmp/requirements/
RUN pip install -r /tmp/requirements/api.txt -r /tmp/requirements/s3.txt \
        -c /tmp/requirements/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl

FROM ${PYTHON_IMAGE} AS api
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HDR_API_HOST=0.0.0.0 \
    HDR_API_PORT=8000 \
    HDR_MODEL_REPO=/opt/hdr/model_repo
RUN groupadd --system --gid 10001 hdr \
    && useradd --system --uid 10001 --gid hdr --home-dir /home/hdr --create-home \
       --shell /usr/sbin/nologin hdr
COPY --from=api-venv /opt/venv /opt/venv
COPY --from=model-configs /model_repo /opt/hdr/model_repo
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/hdr-entrypoint
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/hdr-healthcheck
USER 10001:10001
WORKDIR /home/hdr
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["hdr-healthcheck", "/healthz"]
ENTRYPOINT ["hdr-entrypoint"]
CMD ["api"]

# --------------------------------------------------------------------------------------
# GPU worker: CUDA 13.0 runtime, torch 2.13.0 (cu130), TensorRT 10.16

FROM ${CUDA_IMAGE} AS cuda-python
ENV DEBIAN_FRONTEND=noninteractive
# Set WITH_COMPILER=true to add gcc and the Python headers, which torch.compile
# (HDR_TORCH_COMPILE=true) needs at run time to build Triton's launcher; the default
# backends (TensorRT, torch eager with CUDA graphs) do not.
ARG WITH_COMPILER=false
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && if [ "$WITH_COMPILER" = "true" ]; then \
         apt-get install -y --no-install-recommends gcc libc6-dev python3-dev; \
       fi \
    && rm -rf /var/lib/apt/lists/*

FROM cuda-python AS worker-venv
ARG TENSORRT_INDEX
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
COPY docker/requirements/ /tmp/requirements/
# torch alone first: the largest layer, and the one that changes least.
RUN pip install torch -c /tmp/requirements/constraints.txt
# hadolint ignore=DL3059
RUN pip install --extra-index-url "${TENSORRT_INDEX}" \
        -r /tmp/requirements/worker.txt -r /tmp/requirements/gpu.txt -r /tmp/requirements/s3.txt \
        -c /tmp/requirements/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl

FROM cuda-python AS worker
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/hdr \
    HDR_MODEL_REPO=/opt/hdr/model_repo \
    HDR_ENGINE_CACHE=/var/cache/hdr/engines \
    HDR_WORKER_METRICS_HOST=0.0.0.0 \
    HDR_WORKER_METRICS_PORT=9108 \
    TORCHINDUCTOR_CACHE_DIR=/var/cache/hdr/torchinductor \
    TRITON_CACHE_DIR=/var/cache/hdr/triton
RUN groupadd --system --gid 10001 hdr \
    && useradd --system --uid 10001 --gid hdr --home-dir /home/hdr --create-home \
       --shell /usr/sbin/nologin hdr \
    && mkdir -p /var/cache/hdr/engines \
    && chown -R 10001:10001 /var/cache/hdr
COPY --from=worker-venv /opt/venv /opt/venv
COPY --from=model-configs /model_repo /opt/hdr/model_repo
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/hdr-entrypoint
USER 10001:10001
WORKDIR /home/hdr
EXPOSE 9108
# The worker's own probe: its heartbeat in Redis is alive and says ready (models loaded
# and warmed up). The start period covers building TensorRT plans on a first start.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
    CMD ["hdr-service", "worker", "--check"]
ENTRYPOINT ["hdr-entrypoint"]
CMD ["worker"]

# --------------------------------------------------------------------------------------
# CPU worker: the same worker on the CPU build of torch

FROM ${PYTHON_IMAGE} AS worker-cpu-venv
ARG TORCH_CPU_INDEX
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY docker/requirements/ /tmp/requirements/
RUN pip install --index-url "${TORCH_CPU_INDEX}" torch -c /tmp/requirements/constraints.txt
# hadolint ignore=DL3059
RUN pip install -r /tmp/requirements/worker.txt -r /tmp/requirements/cpu.txt \
        -r /tmp/requirements/s3.txt \
        -c /tmp/requirements/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl

FROM ${PYTHON_IMAGE} AS worker-cpu
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/hdr \
    HDR_DEVICE=cpu \
    HDR_MODEL_REPO=/opt/hdr/model_repo \
    HDR_ENGINE_CACHE=/var/cache/hdr/engines \
    HDR_WORKER_METRICS_HOST=0.0.0.0 \
    HDR_WORKER_METRICS_PORT=9108
RUN groupadd --system --gid 10001 hdr \
    && useradd --system --uid 10001 --gid hdr --home-dir /home/hdr --create-home \
       --shell /usr/sbin/nologin hdr \
    && mkdir -p /var/cache/hdr/engines \
    && chown -R 10001:10001 /var/cache/hdr
COPY --from=worker-cpu-venv /opt/venv /opt/venv
COPY --from=model-configs /model_repo /opt/hdr/model_repo
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/hdr-entrypoint
USER 10001:10001
WORKDIR /home/hdr
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 \
    CMD ["hdr-service", "worker", "--check"]
ENTRYPOINT ["hdr-entrypoint"]
CMD ["worker"]
