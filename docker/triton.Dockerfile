# syntax=docker/dockerfile:1
# Triton Inference Server with medstream's model_repository/ baked in. Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t medstream/triton:0.1.0 .
# The weights (model.pt) are not committed: the `train` stage produces them with `medstream models train`.
ARG PYTHON_VERSION=3.11.11
# NGC release 24.10 is Triton Inference Server 2.51.0, the server the test suite runs (from nvidia-pytriton
# 0.7.0). NGC bumps the server one minor per monthly release (24.05 = 2.46.0, 24.12 = 2.53.0); keep this and
# pyproject's nvidia-pytriton pin on the same server release (tests/charts/test_dockerfiles.py checks it).
ARG TRITON_RELEASE=24.10
# CPU wheels: the python-backend model runs on CPU (KIND_CPU) and the CUDA wheels add ~4 GB.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# ---- train: the same medstream package and torch as the services; writes <model>/1/model.pt
FROM python:${PYTHON_VERSION}-bookworm AS train
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/train \
 && /opt/train/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY pyproject.toml ./
COPY services/ services/
COPY training/ training/
# The training extra, then the adr-data extra without its dependencies (they clash with numpy<2; pyproject.toml):
# data files the trainers read from the installed wheels without importing them. admet-ai: the approved-drug table
# (adr_risk's hERG feature, drug_admet's targets); mddc: FAERS tables (adr_risk's check); molsets: MOSES SMILES
# (molecule_generator).
RUN RPY2_CFFI_MODE=ABI /opt/train/bin/pip install --no-cache-dir ".[training]" \
 && /opt/train/bin/pip install --no-cache-dir --no-deps admet-ai==2.0.1 mddc==1.1.0 molsets==0.3.1
COPY model_repository/ /models/
RUN MEDSTREAM_MODEL_REPOSITORY=/models MEDSTREAM_STATE_DIR=/tmp/medstream /opt/train/bin/medstream models train --force

# ---- runtime: the official NGC image plus what the python-backend models import (numpy<2, torch)
FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3
ARG TORCH_INDEX_URL
LABEL org.opencontainers.image.title="medstream-triton" \
      org.opencontainers.image.description="Triton Inference Server 2.51 serving medstream's model_repository" \
      org.opencontainers.image.licenses="Apache-2.0"
# The python backend's stub runs the image's own Python (3.10): install model.py's imports there.
# numpy<2: the python-backend stub returns empty outputs under numpy 2 (see pyproject.toml).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install --no-cache-dir numpy==1.26.4
COPY --from=train --chown=1000:1000 /models /models
# 1000 is the NGC image's unprivileged `triton-server` user. HOME=/tmp: the root filesystem is read-only.
ENV HOME=/tmp PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
# Python-backend shared memory lives in /dev/shm; the chart mounts a memory emptyDir there and at /tmp.
VOLUME ["/tmp"]
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none", "--strict-readiness=true", \
     "--exit-on-error=true", "--allow-metrics=true", "--metrics-port=8002"]
