"""Vendors, their credentials and their devices. Tokens are stored only as SHA-256 hashes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.auth import authenticate


@dataclass(frozen=True, slots=True)
class DeviceRange:
    """Devices `<device_prefix>N` belong to the vendor and to patient `<patient_prefix>N` (for fleets)."""

    device_prefix: str
    patient_prefix: str


@dataclass(frozen=True)
class Vendor:
    vendor_id: str
    token_sha256: str
    devices: Mapping[str, str] = field(default_factory=dict)  # device_id -> patient_id
    ranges: tuple[DeviceRange, ...] = ()
    device_types: frozenset[str] = frozenset()  # empty: any template

    def patient_for(self, device_id: str) -> str | None:
        if device_id in self.devices:
            return self.devices[device_id]
        for r in self.ranges:
            if device_id.startswith(r.device_prefix) and len(device_id) > len(r.device_prefix):
                return r.patient_prefix + device_id[len(r.device_prefix) :]
        return None


@dataclass(frozen=True)
class Registry:
    vendors: tuple[Vendor, ...]

    def authenticate(self, authorization: str | None) -> Vendor | None:
        """The vendor whose token is in an `Authorization: Bearer <token>` value."""
        return authenticate(authorization, {v.token_sha256: v for v in self.vendors})


def parse_registry(doc: Mapping[str, Any]) -> Registry:
    vendors = []
    for v in doc.get("vendors", []):
        vendors.append(
            Vendor(
                vendor_id=v["id"],
                token_sha256=v["token_sha256"],
                devices={str(d["device_id"]): str(d["patient_id"]) for d in v.get("devices", [])},
                ranges=tuple(DeviceRange(r["device_prefix"], r["patient_prefix"]) for r in v.get("device_ranges", [])),
                device_types=frozenset(v.get("device_types", [])),
            )
        )
    return Registry(tuple(vendors))


def load_registry(path: Path) -> Registry:
    return parse_registry(yaml.safe_load(path.read_text()))
