"""Alert rules and episodes (pure): one episode raises one alert, escalates once if it persists.

A rule holds for a closed 1-minute window (or a CGM reading) when its condition is true of the window's mean.
It is *sustained* once it has held without interruption (gaps up to `max_gap_s`) for `duration_s`; that raises
the alert. If it is still holding `escalate_after_s` after the episode started, one escalation alert follows.
When it stops holding the episode ends, but an episode that resumes within `suppress_s` of its end is the same
episode: no new alert. Alert ids are derived from (patient, rule, episode start, level), so reprocessing after
a crash yields the same ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medstream.events.v1 import finding_pb2

_NAMESPACE = uuid.UUID("a5b0e7f4-3c1d-4f7e-9b62-0d8f5a1c2e93")


@dataclass(frozen=True)
class Rule:
    rule_id: str
    kind: str
    metric: str
    description: str
    condition: Callable[[float], bool]
    duration_s: int
    escalate_after_s: int
    severity: int
    escalated_severity: int
    max_gap_s: int = 120
    suppress_s: int = 15 * 60


RULES: tuple[Rule, ...] = (
    Rule(
        "tachycardia-v1",
        "tachycardia",
        "heart_rate",
        "heart rate > 120/min for 10 min",
        lambda v: v > 120,
        10 * 60,
        30 * 60,
        finding_pb2.SEVERITY_MEDIUM,
        finding_pb2.SEVERITY_HIGH,
    ),
    Rule(
        "bradycardia-v1",
        "bradycardia",
        "heart_rate",
        "heart rate < 40/min for 5 min",
        lambda v: v < 40,
        5 * 60,
        15 * 60,
        finding_pb2.SEVERITY_HIGH,
        finding_pb2.SEVERITY_CRITICAL,
    ),
    Rule(
        "desaturation-v1",
        "desaturation",
        "oxygen_saturation",
        "SpO2 < 90% for 2 min",
        lambda v: v < 90,
        2 * 60,
        10 * 60,
        finding_pb2.SEVERITY_HIGH,
        finding_pb2.SEVERITY_CRITICAL,
    ),
    # CGM reads every 5 minutes: 3 consecutive readings span 10-15 minutes; gaps up to 11 min keep the run.
    Rule(
        "hypoglycaemia-v1",
        "hypoglycaemia",
        "glucose",
        "glucose < 70 mg/dL for 15 min (3 readings)",
        lambda v: v < 70,
        10 * 60,
        30 * 60,
        finding_pb2.SEVERITY_HIGH,
        finding_pb2.SEVERITY_CRITICAL,
        max_gap_s=11 * 60,
    ),
    Rule(
        "hyperglycaemia-v1",
        "hyperglycaemia",
        "glucose",
        "glucose > 250 mg/dL for 2 h",
        lambda v: v > 250,
        2 * 3600,
        4 * 3600,
        finding_pb2.SEVERITY_MEDIUM,
        finding_pb2.SEVERITY_HIGH,
        max_gap_s=11 * 60,
    ),
)
RULES_BY_METRIC: dict[str, tuple[Rule, ...]] = {}
for _rule in RULES:
    RULES_BY_METRIC[_rule.metric] = (*RULES_BY_METRIC.get(_rule.metric, ()), _rule)


@dataclass
class Episode:
    start: float = -1.0  # episode start; -1: none yet
    last_true: float = -1.0
    ended_at: float = -1.0  # -1 while the condition still holds
    level: int = 0  # 0 nothing raised, 1 alerted, 2 escalated

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass(frozen=True)
class RaisedAlert:
    alert_id: str
    rule: Rule
    severity: int
    episode_start: float
    window_end: float
    level: int
    value: float


@dataclass
class EpisodeBook:
    episodes: dict[str, Episode] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: e.to_dict() for k, e in self.episodes.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpisodeBook:
        return cls({k: Episode(**v) for k, v in d.items()})


def alert_id(patient_id: str, rule_id: str, episode_start: float, level: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{patient_id}|{rule_id}|{episode_start:.0f}|{level}"))


def observe(
    book: EpisodeBook, rule: Rule, patient_id: str, t: float, value: float, span_s: float = 60.0
) -> list[RaisedAlert]:
    """Feed one window (start time t, covering span_s seconds) in time order; return alerts to raise."""
    ep = book.episodes.setdefault(rule.rule_id, Episode())
    active = ep.start >= 0 and ep.ended_at < 0
    if active and t - ep.last_true > rule.max_gap_s + span_s:
        ep.ended_at, active = ep.last_true, False  # a gap ends the run
    if not rule.condition(value):
        if active:
            ep.ended_at = ep.last_true
        return []
    if not active:
        suppressed = ep.start >= 0 and ep.level > 0 and t - ep.ended_at <= rule.suppress_s
        if suppressed:
            ep.ended_at = -1.0  # the same episode resumes: keep its start and what was raised
        else:
            ep.start, ep.ended_at, ep.level = t, -1.0, 0
    ep.last_true = t
    duration = t + span_s - ep.start
    raised = []
    if ep.level == 0 and duration >= rule.duration_s:
        ep.level = 1
        raised.append(
            RaisedAlert(
                alert_id(patient_id, rule.rule_id, ep.start, 1), rule, rule.severity, ep.start, t + span_s, 1, value
            )
        )
    if ep.level == 1 and duration >= rule.escalate_after_s:
        ep.level = 2
        raised.append(
            RaisedAlert(
                alert_id(patient_id, rule.rule_id, ep.start, 2),
                rule,
                rule.escalated_severity,
                ep.start,
                t + span_s,
                2,
                value,
            )
        )
    return raised
