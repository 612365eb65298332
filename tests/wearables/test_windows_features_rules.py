import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.wearables import features
from services.wearables.rules import RULES, EpisodeBook, observe
from services.wearables.windows import ALLOWED_LATENESS, HOUR, MetricWindows, add_samples

pytestmark = pytest.mark.unit
T0 = 1_790_000_040 - (1_790_000_040 % 3600)  # on the hour


def test_minutes_close_after_lateness_and_late_samples_are_dropped():
    w = MetricWindows()
    adv = add_samples(w, [(T0 + 1, 60), (T0 + 30, 80)])
    assert adv.minutes == []
    adv = add_samples(w, [(T0 + 60 + ALLOWED_LATENESS, 70)])
    assert [m.start for m in adv.minutes] == [T0] and adv.minutes[0].mean == 70 and adv.minutes[0].n == 2
    adv = add_samples(w, [(T0 + 5, 999)])  # for a closed minute: late
    assert adv.late == 1 and w.late_dropped == 1


def test_duplicates_collapse():
    a, b = MetricWindows(), MetricWindows()
    samples = [(T0 + i, 60.0 + i % 7) for i in range(600)]
    add_samples(a, samples)
    add_samples(b, samples)
    add_samples(b, samples[100:300])  # redelivered part
    assert [vars(m) for m in a.closed] == [vars(m) for m in b.closed]


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_out_of_order_within_lateness_gives_the_same_windows(rnd: random.Random):
    samples = [(T0 + i * 5.0, 50.0 + (i * 7919) % 40) for i in range(200)]
    in_order = MetricWindows()
    add_samples(in_order, samples)
    shuffled = MetricWindows()
    chunks = [samples[i : i + 10] for i in range(0, len(samples), 10)]
    for i in range(0, len(chunks) - 1, 2):  # swap disjoint neighbours: at most 50 s of disorder < lateness
        if rnd.random() < 0.5:
            chunks[i], chunks[i + 1] = chunks[i + 1], chunks[i]
    for c in chunks:
        add_samples(shuffled, rnd.sample(c, len(c)))
    assert [(m.start, m.n, m.mean) for m in in_order.closed] == [(m.start, m.n, m.mean) for m in shuffled.closed]


def test_state_round_trips_through_json():
    w = MetricWindows()
    add_samples(w, [(T0 + i, float(i % 50) + 700) for i in range(400)], is_glucose=True)
    assert MetricWindows.from_dict(w.to_dict()).to_dict() == w.to_dict()


def test_hourly_windows_hop_every_15_minutes():
    w = MetricWindows()
    hours = []
    for i in range(0, 2 * HOUR + 600, 10):
        hours += add_samples(w, [(T0 + i, 70.0)]).hours
    assert [h.end - h.start for h in hours] == [HOUR] * len(hours)
    assert [h.end for h in hours][:3] == [T0 + 900, T0 + 1800, T0 + 2700]
    assert len(hours[3].minutes) == 60


def test_rmssd_of_known_series():
    w = MetricWindows()
    rr = [800, 810, 790, 820, 800] * 30
    t, samples = T0, []
    for v in rr:
        samples.append((t, float(v)))
        t += v / 1000
    add_samples(w, [*samples, (T0 + 1000, 800.0)])
    diffs = [(b - a) ** 2 for a, b in itertools.pairwise(rr)]
    expected = math.sqrt(sum(diffs) / len(diffs))
    closed_span = [m for m in w.closed if m.start < T0 + 120]
    assert features.rmssd_ms(closed_span) == pytest.approx(expected, rel=0.05)


def test_desaturation_minutes_and_events():
    w = MetricWindows()
    values = [97] * 5 + [88] * 3 + [96] * 2 + [86] * 2 + [97] * 5
    add_samples(w, [(T0 + 60 * i + 30, float(v)) for i, v in enumerate(values)] + [(T0 + 3600, 97.0)])
    minutes, events = features.desaturation(w.closed)
    assert (minutes, events) == (5, 2)


def test_glucose_summary_consensus_metrics():
    readings = [60.0] * 10 + [120.0] * 80 + [200.0] * 10
    g = features.glucose_summary(readings)
    assert (g["tbr_percent"], g["tir_percent"], g["tar_percent"]) == (10.0, 80.0, 10.0)
    assert g["mean"] == 122.0 and g["cv_percent"] == pytest.approx(100 * g["sd"] / 122.0)


def test_mage_counts_swings_larger_than_one_sd():
    flat = [100.0] * 20
    assert features.mage(flat) == 0.0
    swings = [100.0, 200.0, 100.0, 200.0, 100.0] + [110.0] * 5  # the last 10 mg/dL wiggle is below 1 SD
    assert features.mage(swings) == pytest.approx(100.0)


RULE = {r.rule_id: r for r in RULES}


def feed(book, rule, values, start=T0, step=60):
    raised = []
    for i, v in enumerate(values):
        raised += observe(book, rule, "p", start + i * step, v)
    return raised


def test_one_episode_raises_one_alert_then_one_escalation():
    book = EpisodeBook()
    raised = feed(book, RULE["tachycardia-v1"], [130.0] * 45)
    assert [r.level for r in raised] == [1, 2]
    assert raised[0].severity < raised[1].severity
    assert raised[0].window_end - raised[0].episode_start == 10 * 60


def test_short_run_does_not_alert_and_brief_recovery_is_the_same_episode():
    book = EpisodeBook()
    assert feed(book, RULE["tachycardia-v1"], [130.0] * 9 + [80.0]) == []
    book = EpisodeBook()
    first = feed(book, RULE["tachycardia-v1"], [130.0] * 12 + [80.0] * 5 + [130.0] * 12)
    assert [r.level for r in first] == [1]  # resumed within the suppression window: no second alert
    later = feed(book, RULE["tachycardia-v1"], [80.0] * 30 + [130.0] * 12, start=T0 + 29 * 60)
    assert [r.level for r in later] == [1] and later[0].alert_id != first[0].alert_id


def test_hypoglycaemia_on_cgm_readings():
    book = EpisodeBook()
    raised = feed(book, RULE["hypoglycaemia-v1"], [65.0, 62.0, 60.0], step=300)
    assert [r.level for r in raised] == [1]
    assert feed(EpisodeBook(), RULE["hypoglycaemia-v1"], [65.0, 62.0], step=300) == []


def test_alert_ids_are_stable_across_replays():
    a = feed(EpisodeBook(), RULE["desaturation-v1"], [85.0] * 5)
    b = feed(EpisodeBook(), RULE["desaturation-v1"], [85.0] * 5)
    assert [r.alert_id for r in a] == [r.alert_id for r in b]
