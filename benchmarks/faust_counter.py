"""A faust worker that counts records on a topic and writes the rate it saw: the faust side of bench-spine."""

from __future__ import annotations

import json
import os
import sys
import time

from faust.worker import Worker

from services.common.config import get_settings
from services.common.kafka import make_faust_app
from services.common.telemetry import logging_config

TOPIC, EXPECTED, OUT = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app = make_faust_app(f"bench-{os.getpid()}", get_settings())
source = app.topic(TOPIC, key_serializer="raw", value_serializer="raw")
state = {"n": 0, "first": 0.0}


@app.agent(source)
async def count(stream):  # type: ignore[no-untyped-def]
    async for _ in stream:
        if state["n"] == 0:
            state["first"] = time.perf_counter()
        state["n"] += 1
        if state["n"] == EXPECTED:
            elapsed = time.perf_counter() - state["first"]
            with open(OUT, "w") as f:
                json.dump({"records": EXPECTED, "seconds": elapsed}, f)
            os._exit(0)  # the measurement is done; skip the graceful shutdown


if __name__ == "__main__":
    Worker(
        app, loglevel="WARNING", logging_config=logging_config("bench", "WARNING"), redirect_stdouts=False
    ).execute_from_commandline()
