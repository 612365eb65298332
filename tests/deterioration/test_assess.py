import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from medstream.events.v1 import common_pb2, finding_pb2, vitals_pb2

from services.common.graph_events import from_mutation
from services.deterioration.assess import ALERT_THRESHOLD, assess, validate

pytestmark = pytest.mark.unit
MODEL = common_pb2.ModelRef(name="deterioration_risk", version="1")


def snapshot(**changes) -> vitals_pb2.VitalSignsSnapshot:
    base = dict(
        snapshot_id="s-1",
        patient_id="p-1",
        encounter_id="e-1",
        effective_time=Timestamp(seconds=1_790_000_000),
        respiratory_rate=16,
        oxygen_saturation=97,
        body_temperature=37.0,
        systolic_blood_pressure=120,
        heart_rate=70,
        consciousness=vitals_pb2.CONSCIOUSNESS_ALERT,
    )
    base.update(changes)
    return vitals_pb2.VitalSignsSnapshot(**base)


def test_valid_snapshot_has_no_problems():
    assert validate(snapshot()) == []


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"snapshot_id": ""}, "snapshot_id"),
        ({"patient_id": ""}, "patient_id"),
        ({"heart_rate": 900}, "heart_rate"),
        ({"oxygen_saturation": 101}, "oxygen_saturation"),
        ({"body_temperature": float("nan")}, "body_temperature"),
        ({"respiratory_rate": 0}, "respiratory_rate"),
        ({"consciousness": vitals_pb2.CONSCIOUSNESS_UNSPECIFIED}, "consciousness"),
    ],
)
def test_invalid_snapshots_name_the_problem(changes, problem):
    assert any(problem in p for p in validate(snapshot(**changes)))


def test_missing_effective_time():
    s = snapshot()
    s.ClearField("effective_time")
    assert validate(s) == ["effective_time is required"]


def test_ids_are_deterministic_and_alert_follows_threshold():
    a = assess(snapshot(), 0.2, MODEL, common_pb2.Provenance())
    b = assess(snapshot(), 0.2, MODEL, common_pb2.Provenance())
    assert a.finding.finding_id == b.finding.finding_id and a.alert is None
    assert a.finding.severity == finding_pb2.SEVERITY_LOW
    high = assess(snapshot(), 0.95, MODEL, common_pb2.Provenance())
    assert high.alert is not None and high.alert.finding_id == high.finding.finding_id
    assert high.finding.severity == finding_pb2.SEVERITY_HIGH and ALERT_THRESHOLD <= 0.95
    v2 = assess(snapshot(), 0.2, common_pb2.ModelRef(name="deterioration_risk", version="2"), common_pb2.Provenance())
    assert v2.finding.finding_id != a.finding.finding_id


def test_graph_mutation_links_patient_finding_model_encounter():
    _, rels = from_mutation(assess(snapshot(), 0.7, MODEL, common_pb2.Provenance()).mutation)
    triples = {(r.start.label, r.type, r.end.label) for r in rels}
    assert triples == {
        ("Patient", "HAS_FINDING", "Finding"),
        ("Finding", "PRODUCED_BY", "Model"),
        ("Patient", "HAS_ENCOUNTER", "Encounter"),
        ("Finding", "DURING", "Encounter"),
    }


def test_summary_carries_no_identifiers():
    s = assess(snapshot(patient_id="MRN-99812"), 0.7, MODEL, common_pb2.Provenance()).finding.summary
    assert "MRN" not in s and "99812" not in s
