"""FHIR R4 input checks (pure): parse, validate with fhir.resources, find the patient, explain problems as an
OperationOutcome."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from medstream.events.v1 import fhir_pb2
from pydantic import ValidationError

# Where a resource names the patient whose record it belongs to (the Patient compartment's usual parameters):
# the first of these that references a Patient keys the resource's events by that patient.
PATIENT_ELEMENTS = ("subject", "patient", "beneficiary")
DEFAULT_MAX_RESOURCE_BYTES = 900_000  # below Kafka's default 1 MiB record limit, with room for headers
_EVENT_NAMESPACE = uuid.UUID("5b0e7c1a-2f43-4c8e-9d1b-7a6e3f2c9b40")
_REFERENCE = re.compile(r"^Patient/[A-Za-z0-9\-.]{1,64}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class Issue:
    code: str  # FHIR issue-type: invalid, structure, required, value, not-supported, processing, ...
    diagnostics: str
    expression: str = ""


@dataclass
class Accepted:
    resource_type: str
    resource_id: str
    patient_reference: str  # "" for a resource outside any patient's record (Practitioner, Organization, ...)
    resource: dict[str, Any]
    resource_json: bytes  # the resource as published, serialised once

    @property
    def key(self) -> str:
        """Kafka key: the patient, so a patient's events stay in order; a shared resource's own reference."""
        return self.patient_reference or f"{self.resource_type}/{self.resource_id}"

    @property
    def event_id(self) -> str:
        """The same resource content gives the same event id, so a re-sent bundle is recognisable downstream."""
        digest = hashlib.sha256(self.resource_json).hexdigest()
        return str(uuid.uuid5(_EVENT_NAMESPACE, f"{self.resource_type}/{self.resource_id}|{digest}"))


@dataclass
class Checked:
    accepted: list[Accepted] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": i.code,
                "diagnostics": i.diagnostics,
                **({"expression": [i.expression]} if i.expression else {}),
            }
            for i in issues
        ],
    }


def parse_json(body: bytes | bytearray) -> tuple[Any, list[Issue]]:
    try:
        return json.loads(body), []
    except (ValueError, UnicodeDecodeError) as exc:
        return None, [Issue("structure", f"body is not valid JSON: {exc}")]


def patient_reference(resource: dict[str, Any]) -> str | None:
    """The Patient reference that puts the resource in a patient's record, or None (a shared resource)."""
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource['id']}"
    for key in PATIENT_ELEMENTS:
        ref = resource.get(key)
        target = ref.get("reference") if isinstance(ref, dict) else None
        # A Patient here, or elsewhere (another server, an unresolved urn): the caller refuses what is not local.
        if isinstance(target, str) and (
            target.startswith("Patient/") or "/Patient/" in target or target.startswith("urn:")
        ):
            return target
    return None


def null_paths(value: Any, path: str) -> list[str]:
    """Where a JSON object holds null: FHIR JSON leaves elements out instead (fhir.resources would accept it)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in ([f"{path}.{k}"] if v is None else null_paths(v, f"{path}.{k}"))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in null_paths(v, f"{path}[{i}]")]
    return []


def check_resource(
    resource: Any, path: str = "", max_bytes: int = DEFAULT_MAX_RESOURCE_BYTES
) -> tuple[Accepted | None, list[Issue]]:
    """Validate one resource of any R4 type; give it a server id when it has none (a create)."""
    prefix = f"{path}." if path else ""
    if not isinstance(resource, dict):
        return None, [Issue("structure", "a resource must be a JSON object", path or "$")]
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return None, [Issue("required", "resourceType is required", f"{prefix}resourceType")]
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, AttributeError, ValueError):  # fhir.resources answers an unknown name with any of these
        return None, [Issue("not-supported", f"{rtype!r} is not a FHIR resource type", f"{prefix}resourceType")]
    if "id" in resource and (not isinstance(resource["id"], str) or not _ID.match(resource["id"])):
        return None, [Issue("value", "id must be 1-64 characters of [A-Za-z0-9-.]", f"{prefix}id")]
    nulls = null_paths(resource, path or rtype)
    if nulls:
        return None, [
            Issue("structure", "null is not allowed in FHIR JSON: leave the element out", p) for p in nulls[:20]
        ]
    resource = {**resource, "id": resource.get("id") or str(uuid.uuid4())}
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return None, [
            Issue(
                "required" if e["type"].endswith("missing") else "invalid",
                str(e["msg"]),
                f"{rtype}." + ".".join(str(x) for x in e["loc"]),
            )
            for e in exc.errors()[:20]
        ]
    except (ValueError, TypeError) as exc:
        return None, [Issue("invalid", str(exc)[:500], rtype)]
    ref = patient_reference(resource)
    if ref is not None and not _REFERENCE.match(ref):
        return None, [Issue("value", f"reference {ref[:80]!r} is not Patient/<id>", f"{rtype}.subject.reference")]
    encoded = json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode()
    if len(encoded) > max_bytes:
        # One Kafka record per resource: a larger one would be refused by the broker after the caller was told OK.
        return None, [Issue("too-costly", f"resource of {len(encoded)} bytes is over {max_bytes}", path or rtype)]
    return Accepted(rtype, resource["id"], ref or "", resource, encoded), []


_ABSOLUTE = re.compile(r"^https?://.+/(?P<ref>[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_URN = re.compile(r"^urn:uuid:(?P<uuid>[0-9a-fA-F-]{36})$")


def _entry_reference(entry: dict[str, Any]) -> tuple[str, str] | None:
    """(fullUrl, "Type/id") for a transaction entry whose resource will be stored under a local reference."""
    resource, full_url = entry.get("resource"), entry.get("fullUrl")
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return None
    rtype = resource["resourceType"]
    raw_request = entry.get("request")
    request: dict[str, Any] = raw_request if isinstance(raw_request, dict) else {}
    url = str(request["url"]) if isinstance(request.get("url"), str) else ""
    if request.get("method") == "PUT" and url.startswith(f"{rtype}/") and _ID.match(url.split("/", 1)[1]):
        resource_id = url.split("/", 1)[1]
    elif isinstance(resource.get("id"), str):
        resource_id = resource["id"]
    elif isinstance(full_url, str) and (m := _URN.match(full_url)):
        # A create in a transaction: the server picks the id. Taking the entry's UUID makes a re-sent bundle
        # update the same resources instead of creating copies.
        resource_id = m["uuid"].lower()
    else:
        return None
    resource["id"] = resource_id
    if not isinstance(full_url, str):
        return None
    return full_url, f"{rtype}/{resource_id}"


def _rewrite(value: Any, references: dict[str, str]) -> None:
    """Rewrite references to other entries in place (the parsed request is ours: no second copy of a large bundle)."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            if ref in references:
                value["reference"] = references[ref]
            elif m := _ABSOLUTE.match(ref):
                value["reference"] = m["ref"]
        for v in value.values():
            if isinstance(v, dict | list):
                _rewrite(v, references)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict | list):
                _rewrite(v, references)


