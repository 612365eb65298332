"""Bearer-token authentication for the gateways: only SHA-256 hashes of tokens are configured or stored."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import yaml

T = TypeVar("T")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate(authorization: str | None, callers: Mapping[str, T]) -> T | None:
    """The caller whose token hash matches an `Authorization: Bearer <token>` value (constant-time compare)."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    digest = token_hash(authorization[len("Bearer ") :].strip())
    found = None
    for known, caller in callers.items():
        if hmac.compare_digest(digest, known):
            found = caller
    return found


def load_clients(path: Path) -> dict[str, str]:
    """token hash -> caller id from a YAML file of `clients: [{id, token_sha256}]`."""
    doc = yaml.safe_load(path.read_text()) or {}
    return {c["token_sha256"]: c["id"] for c in doc.get("clients", [])}
