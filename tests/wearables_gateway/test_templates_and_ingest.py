from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.auth import token_hash
from services.wearables_gateway.app import DEV_REGISTRY
from services.wearables_gateway.ingest import Limits, content_hash, process
from services.wearables_gateway.registry import Vendor, load_registry
from services.wearables_gateway.templates import TemplateError, apply, load_templates, parse_template

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
MS = int(NOW.timestamp() * 1000)
TEMPLATES = load_templates()
ACME = Vendor("acme", token_hash("t"), {"acme-0001": "pt-1"})


def test_bundled_templates_and_registry_load():
    assert {"acme-band-2", "glucomax-cgm", "dreamring"} <= set(TEMPLATES)
    registry = load_registry(DEV_REGISTRY)
    assert registry.authenticate("Bearer dev-acme-token").vendor_id == "acme"
    assert registry.authenticate("Bearer wrong") is None and registry.authenticate(None) is None
    assert registry.authenticate("Basic dev-acme-token") is None
    acme = registry.authenticate("Bearer dev-acme-token")
    assert acme.patient_for("acme-sim-0042") == "sim-pt-0042" and acme.patient_for("gmx-0001") is None


def test_acme_reading_maps_units_and_series():
    reading = {"device": "acme-0001", "ts": MS, "hr": 72, "rr_ms": [800, 820], "spo2": 0.97, "skin_temp_f": 91.4}
    ms, rejections = apply(TEMPLATES["acme-band-2"], reading, 0)
    assert rejections == []
    by = {(m.metric, m.time.timestamp()): m.value for m in ms}
    t = NOW.timestamp()
    assert by[("heart_rate", t)] == 72 and by[("oxygen_saturation", t)] == pytest.approx(97)
    assert by[("skin_temperature", t)] == pytest.approx(33.0, abs=0.01)
    assert by[("rr_interval", t)] == 800 and by[("rr_interval", t + 0.8)] == 820


def test_cgm_mmol_to_mg_dl_and_sleep_categories():
    ms, _ = apply(TEMPLATES["glucomax-cgm"], {"sensor_id": "g", "time": "2026-11-27T12:00:00Z", "glucose_mmol": 5.5}, 0)
    assert ms[0].metric == "glucose" and ms[0].value == pytest.approx(99.1, abs=0.1)
    ms, rej = apply(TEMPLATES["dreamring"], {"ring": "r", "epoch": NOW.timestamp(), "stage": "rem"}, 0)
    assert ms[0].value == 3 and rej == []
    _, rej = apply(TEMPLATES["dreamring"], {"ring": "r", "epoch": NOW.timestamp(), "stage": "snoring"}, 0)
    assert "unknown category" in rej[0].reason


@pytest.mark.parametrize(
    "reading, field, reason",
    [
        ({"ts": MS, "hr": 70}, "device", "missing device id"),
        ({"device": "acme-0001", "hr": 70}, "ts", "bad timestamp"),
        ({"device": "acme-0001", "ts": "yesterday", "hr": 70}, "ts", "bad timestamp"),
        ({"device": "acme-0001", "ts": MS, "hr": "fast"}, "hr", "not a number"),
        ({"device": "acme-0001", "ts": MS, "rr_ms": 800}, "rr_ms", "expected a list"),
    ],
)
def test_unmappable_values_are_rejected_with_reasons(reading, field, reason):
    _, rejections = apply(TEMPLATES["acme-band-2"], reading, 3)
    assert rejections[0].index == 3 and rejections[0].field == field and reason in rejections[0].reason


@pytest.mark.parametrize(
    "reading, reason",
    [
        ({"device": "acme-0001", "ts": MS, "hr": 400}, "outside"),
        ({"device": "acme-0001", "ts": MS, "spo2": 1.2}, "outside"),
        ({"device": "acme-0001", "ts": MS + 3_600_000, "hr": 70}, "future"),
        ({"device": "acme-0001", "ts": MS - 8 * 86_400_000, "hr": 70}, "older than"),
        ({"device": "acme-9999", "ts": MS, "hr": 70}, "not registered"),
    ],
)
def test_validation_rejects_per_sample(reading, reason):
    outcome = process(ACME, "acme-band-2", [reading, {"device": "acme-0001", "ts": MS, "hr": 70}], TEMPLATES, "k", NOW)
    assert outcome.accepted == 1 and len(outcome.rejections) == 1 and reason in outcome.rejections[0].reason


def test_clock_skew_within_bound_is_tolerated():
    ahead = MS + 60_000  # device clock one minute fast
    outcome = process(
        ACME,
        "acme-band-2",
        [{"device": "acme-0001", "ts": ahead, "hr": 70}],
        TEMPLATES,
        "k",
        NOW,
        Limits(clock_skew=timedelta(minutes=5)),
    )
    assert outcome.accepted == 1


def test_batch_level_errors():
    assert "unknown device type" in process(ACME, "nope", [], TEMPLATES, "k", NOW).error
    limited = Vendor("v", "h", {}, device_types=frozenset({"glucomax-cgm"}))
    assert "may not send" in process(limited, "acme-band-2", [], TEMPLATES, "k", NOW).error


def test_samples_are_normalised_and_grouped_per_patient():
    vendor = Vendor("acme", "h", {"a": "p1", "b": "p2"})
    readings = [{"device": d, "ts": MS, "hr": 70} for d in ("a", "b", "a")]
    outcome = process(vendor, "acme-band-2", readings, TEMPLATES, "key-1", NOW)
    assert [len(b.samples) for b in outcome.batches] == [2, 1]
    s = outcome.batches[0].samples[0]
    assert (s.patient_id, s.metric, s.loinc_code, s.unit, s.code_system) == ("p1", "heart_rate", "8867-4", "/min", "")
    assert outcome.batches[0].idempotency_key == "key-1" and outcome.batches[0].vendor_id == "acme"


def test_bad_templates_are_refused():
    base = {
        "device_type": "x",
        "device_id": {"field": "d"},
        "timestamp": {"field": "t", "format": "epoch_s"},
        "measurements": [{"metric": "heart_rate", "field": "hr"}],
    }
    parse_template(base)
    for broken in (
        {**base, "measurements": [{"metric": "mood", "field": "m"}]},
        {**base, "timestamp": {"field": "t", "format": "sundial"}},
        {k: v for k, v in base.items() if k != "device_id"},
    ):
        with pytest.raises(TemplateError):
            parse_template(broken)


def test_content_hash_is_order_of_keys_independent():
    assert content_hash("t", [{"a": 1, "b": 2}]) == content_hash("t", [{"b": 2, "a": 1}])
    assert content_hash("t", [{"a": 1}]) != content_hash("t", [{"a": 2}])


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=10,
)


@given(
    st.lists(st.dictionaries(st.sampled_from(["device", "ts", "hr", "rr_ms", "spo2", "x"]), json_values), max_size=5)
)
def test_any_json_gets_an_answer_never_an_exception(readings):
    outcome = process(ACME, "acme-band-2", readings, TEMPLATES, "k", NOW)
    assert outcome.accepted + len(outcome.rejections) >= 0
