"""`medstream alerts tail`: the reference subscriber to medstream.alerts.v1.

It shows what an app must do: join a consumer group, decode the protobuf value, filter, deduplicate by
alert_id (delivery is at least once), and commit only after handling each alert.
"""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict

from confluent_kafka import Consumer
from google.protobuf import json_format
from medstream.events.v1 import alert_pb2, finding_pb2

from services.common.config import Settings
from services.common.topics import ALERTS


def severity_rank(name: str) -> int:
    return finding_pb2.Severity.Value(f"SEVERITY_{name.upper()}")


def wanted(alert: alert_pb2.Alert, kinds: set[str], min_rank: int) -> bool:
    return (not kinds or alert.kind in kinds) and alert.severity >= min_rank


def tail(
    settings: Settings,
    kinds: set[str],
    min_severity: str,
    group: str,
    from_beginning: bool,
    max_alerts: int = 0,
    idle_timeout_s: float = 0.0,
) -> int:
    min_rank = severity_rank(min_severity)
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
        }
    )
    consumer.subscribe([ALERTS.name])
    seen: OrderedDict[str, None] = OrderedDict()  # recent alert ids, for at-least-once redeliveries
    printed = 0
    last_activity = time.monotonic()
    try:
        while not max_alerts or printed < max_alerts:
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout_s and time.monotonic() - last_activity > idle_timeout_s:
                    break
                continue
            if msg.error():
                continue
            last_activity = time.monotonic()
            alert = alert_pb2.Alert.FromString(msg.value())
            if alert.alert_id not in seen and wanted(alert, kinds, min_rank):
                sys.stdout.write(json.dumps(json_format.MessageToDict(alert)) + "\n")
                sys.stdout.flush()
                printed += 1
            seen[alert.alert_id] = None
            while len(seen) > 100_000:
                seen.popitem(last=False)
            consumer.commit(message=msg, asynchronous=False)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return printed
