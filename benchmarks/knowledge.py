"""Reproduce the figures quoted for the knowledge module: `python -m benchmarks.knowledge [--load]`.

Prints the build time of the in-memory indexes, the ranking latency for 3-, 6- and 10-phenotype cases and,
with --load, the time and rows of a full load into the Neo4j that MEDSTREAM_NEO4J_* points at.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from services.cds.knowledge.hpo import ontology
from services.cds.knowledge.loader import Scope, load
from services.cds.knowledge.phenotypes import default_matcher
from services.cds.knowledge.reasoning import default_index, rank
from services.common.config import Settings
from services.common.graph import Graph

MARFAN = (
    "HP:0001166",
    "HP:0001083",
    "HP:0002616",
    "HP:0000767",
    "HP:0000098",
    "HP:0002650",
    "HP:0001653",
    "HP:0004942",
    "HP:0000545",
    "HP:0001382",
)


def _timed(label: str, fn: Callable[[], object]) -> None:
    start = time.perf_counter()
    fn()
    print(f"{label}: {time.perf_counter() - start:.2f} s")


def measure_reasoning(repeats: int = 50) -> None:
    _timed("read HPO (hp.obo + phenotype.hpoa)", ontology)
    _timed("build text matcher", default_matcher)
    _timed("build ranking index", default_index)
    for n in (3, 6, 10):
        case = MARFAN[:n]
        rank(case)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            top = rank(case, k=10)
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        print(
            f"rank {n} phenotypes, top 10 with explanations: median {statistics.median(times):.1f} ms, "
            f"p95 {times[int(0.95 * len(times)) - 1]:.1f} ms; first: {top[0].disease_id} {top[0].name}"
        )


async def measure_load() -> None:
    graph = Graph.connect(Settings())
    try:
        report = await load(graph, Scope())
    finally:
        await graph.close()
    print(f"full load: {report.total_rows} rows in {sum(report.seconds.values()):.1f} s")
    for stage, rows in report.rows.items():
        print(f"  {stage}: {rows} rows, {report.seconds[stage]:.1f} s")
    print(f"  building rows: {report.seconds['build_rows']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--load", action="store_true", help="also time a full load into Neo4j")
    args = parser.parse_args()
    measure_reasoning()
    if args.load:
        asyncio.run(measure_load())


if __name__ == "__main__":
    main()