def resolve_references(doc: dict[str, Any]) -> dict[str, Any]:
    """A batch/transaction Bundle with its entries' ids assigned and `urn:uuid:` / absolute references to other
    entries rewritten as local `Type/id` references (FHIR R4 3.1.0.11.3: transaction processing rules). Changes
    `doc` in place and returns it."""
    entries = [e for e in doc.get("entry", []) if isinstance(e, dict)]
    references = dict(filter(None, (_entry_reference(e) for e in entries)))
    for entry in entries:
        _rewrite(entry, references)
    return doc


def check_body(
    doc: Any, expected_type: str | None = None, max_resource_bytes: int = DEFAULT_MAX_RESOURCE_BYTES
) -> Checked:
    """A single resource, or a batch/transaction Bundle (all entries valid or nothing accepted)."""
    out = Checked()
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        if doc.get("type") not in ("batch", "transaction", "collection", "history", "subscription-notification"):
            out.issues.append(Issue("value", "Bundle.type must be batch, transaction or a notification", "Bundle.type"))
            return out
        entries = doc.get("entry")
        if isinstance(entries, list) and doc.get("type") in ("batch", "transaction"):
            entries = resolve_references(doc)["entry"]
        if not isinstance(entries, list) or not entries:
            out.issues.append(Issue("required", "Bundle has no entries", "Bundle.entry"))
            return out
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "resource" not in entry:
                if doc.get("type") == "subscription-notification" and i == 0:
                    continue  # the notification's SubscriptionStatus entry
                out.issues.append(Issue("required", "entry has no resource", f"Bundle.entry[{i}]"))
                continue
            resource = entry["resource"]
            if isinstance(resource, dict) and resource.get("resourceType") in ("SubscriptionStatus", "Parameters"):
                continue
            accepted, issues = check_resource(resource, f"Bundle.entry[{i}].resource", max_resource_bytes)
            out.issues += issues
            if accepted:
                out.accepted.append(accepted)
        if out.issues:
            out.accepted = []  # all or nothing
        return out
    accepted, issues = check_resource(doc, max_bytes=max_resource_bytes)
    if accepted and expected_type and accepted.resource_type != expected_type:
        issues = [
            Issue("invalid", f"URL names {expected_type} but the body is {accepted.resource_type}", "resourceType")
        ]
        accepted = None
    out.issues += issues
    if accepted:
        out.accepted.append(accepted)
    return out


def to_event(a: Accepted, received_at_ns: int, bundle_id: str = "") -> fhir_pb2.FhirResourceEvent:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromNanoseconds(received_at_ns)
    return fhir_pb2.FhirResourceEvent(
        event_id=a.event_id,
        resource_type=a.resource_type,
        resource_id=a.resource_id,
        patient_reference=a.patient_reference,
        operation=fhir_pb2.FHIR_OPERATION_UPDATE
        if a.resource.get("meta", {}).get("versionId")
        else fhir_pb2.FHIR_OPERATION_CREATE,
        resource_json=a.resource_json,
        received_at=ts,
        bundle_id=bundle_id,
    )
