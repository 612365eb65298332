"""CDS Hooks 2.0 service: an EHR calls `patient-view` with prefetched FHIR data and gets differential-diagnosis
cards from the same engine the decision-support worker runs.

GET  /cds-services                       discovery
POST /cds-services/{id}                  patient-view: {hook, hookInstance, context.patientId, prefetch}
POST /cds-services/{id}/feedback         card outcomes (accepted / overridden), counted
Callers authenticate with a bearer token (hashes in `MEDSTREAM_CDS_HOOKS_CLIENTS`, the FHIR gateway's format).
The data comes from `prefetch` (the service never reaches back into the EHR): without it the answer is 412.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Counter
from tritonclient.utils import InferenceServerException

from services.cds import cards
from services.cds.contract import CDS_MULTIMODAL
from services.cds.engine import Engine
from services.cds.state import PatientState, apply
from services.common.auth import authenticate, load_clients
from services.common.config import Settings, get_settings
from services.common.sentences import embed
from services.common.service import run_until_signalled
from services.common.telemetry import configure_logging, health_app, http_server
from services.common.triton import TritonUnavailable, triton_client

SERVICE = "cds-hooks"
SERVICE_ID = "medstream-differential-diagnosis"
DEV_CLIENTS = Path(__file__).resolve().parents[2] / "samples" / "cds_hooks_clients.yaml"
MAX_BODY = 8 * 1024 * 1024
log = logging.getLogger(__name__)
REQUESTS = Counter("medstream_cds_hooks_requests_total", "CDS Hooks requests", ["service", "outcome"])
FEEDBACK = Counter("medstream_cds_hooks_feedback_total", "Card feedback from CDS clients", ["service", "outcome"])

PATIENT = "{{context.patientId}}"
DISCOVERY = {
    "services": [
        {
            "hook": "patient-view",
            "id": SERVICE_ID,
            "title": "medstream differential diagnosis",
            "description": "Ranks candidate diagnoses from notes, labs and vital signs (a multimodal model fused with "
            "HPO phenotype matching) and explains each one. Synthetic-data model: not for clinical use.",
            "prefetch": {
                "patient": f"Patient/{PATIENT}",
                "observations": f"Observation?patient={PATIENT}&_sort=-date&_count=200",
                "conditions": f"Condition?patient={PATIENT}&clinical-status=active",
                "medications": f"MedicationRequest?patient={PATIENT}&status=active",
                "notes": f"DocumentReference?patient={PATIENT}&_sort=-date&_count=5",
            },
            "usageRequirements": "Send the prefetch: the service does not query the EHR's FHIR server.",
        }
    ]
}


class HookError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def prefetched_resources(prefetch: Any) -> list[dict[str, Any]]:
    """Resources in a CDS Hooks prefetch: each value is a resource, a searchset Bundle, or null (not found)."""
    if not isinstance(prefetch, dict):
        raise HookError(400, "prefetch must be an object of FHIR resources or Bundles")
    out: list[dict[str, Any]] = []
    for key, value in prefetch.items():
        if value is None:
            continue
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise HookError(400, f"prefetch.{key} is not a FHIR resource")
        if value["resourceType"] == "Bundle":
            out += [
                e["resource"]
                for e in value.get("entry", []) or []
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)
            ]
        else:
            out.append(value)
    return out


def _subject(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id"))
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/"):
            return str(ref["reference"]).split("/", 1)[1]
    return None


def state_from_request(body: Any) -> PatientState:
    """The patient's state from a patient-view request (only resources about context.patientId count)."""
    if not isinstance(body, dict):
        raise HookError(400, "the request body must be a JSON object")
    if body.get("hook") != "patient-view":
        raise HookError(400, f"this service answers the patient-view hook, not {body.get('hook')!r}")
    if not isinstance(body.get("hookInstance"), str):
        raise HookError(400, "hookInstance is required")
    context = body.get("context")
    patient_id = context.get("patientId") if isinstance(context, dict) else None
    if not isinstance(patient_id, str) or not patient_id:
        raise HookError(400, "context.patientId is required")
    if "prefetch" not in body:
        raise HookError(412, "prefetch is required: this service does not query the FHIR server")
    state = PatientState(patient_id=patient_id)
    for resource in prefetched_resources(body["prefetch"]):
        if _subject(resource) == patient_id and isinstance(resource.get("id"), str):
            apply(state, resource["resourceType"], resource)
    return state


def hooks_app(settings: Settings, clients: dict[str, str], engine: Engine) -> web.Application:
    async def ready() -> bool:
        return await engine.triton.ready(CDS_MULTIMODAL.name)

    app = health_app({"triton": ready})
    app._client_max_size = MAX_BODY

    def error(status: int, message: str) -> web.Response:
        REQUESTS.labels(SERVICE, str(status)).inc()
        return web.json_response({"error": message}, status=status)

    def authorised(request: web.Request) -> bool:
        return authenticate(request.headers.get("Authorization"), clients) is not None

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response(DISCOVERY)

    async def call(request: web.Request) -> web.Response:
        if not authorised(request):
            resp = error(401, "missing or invalid bearer token")
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        if request.match_info["service_id"] != SERVICE_ID:
            return error(404, f"no CDS service {request.match_info['service_id']!r}")
        try:
            body = json.loads(await request.read())
            state = state_from_request(body)
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"body over {MAX_BODY} bytes")
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"body is not valid JSON: {exc}")
        except HookError as exc:
            return error(exc.status, str(exc))
        if not (state.labs or state.notes):
            REQUESTS.labels(SERVICE, "no-data").inc()
            return web.json_response({"cards": []})
        try:
            [assessment] = await engine.evaluate([engine.case(state)])
        except (TritonUnavailable, OSError) as exc:
            resp = error(503, f"model server unavailable: {exc}"[:300])
            resp.headers["Retry-After"] = "5"
            return resp
        except InferenceServerException as exc:
            log.error("model request refused", extra={"model": CDS_MULTIMODAL.name, "error": str(exc.message())[:300]})
            return error(500, "the model refused the request")
        REQUESTS.labels(SERVICE, "200").inc()
        body = cards.response(assessment, engine.term_names, engine.alpha)
        return web.json_response({"cards": body["cards"]})

    async def feedback(request: web.Request) -> web.Response:
        if not authorised(request):
            return error(401, "missing or invalid bearer token")
        try:
            items = json.loads(await request.read()).get("feedback", [])
        except (ValueError, AttributeError):
            return error(400, 'body must be {"feedback": [...]}')
        for item in items if isinstance(items, list) else []:
            FEEDBACK.labels(SERVICE, str(item.get("outcome", "unknown")) if isinstance(item, dict) else "bad").inc()
        return web.json_response({})

    app.router.add_get("/cds-services", discovery)
    app.router.add_post("/cds-services/{service_id}", call)
    app.router.add_post("/cds-services/{service_id}/feedback", feedback)
    return app


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    clients = load_clients(settings.cds_hooks_clients or DEV_CLIENTS)
    engine = Engine(triton_client(settings, SERVICE), embed, alpha=settings.cds_alpha, top=settings.cds_top)
    await asyncio.to_thread(engine.warm_up)
    async with http_server(hooks_app(settings, clients, engine), settings.http_host, settings.http_port):
        log.info("cds hooks service started", extra={"clients": len(clients)})
        await stop.wait()


def main() -> None:
    settings = get_settings()
    configure_logging(SERVICE, settings.log_level)
    run_until_signalled(lambda stop: serve(settings, stop))
