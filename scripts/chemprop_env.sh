#!/usr/bin/env bash
# Creates build/chemprop-venv: chemprop 2.3.1 in a Python 3.11 venv of its own, because chemprop needs numpy>=2 and
# lightning, which clash with the main venv's numpy<2 (pyproject.toml). training/drug/chemprop_compare.py calls its
# `chemprop` CLI. Safe to run again: a stamp file marks a finished install; delete the venv to rebuild it.
#   torch: a CPU-only wheel of the main venv's torch version when the configured index has one (PyPI has none), else
#   the main venv's version itself, so pip resolves the same wheel (from its cache when there); only CPU is used.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CHEMPROP_VENV:-build/chemprop-venv}
PYTHON=${PYTHON:-python3.11}
CHEMPROP_VERSION=2.3.1

say() { printf '\033[1m[chemprop-env]\033[0m %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

TORCH_VERSION=""
if [ -x .venv/bin/python ]; then
  TORCH_VERSION=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])' \
    2>/dev/null || true)
fi
STAMP="$VENV/.installed-chemprop-$CHEMPROP_VERSION-torch-${TORCH_VERSION:-any}"
if [ -f "$STAMP" ]; then
  say "ready: $VENV ($(cat "$STAMP"))"
  exit 0
fi

command -v "$PYTHON" >/dev/null || fail "$PYTHON not found (set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' || fail "$PYTHON is not Python 3.11"
started=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV ($PYTHON -m venv)"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" || fail "could not create $VENV"
fi
PIP=("$VENV/bin/pip" install --disable-pip-version-check)

TORCH_REQ=()
if [ -n "$TORCH_VERSION" ]; then
  if "${PIP[@]}" -q --dry-run --no-deps "torch==$TORCH_VERSION+cpu" >/dev/null 2>&1; then
    say "torch: the CPU-only wheel torch==$TORCH_VERSION+cpu"
    TORCH_REQ=("torch==$TORCH_VERSION+cpu")
  else
    say "torch: no CPU-only wheel on the configured index; torch==$TORCH_VERSION as in .venv (the CUDA wheel, run on CPU)"
    TORCH_REQ=("torch==$TORCH_VERSION")
  fi
else
  say "torch: .venv has none; whatever version chemprop resolves"
fi

say "pip install chemprop==$CHEMPROP_VERSION ${TORCH_REQ[*]} (first time: torch and its CUDA libraries, a few GB)"
"${PIP[@]}" -q "chemprop==$CHEMPROP_VERSION" "${TORCH_REQ[@]}" || fail "pip install chemprop==$CHEMPROP_VERSION"

say "checking the install"
"$VENV/bin/chemprop" --help >/dev/null || fail "$VENV/bin/chemprop --help does not run"
VERSIONS=$("$VENV/bin/python" -c 'import importlib.metadata as m
print(" ".join(f"{p}=={m.version(p)}" for p in ("chemprop", "torch", "lightning", "numpy", "rdkit")))') ||
  fail "importing chemprop's dependencies"
rm -f "$VENV"/.installed-chemprop-*
echo "$VERSIONS" > "$STAMP"
say "ready: $VENV ($VERSIONS) in $((SECONDS - started)) s, $(du -sh "$VENV" | cut -f1) on disk"
