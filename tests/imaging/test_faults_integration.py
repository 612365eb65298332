"""Imaging when Triton and Neo4j go away for a while (the connections cut by a proxy in front of the real servers):
the worker waits and retries, a crash of the worker meanwhile loses nothing, and when they come back the series is
reported once, with its findings in the graph once."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

from services.cli.dcmtk import dcmtk
from services.common.topic_reader import end_offsets
from services.common.topics import FHIR_WRITEBACK, FINDINGS
from tests.conftest import ServiceProcess, running, wait_for
from tests.faults import TcpProxy
from tests.imaging.helpers import findings_for, graph_counts, reports_for, storescu
from training.imaging.synthetic_ct import generate_ct, write_series

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which(dcmtk("storescu")) is None, reason="dcmtk is not installed (scripts/bootstrap.sh)"),
]
HTTP, DIMSE, WORKER, WRITER, TRITON_PROXY, NEO4J_PROXY = 18144, 18145, 18146, 18147, 18148, 18149
QUIET_S = 3


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition("//")[2].rpartition(":")
    return host, int(port)


@pytest.fixture(scope="module")
def faulty(local_stack, tmp_path_factory) -> Iterator[dict]:
    logs = local_stack.state_dir / "logs"
    blobs = tmp_path_factory.mktemp("blobs")
    behind_proxies = {
        "MEDSTREAM_TRITON_GRPC_URL": f"127.0.0.1:{TRITON_PROXY}",
        "MEDSTREAM_NEO4J_URI": f"bolt://127.0.0.1:{NEO4J_PROXY}",
    }
    worker_env = {**behind_proxies, "MEDSTREAM_IMAGING_QUIET_S": str(QUIET_S)}
    procs = {
        "imaging-gateway": ServiceProcess(
            "imaging-gateway",
            HTTP,
            logs,
            {"MEDSTREAM_DICOM_DIMSE_PORT": str(DIMSE), "MEDSTREAM_DICOM_BLOB_DIR": str(blobs)},
        ),
        "imaging": ServiceProcess("imaging", WORKER, logs, worker_env),
        "graph-writer": ServiceProcess("graph-writer", WRITER, logs, behind_proxies),
    }
    with (
        TcpProxy(TRITON_PROXY, _address(local_stack.triton_grpc_url)) as triton,
        TcpProxy(NEO4J_PROXY, _address(local_stack.neo4j_uri)) as neo4j,
        running(procs, 120),
    ):
        yield {"procs": procs, "triton": triton, "neo4j": neo4j, "worker_env": worker_env, "logs": logs}


def test_triton_and_neo4j_away_then_back_nothing_lost_nothing_duplicated(local_stack, faulty, tmp_path):
    ct = generate_ct(int(time.time()) % 100_000 + 600_000, n_nodules=2)
    write_series(ct, tmp_path / "ct")
    (tmp_path / "ct" / "ground_truth.json").unlink(missing_ok=True)
    since = end_offsets(local_stack, FHIR_WRITEBACK.name)
    since_findings = end_offsets(local_stack, FINDINGS.name)

    faulty["triton"].cut()
    faulty["neo4j"].cut()
    storescu(tmp_path / "ct", DIMSE)  # the gateway needs neither: the sender is told Success
    time.sleep(QUIET_S + 12)  # the series completes and waits in analysis
    procs = faulty["procs"]
    assert procs["imaging"].alive()
    assert not reports_for(local_stack, since, ct.patient_id)

    # The worker crashes while waiting; its replacement picks the uncommitted series up again.
    procs["imaging"].kill()
    procs["imaging"] = ServiceProcess("imaging", WORKER, faulty["logs"], faulty["worker_env"]).start()
    wait_for(procs["imaging"].alive, 60, what="restarted imaging worker /healthz")
    time.sleep(5)
    assert not reports_for(local_stack, since, ct.patient_id)

    faulty["triton"].restore()
    faulty["neo4j"].restore()
    wait_for(lambda: reports_for(local_stack, since, ct.patient_id), 180, what="report after recovery")
    wait_for(procs["imaging"].ready, 60, what="imaging /readyz after recovery")
    time.sleep(QUIET_S + 5)  # anything duplicated would have arrived by now
    [report] = reports_for(local_stack, since, ct.patient_id)
    findings = findings_for(local_stack, since_findings, ct.patient_id)
    assert len(findings) == len(report["contained"])
    assert len({f.finding_id for f in findings}) == len(findings)

    def settled() -> dict[str, int]:
        counts = graph_counts(local_stack, ct.patient_id)
        return counts if counts.get("instances") == 80 and counts.get("findings") == len(findings) else {}

    counts = wait_for(settled, 90, what="study, series, instances and findings in Neo4j")
    assert counts["upper"] == 2 and counts["r3"] == 80 and counts["r4"] == len(findings)
