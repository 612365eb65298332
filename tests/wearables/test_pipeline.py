import json

import pytest
from fhir.resources.R4B.observation import Observation
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import common_pb2, wearable_pb2

from services.common.graph_events import from_mutation
from services.wearables.contract import WINDOW as RISK_WINDOW
from services.wearables.pipeline import PatientState, apply_risk, step

pytestmark = pytest.mark.unit
T0 = 1_790_000_040 - (1_790_000_040 % 3600)


def sample(metric: str, t: float, value: float, patient: str = "p1") -> wearable_pb2.WearableSample:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return wearable_pb2.WearableSample(device_id="d", patient_id=patient, metric=metric, value=value, effective_time=ts)


def test_sustained_tachycardia_raises_one_alert_with_graph_update():
    state = PatientState()
    out = step(state, "p1", [sample("heart_rate", T0 + i, 135.0) for i in range(0, 15 * 60, 5)], now=T0 + 900)
    assert [a.kind for a in out.alerts] == ["tachycardia"] and out.alerts[0].rule_id == "tachycardia-v1"
    assert any(r.type == "HAS_ALERT" for m in out.mutations for r in from_mutation(m)[1])
    again = step(
        PatientState.from_json(state.to_json()),
        "p1",
        [sample("heart_rate", T0 + 900 + i, 135.0) for i in range(0, 120, 5)],
        now=T0 + 1100,
    )
    assert again.alerts == []  # same episode, restored from JSON state


def test_hourly_aggregates_are_valid_fhir_r4_observations():
    state = PatientState()
    out = step(
        state,
        "p1",
        [sample("oxygen_saturation", T0 + i, 96.0 if i % 600 else 88.0) for i in range(0, 2 * 3600, 10)],
        now=T0 + 7200,
    )
    assert out.observations
    for event in out.observations:
        resource = json.loads(event.resource_json)
        Observation.model_validate(resource)  # raises if not valid FHIR
        assert resource["code"]["coding"][0]["code"] == "59408-5"
        assert resource["subject"]["reference"] == "Patient/p1" == event.patient_reference
        names = {c["code"]["text"] for c in resource["component"]}
        assert {"minimum", "maximum", "desaturation_minutes", "desaturation_events"} <= names
    ids = [e.resource_id for e in out.observations]
    assert len(ids) == len(set(ids))


def test_cgm_windows_are_scored_and_risk_episodes_alert_once():
    state = PatientState()
    readings = [sample("glucose", T0 + 300 * i, 110.0 - i) for i in range(RISK_WINDOW + 5)]
    out = step(state, "p1", readings, now=T0)
    assert out.score_requests and all(len(r.glucose) == RISK_WINDOW for r in out.score_requests)
    assert step(state, "p1", readings, now=T0).score_requests == []  # redelivery: scored already
    model = common_pb2.ModelRef(name="glycaemia_risk", version="1")
    alerts = []
    for r in out.score_requests:
        alerts += apply_risk(state, "p1", r, 0.8, model, now=T0).alerts
    assert len(alerts) == 1 and alerts[0].kind == "hypoglycaemia-risk" and alerts[0].model.version == "1"


def test_glucose_summary_reaches_the_patient_node():
    state = PatientState()
    out = step(
        state,
        "p1",
        [sample("glucose", T0 + 300 * i, 60.0 if i % 10 == 0 else 130.0) for i in range(40)],
        now=T0 + 12000,
    )
    props = {}
    for m in out.mutations:
        for node in from_mutation(m)[0]:
            if node.label == "Patient":
                props |= node.properties
    assert props["cgm_7d_tbr_percent"] > 0 and 0 < props["cgm_7d_tir_percent"] < 100
