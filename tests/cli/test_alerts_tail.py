"""The reference subscriber: consumer group, filters, and deduplication of redelivered alerts."""

import json

import pytest
from medstream.events.v1 import alert_pb2, finding_pb2

from services.cli.alerts import tail
from services.common.kafka import EventProducer
from services.common.topics import ALERTS
from tests.conftest import unique

pytestmark = pytest.mark.integration


def test_tail_filters_by_kind_and_severity_and_drops_duplicates(local_stack, capsys):
    run = unique("tail")
    alerts = [
        alert_pb2.Alert(
            alert_id=f"{run}-1", patient_id=f"{run}-p", kind="tachycardia", severity=finding_pb2.SEVERITY_MEDIUM
        ),
        alert_pb2.Alert(
            alert_id=f"{run}-2", patient_id=f"{run}-p", kind="desaturation", severity=finding_pb2.SEVERITY_HIGH
        ),
        alert_pb2.Alert(
            alert_id=f"{run}-3", patient_id=f"{run}-p", kind="tachycardia", severity=finding_pb2.SEVERITY_LOW
        ),
        alert_pb2.Alert(
            alert_id=f"{run}-4", patient_id=f"{run}-p", kind="tachycardia", severity=finding_pb2.SEVERITY_HIGH
        ),
    ]
    producer = EventProducer(local_stack, "test")
    for a in [*alerts, alerts[3]]:  # the last one redelivered
        producer.send_sync(ALERTS.name, a.patient_id.encode(), a)
    producer.close()
    group = unique("tail-group")  # a new subscriber app, reading what is retained
    printed = tail(
        local_stack, kinds={"tachycardia"}, min_severity="MEDIUM", group=group, from_beginning=True, idle_timeout_s=5.0
    )
    ids = [json.loads(line)["alertId"] for line in capsys.readouterr().out.splitlines()]
    mine = [i for i in ids if i.startswith(run)]
    assert mine == [f"{run}-1", f"{run}-4"] and printed >= 2
    # the group committed: a second run of the same subscriber sees nothing new
    assert (
        tail(
            local_stack,
            kinds={"tachycardia"},
            min_severity="MEDIUM",
            group=group,
            from_beginning=True,
            idle_timeout_s=3.0,
        )
        == 0
    )
