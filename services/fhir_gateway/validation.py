"""FHIR R4 input checks (pure): parse, validate with fhir.resources, find the patient, explain problems as an
OperationOutcome."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from medstream.events.v1 import fhir_pb2
from pydantic import ValidationError

# Resource types decision support consumes; anything else is refused rather than silently ignored.
ACCEPTED_TYPES = frozenset(
    {
        "Patient",
        "Observation",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "Encounter",
        "DocumentReference",
        "DiagnosticReport",
        "AllergyIntolerance",
        "Procedure",
        # Shared resources a transaction Bundle brings along (the performer of a lab): accepted and published,
        # keyed by their own reference since they belong to no patient.
        "Practitioner",
        "Organization",
    }
)
PATIENTLESS_TYPES = frozenset({"Practitioner", "Organization"})
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
    patient_reference: str  # "" for Practitioner / Organization
    resource: dict[str, Any]

    @property
    def key(self) -> str:
        """Kafka key: the patient, so a patient's events stay in order; a shared resource's own reference."""
        return self.patient_reference or f"{self.resource_type}/{self.resource_id}"


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


def parse_json(body: bytes) -> tuple[Any, list[Issue]]:
    try:
        return json.loads(body), []
    except (ValueError, UnicodeDecodeError) as exc:
        return None, [Issue("structure", f"body is not valid JSON: {exc}")]


def patient_reference(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource['id']}"
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return str(ref["reference"])
    return None


def null_paths(value: Any, path: str) -> list[str]:
    """Where a JSON object holds null: FHIR JSON leaves elements out instead (fhir.resources would accept it)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in ([f"{path}.{k}"] if v is None else null_paths(v, f"{path}.{k}"))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in null_paths(v, f"{path}[{i}]")]
    return []


def check_resource(resource: Any, path: str = "") -> tuple[Accepted | None, list[Issue]]:
    """Validate one resource; give it a server id when it has none (a create)."""
    prefix = f"{path}." if path else ""
    if not isinstance(resource, dict):
        return None, [Issue("structure", "a resource must be a JSON object", path or "$")]
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return None, [Issue("required", "resourceType is required", f"{prefix}resourceType")]
    if rtype not in ACCEPTED_TYPES:
        return None, [Issue("not-supported", f"resource type {rtype!r} is not accepted here", f"{prefix}resourceType")]
    if "id" in resource and (not isinstance(resource["id"], str) or not _ID.match(resource["id"])):
        return None, [Issue("value", "id must be 1-64 characters of [A-Za-z0-9-.]", f"{prefix}id")]
    nulls = null_paths(resource, path or rtype)
    if nulls:
        return None, [
            Issue("structure", "null is not allowed in FHIR JSON: leave the element out", p) for p in nulls[:20]
        ]
    resource = {**resource, "id": resource.get("id") or str(uuid.uuid4())}
    try:
        get_fhir_model_class(rtype).model_validate(resource)
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
    if rtype in PATIENTLESS_TYPES:
        return Accepted(rtype, resource["id"], "", resource), []
    ref = patient_reference(resource)
    if rtype != "Patient":
        if ref is None:
            return None, [Issue("required", "subject (or patient) must reference a Patient", f"{rtype}.subject")]
        if not _REFERENCE.match(ref):
            return None, [Issue("value", f"reference {ref[:80]!r} is not Patient/<id>", f"{rtype}.subject.reference")]
    assert ref is not None
    return Accepted(rtype, resource["id"], ref, resource), []


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


def _rewrite(value: Any, references: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _rewrite(v, references) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str):
            if ref in references:
                out["reference"] = references[ref]
            elif m := _ABSOLUTE.match(ref):
                out["reference"] = m["ref"]
        return out
    if isinstance(value, list):
        return [_rewrite(v, references) for v in value]
    return value


def resolve_references(doc: dict[str, Any]) -> dict[str, Any]:
    """A batch/transaction Bundle with its entries' ids assigned and `urn:uuid:` / absolute references to other
    entries rewritten as local `Type/id` references (FHIR R4 3.1.0.11.3: transaction processing rules)."""
    entries = [
        dict(e, resource=dict(e["resource"])) if isinstance(e, dict) and isinstance(e.get("resource"), dict) else e
        for e in doc.get("entry", [])
    ]
    references = dict(filter(None, (_entry_reference(e) for e in entries if isinstance(e, dict))))
    return {**doc, "entry": [_rewrite(e, references) if isinstance(e, dict) else e for e in entries]}


def check_body(doc: Any, expected_type: str | None = None) -> Checked:
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
            accepted, issues = check_resource(resource, f"Bundle.entry[{i}].resource")
            out.issues += issues
            if accepted:
                out.accepted.append(accepted)
        if out.issues:
            out.accepted = []  # all or nothing
        return out
    accepted, issues = check_resource(doc)
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
        event_id=str(uuid.uuid4()),
        resource_type=a.resource_type,
        resource_id=a.resource_id,
        patient_reference=a.patient_reference,
        operation=fhir_pb2.FHIR_OPERATION_UPDATE
        if a.resource.get("meta", {}).get("versionId")
        else fhir_pb2.FHIR_OPERATION_CREATE,
        resource_json=json.dumps(a.resource, separators=(",", ":")).encode(),
        received_at=ts,
        bundle_id=bundle_id,
    )
