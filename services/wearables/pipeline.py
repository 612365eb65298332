"""One patient's wearable stream, one batch at a time (pure): windows, features, rules, outputs."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import alert_pb2, common_pb2, fhir_pb2, finding_pb2, graph_pb2, wearable_pb2

from services.common.graph import Node, Relationship
from services.common.graph_events import to_mutation
from services.common.measurements import METRICS
from services.wearables import features
from services.wearables.contract import HORIZON_S, RISK_THRESHOLD, STEP_S, WINDOW
from services.wearables.rules import RULES_BY_METRIC, EpisodeBook, RaisedAlert, Rule, observe
from services.wearables.windows import HourWindow, MetricWindows, add_samples

_NAMESPACE = uuid.UUID("0b7f3a8e-58c4-4d0b-a1e2-7c9d6e5f4a31")
MODEL_RULE = Rule(
    "glycaemia-risk-model",
    "hypoglycaemia-risk",
    "glucose",
    f"model risk of hypoglycaemia within {HORIZON_S // 60} min >= {RISK_THRESHOLD}",
    lambda v: v >= RISK_THRESHOLD,
    0,
    6 * 3600,
    finding_pb2.SEVERITY_MEDIUM,
    finding_pb2.SEVERITY_HIGH,
    max_gap_s=11 * 60,
    suppress_s=60 * 60,
)


@dataclass
class PatientState:
    metrics: dict[str, MetricWindows] = field(default_factory=dict)
    book: EpisodeBook = field(default_factory=EpisodeBook)
    scored: list[float] = field(default_factory=list)  # CGM reading times already scored (bounded)

    def to_json(self) -> str:
        return json.dumps(
            {
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "book": self.book.to_dict(),
                "scored": self.scored[-50:],
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes | None) -> PatientState:
        if not text:
            return cls()
        d = json.loads(text)
        return cls(
            {k: MetricWindows.from_dict(v) for k, v in d["metrics"].items()},
            EpisodeBook.from_dict(d["book"]),
            d.get("scored", []),
        )


def validate(batch: wearable_pb2.WearableSampleBatch) -> list[str]:
    """Contract problems of a sample batch, empty when it can be processed."""
    problems = []
    if not batch.samples:
        problems.append("batch has no samples")
    for i, s in enumerate(batch.samples):
        if not s.patient_id or not s.metric or not s.HasField("effective_time"):
            problems.append(f"sample {i}: patient_id, metric and effective_time are required")
            break
    if len({s.patient_id for s in batch.samples}) > 1:
        problems.append("samples of more than one patient in one batch")
    return problems


@dataclass
class ScoreRequest:
    time: float
    glucose: list[float]


@dataclass
class StepOutput:
    alerts: list[alert_pb2.Alert] = field(default_factory=list)
    observations: list[fhir_pb2.FhirResourceEvent] = field(default_factory=list)
    mutations: list[graph_pb2.GraphMutation] = field(default_factory=list)
    score_requests: list[ScoreRequest] = field(default_factory=list)
    minutes_closed: int = 0
    late_dropped: int = 0


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def to_alert(
    patient_id: str, raised: RaisedAlert, now: float, model: common_pb2.ModelRef | None = None
) -> alert_pb2.Alert:
    rule = raised.rule
    escalated = " (escalated: still ongoing)" if raised.level == 2 else ""
    return alert_pb2.Alert(
        alert_id=raised.alert_id,
        patient_id=patient_id,
        kind=rule.kind,
        severity=raised.severity,  # type: ignore[arg-type]
        summary=f"{rule.description}{escalated}; latest {raised.value:.3g}",
        raised_at=_ts(now),
        window_start=_ts(raised.episode_start),
        window_end=_ts(raised.window_end),
        rule_id=rule.rule_id,
        model=model,
    )


def alert_mutation(patient_id: str, alert: alert_pb2.Alert) -> graph_pb2.GraphMutation:
    node = Node(
        "Alert",
        alert.alert_id,
        {
            "kind": alert.kind,
            "severity": finding_pb2.Severity.Name(alert.severity),
            "rule_id": alert.rule_id,
            "window_start": alert.window_start.ToJsonString(),
            "raised_at": alert.raised_at.ToJsonString(),
        },
    )
    return to_mutation(alert.alert_id, relationships=[Relationship(Node("Patient", patient_id), "HAS_ALERT", node)])


def hourly_observation(
    patient_id: str, metric: str, window: HourWindow, summary: dict[str, float], extra: dict[str, float] | None = None
) -> dict[str, Any]:
    """A FHIR R4 Observation for one hourly aggregate (mean as the value, min/max/sd/extras as components)."""
    spec = METRICS[metric]
    obs_id = str(uuid.uuid5(_NAMESPACE, f"{patient_id}|{metric}|{window.start}"))
    ucum = "http://unitsofmeasure.org"
    components = [
        {
            "code": {"text": name},
            "valueQuantity": {"value": round(value, 4), "unit": spec.unit, "system": ucum, "code": spec.unit},
        }
        for name, value in (
            ("minimum", summary["min"]),
            ("maximum", summary["max"]),
            ("standard deviation", summary["sd"]),
        )
    ]
    components += [
        {"code": {"text": name}, "valueQuantity": {"value": round(value, 4)}} for name, value in (extra or {}).items()
    ]
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs" if metric != "glucose" else "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": spec.system, "code": spec.code, "display": spec.display}], "text": spec.display},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectivePeriod": {"start": _iso(window.start), "end": _iso(window.end)},
        "valueQuantity": {"value": round(summary["mean"], 4), "unit": spec.unit, "system": ucum, "code": spec.unit},
        "method": {
            "text": f"1-hour mean of {int(summary['n'])} wearable samples over {int(summary['minutes'])} minutes"
        },
        "component": components,
    }


def observation_event(patient_id: str, resource: dict[str, Any], now: float) -> fhir_pb2.FhirResourceEvent:
    return fhir_pb2.FhirResourceEvent(
        event_id=resource["id"],
        resource_type="Observation",
        resource_id=resource["id"],
        patient_reference=f"Patient/{patient_id}",
        operation=fhir_pb2.FHIR_OPERATION_CREATE,
        resource_json=json.dumps(resource, separators=(",", ":")).encode(),
        received_at=_ts(now),
    )


def _hour_extras(metric: str, window: HourWindow) -> dict[str, float]:
    if metric == "rr_interval":
        rmssd = features.rmssd_ms(window.minutes)
        return {"rmssd_ms": rmssd} if rmssd is not None else {}
    if metric == "oxygen_saturation":
        minutes, events = features.desaturation(window.minutes)
        return {"desaturation_minutes": float(minutes), "desaturation_events": float(events)}
    return {}


def step(
    state: PatientState, patient_id: str, samples: Iterable[wearable_pb2.WearableSample], now: float
) -> StepOutput:
    out = StepOutput()
    by_metric: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        by_metric[s.metric].append((s.effective_time.ToNanoseconds() / 1e9, s.value))
    summary_props: dict[str, Any] = {}
    for metric, values in sorted(by_metric.items()):
        if metric not in METRICS:
            continue
        windows = state.metrics.setdefault(metric, MetricWindows())
        advance = add_samples(windows, sorted(values), is_glucose=metric == "glucose")
        out.minutes_closed += len(advance.minutes)
        out.late_dropped += advance.late
        for minute in advance.minutes:
            for rule in RULES_BY_METRIC.get(metric, ()):
                for raised in observe(state.book, rule, patient_id, minute.start, minute.mean):
                    alert = to_alert(patient_id, raised, now)
                    out.alerts.append(alert)
                    out.mutations.append(alert_mutation(patient_id, alert))
        for hour in advance.hours:
            summary = features.hourly_summary(hour)
            resource = hourly_observation(patient_id, metric, hour, summary, _hour_extras(metric, hour))
            out.observations.append(observation_event(patient_id, resource, now))
            summary_props[f"{metric}_1h_mean"] = round(summary["mean"], 3)
            if metric == "glucose" and windows.glucose:
                readings = [windows.glucose[t] for t in sorted(windows.glucose)]
                g = features.glucose_summary(readings)
                summary_props |= {f"cgm_7d_{k}": round(v, 3) for k, v in g.items()}
        if metric == "glucose":
            out.score_requests += _score_requests(state, windows, advance.new_glucose)
    if summary_props:
        summary_props["wearables_updated_at"] = _iso(now)
        out.mutations.append(
            to_mutation(f"{patient_id}|summary|{now}", nodes=[Node("Patient", patient_id, summary_props)])
        )
    return out


def _score_requests(state: PatientState, windows: MetricWindows, new: list[tuple[float, float]]) -> list[ScoreRequest]:
    """A request for each new CGM reading preceded by a complete 2-hour series on the 5-minute grid."""
    times = sorted(windows.glucose)
    requests = []
    for t, _ in sorted(new):
        if t in state.scored:
            continue
        history = [x for x in times if t - (WINDOW - 0.5) * STEP_S < x <= t]
        if len(history) < WINDOW:
            continue
        series = history[-WINDOW:]
        gaps = [b - a for a, b in pairwise(series)]
        if max(gaps) > 1.5 * STEP_S:
            continue
        requests.append(ScoreRequest(t, [windows.glucose[x] for x in series]))
        state.scored = [*state.scored[-49:], t]
    return requests


def apply_risk(
    state: PatientState, patient_id: str, request: ScoreRequest, risk: float, model: common_pb2.ModelRef, now: float
) -> StepOutput:
    """Model result for one CGM window: a model-driven episode (one alert per episode, escalation)."""
    out = StepOutput()
    for raised in observe(state.book, MODEL_RULE, patient_id, request.time, risk, span_s=STEP_S):
        alert = to_alert(patient_id, raised, now, model)
        out.alerts.append(alert)
        out.mutations.append(alert_mutation(patient_id, alert))
    props = {
        "hypoglycaemia_risk": round(risk, 4),
        "hypoglycaemia_risk_model": f"{model.name}:{model.version}",
        "hypoglycaemia_risk_at": _iso(request.time),
    }
    out.mutations.append(to_mutation(f"{patient_id}|risk|{request.time}", nodes=[Node("Patient", patient_id, props)]))
    return out
