# syntax=docker/dockerfile:1
# The molecule-generation service (faust worker: generation requests in; generated molecules onto the screening
# library and dead letters out; molecule_generator on Triton). Build from the repository root:
#   docker build -f docker/molecule-generation.Dockerfile -t medstream/molecule-generation:0.1.0 .
# Runs as uid 10001 with a read-only root filesystem: only /var/lib/medstream (state) and /tmp are written.
ARG PYTHON_VERSION=3.11.11

# ---- build: a virtual environment with medstream, its dependencies and the code generated from protos/
FROM python:${PYTHON_VERSION}-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# grpcio-tools goes into the build stage's own Python, not the venv that is shipped.
RUN pip install --no-cache-dir grpcio-tools==1.81.1 && python -m venv /opt/medstream
COPY pyproject.toml ./
COPY services/ services/
# The package's "drug" extra: RDKit (a self-contained manylinux wheel) decodes the sampled graphs into molecules,
# checks and canonicalises them; the generator itself runs on Triton, so no torch here.
RUN /opt/medstream/bin/pip install --no-cache-dir ".[drug]"
COPY protos/ protos/
# Generated code is installed into the venv's site-packages (the dev checkout uses a .pth file instead).
RUN SITE="$(/opt/medstream/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && find protos -name '*.proto' -exec \
      python -m grpc_tools.protoc -Iprotos --python_out="$SITE" --grpc_python_out="$SITE" {} + \
 && /opt/medstream/bin/python -m compileall -q "$SITE/medstream"

# ---- runtime: the venv only; no compilers, no pip cache, no sources
FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="medstream-molecule-generation" \
      org.opencontainers.image.description="Generation requests in; new molecules out onto the screening library" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 medstream \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/medstream --no-create-home \
      --shell /usr/sbin/nologin medstream \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/medstream
COPY --from=build /opt/medstream /opt/medstream
ENV PATH=/opt/medstream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/medstream \
    MEDSTREAM_HTTP_HOST=0.0.0.0 \
    MEDSTREAM_HTTP_PORT=8080 \
    MEDSTREAM_STATE_DIR=/var/lib/medstream
USER 10001:10001
WORKDIR /var/lib/medstream
# Writable even under `docker run --read-only`; on Kubernetes the chart mounts emptyDirs here.
VOLUME ["/var/lib/medstream", "/tmp"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MEDSTREAM_HTTP_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["medstream"]
CMD ["run", "molecule-generation"]
