"""Device mapping templates: vendor payload -> normalised measurements (metric, value in UCUM unit, time).

One YAML file per device type under `templates/` (or MEDSTREAM_WEARABLES_TEMPLATES_DIR), in the spirit of
Azure IoMT's device mapping templates. Pure: no I/O except `load_templates`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from services.common.measurements import METRICS

BUNDLED = Path(__file__).parent / "templates"

# Unit conversions a template may name; each maps the vendor's unit onto the metric's UCUM unit.
CONVERSIONS: dict[str, Callable[[float], float]] = {
    "identity": lambda v: v,
    "fahrenheit_to_celsius": lambda v: (v - 32.0) * 5.0 / 9.0,
    "mmol_per_l_to_mg_per_dl": lambda v: v * 18.016,
    "seconds_to_ms": lambda v: v * 1000.0,
    "fraction_to_percent": lambda v: v * 100.0,
}


@dataclass(frozen=True, slots=True)
class FieldMapping:
    metric: str
    source: str  # the vendor's field name
    convert: str = "identity"
    # A list field holds consecutive values (e.g. RR intervals); each gets time + cumulative offset.
    series: bool = False
    categories: Mapping[str, float] = field(default_factory=dict)  # for categorical fields (sleep stage)


@dataclass(frozen=True, slots=True)
class Template:
    device_type: str
    device_id_field: str
    timestamp_field: str
    timestamp_format: str  # epoch_s | epoch_ms | iso8601
    mappings: tuple[FieldMapping, ...]


@dataclass(frozen=True, slots=True)
class Measurement:
    device_id: str
    metric: str
    value: float
    time: datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    field: str
    reason: str


class TemplateError(ValueError):
    """A template file that does not describe a usable mapping."""


def parse_template(doc: Mapping[str, Any]) -> Template:
    try:
        mappings = tuple(
            FieldMapping(
                metric=m["metric"],
                source=m["field"],
                convert=m.get("convert", "identity"),
                series=bool(m.get("series", False)),
                categories={str(k): float(v) for k, v in (m.get("categories") or {}).items()},
            )
            for m in doc["measurements"]
        )
        template = Template(
            device_type=doc["device_type"],
            device_id_field=doc["device_id"]["field"],
            timestamp_field=doc["timestamp"]["field"],
            timestamp_format=doc["timestamp"]["format"],
            mappings=mappings,
        )
    except (KeyError, TypeError) as exc:
        raise TemplateError(f"template is missing {exc}") from exc
    if template.timestamp_format not in ("epoch_s", "epoch_ms", "iso8601"):
        raise TemplateError(f"unknown timestamp format {template.timestamp_format!r}")
    for m in mappings:
        if m.metric not in METRICS:
            raise TemplateError(f"unknown metric {m.metric!r}")
        if m.convert not in CONVERSIONS:
            raise TemplateError(f"unknown conversion {m.convert!r}")
    return template


def load_templates(directory: Path = BUNDLED) -> dict[str, Template]:
    templates = {}
    for path in sorted(directory.rglob("*.yaml")):
        template = parse_template(yaml.safe_load(path.read_text()))
        if template.device_type in templates:
            raise TemplateError(f"device type {template.device_type} defined twice ({path})")
        templates[template.device_type] = template
    return templates


def parse_time(raw: Any, fmt: str) -> datetime:
    if fmt == "iso8601":
        if not isinstance(raw, str):
            raise ValueError("expected an ISO 8601 string")
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError("timestamp has no time zone")
        return parsed.astimezone(UTC)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ValueError("expected a number")
    seconds = raw / 1000.0 if fmt == "epoch_ms" else float(raw)
    return datetime.fromtimestamp(seconds, UTC)


def apply(template: Template, reading: Mapping[str, Any], index: int) -> tuple[list[Measurement], list[Rejection]]:
    """Measurements found in one reading, and a rejection for each value that could not be mapped."""
    device_id = reading.get(template.device_id_field)
    if not isinstance(device_id, str) or not device_id:
        return [], [Rejection(index, template.device_id_field, "missing device id")]
    try:
        time = parse_time(reading.get(template.timestamp_field), template.timestamp_format)
    except (ValueError, OverflowError, OSError) as exc:
        return [], [Rejection(index, template.timestamp_field, f"bad timestamp: {exc}")]
    out: list[Measurement] = []
    rejections: list[Rejection] = []
    for m in template.mappings:
        if m.source not in reading or reading[m.source] is None:
            continue  # a reading carries only the fields the device measured this time
        raw = reading[m.source]
        values = raw if m.series else [raw]
        if not isinstance(values, list):
            rejections.append(Rejection(index, m.source, "expected a list"))
            continue
        offset_ms = 0.0
        for raw_value in values:
            if m.categories:
                if str(raw_value) not in m.categories:
                    rejections.append(Rejection(index, m.source, f"unknown category {str(raw_value)[:40]!r}"))
                    continue
                value = m.categories[str(raw_value)]
            elif isinstance(raw_value, bool) or not isinstance(raw_value, int | float):
                rejections.append(Rejection(index, m.source, "not a number"))
                continue
            else:
                value = CONVERSIONS[m.convert](float(raw_value))
            when = time if not m.series else datetime.fromtimestamp(time.timestamp() + offset_ms / 1000.0, UTC)
            if m.series:
                offset_ms += value
            out.append(Measurement(device_id, m.metric, value, when))
    return out, rejections
