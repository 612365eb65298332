"""`make demo`'s imaging part on the real stack: a synthetic chest CT through storescu, the gateway, the imaging
worker on Triton and the dispatcher, ending with the SEG and SR in a PACS (dcmtk's storescp)."""

from __future__ import annotations

import pytest
from rich.console import Console

from services.cli.demo import run_imaging_demo

pytestmark = pytest.mark.integration


def test_imaging_demo_sends_a_ct_and_its_seg_and_sr_reach_the_demo_pacs(local_stack):
    summary = run_imaging_demo(local_stack, Console(quiet=True), 180)
    assert summary["ok"], summary
    # The SR always; a SEG and a key image when the model found a nodule (it usually finds the larger one).
    found = bool(summary["findings"])
    assert summary["received_by_demo_pacs"] == (["SEG", "SR"] if found else ["SR"])
    kinds = [e.split(":", 1)[0] for e in summary["evidence"]]
    assert kinds == (["dicom-seg", "dicom-sr", "key-image"] if found else ["dicom-sr"])
    assert "not for clinical use" in summary["report_conclusion"]
