"""Imaging routes are plug-ins: a third route, declared in one module of its own, is selected, analysed and
reported through the same orchestration as the built-in ones."""

from __future__ import annotations

import datetime as dt
import sys
import textwrap

import numpy as np
import pytest
from medstream.events.v1 import common_pb2, dicom_pb2

from services.imaging import routes
from services.imaging.findings import outputs
from services.imaging.postprocess import Candidate
from services.imaging.routes import ROUTES, register, select

pytestmark = pytest.mark.unit

# The whole plug-in: what a team adding "liver lesion on CT abdomen" writes, and nothing else.
TOY_ROUTE_MODULE = textwrap.dedent("""
    from medstream.events.v1 import finding_pb2
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from services.common.model_contract import ModelContract, TensorSpec
    from services.imaging.dicom_outputs import Kind
    from services.imaging.preprocess import resample
    from services.imaging.routes import AlertRule, Coding, Route

    LIVER_LESION = ModelContract(
        "liver_lesion",
        inputs=(TensorSpec("PATCH", "float32", (1, 16, 16, 16)),),
        outputs=(TensorSpec("PROB", "float32", (1, 16, 16, 16)),),
        max_batch_size=8,
    )
    ROUTE = Route(
        name="liver-lesion", modality="CT", body_parts=("ABDOMEN", "LIVER"), contract=LIVER_LESION,
        patch=16, stride=12, prepare=lambda v: resample(v, (4.0, 4.0, 4.0), order=1, fill=-1024.0), keep=None,
        threshold=0.5, min_volume_mm3=100.0, kind="liver-lesion",
        code=Coding("http://hl7.org/fhir/sid/icd-10-cm", "K76.89", "Other specified diseases of liver"),
        report_code=Coding("http://loinc.org", "24558-9", "CT Abdomen"),
        evidence=Kind("liver lesion", codes.SCT.Lesion, codes.SCT.Liver, {"CT": Code("24558-9", "LN", "CT Abdomen")}),
        severity=lambda c: int(finding_pb2.SEVERITY_HIGH if c.diameter_mm >= 20 else finding_pb2.SEVERITY_LOW),
        alert=AlertRule("large-liver-lesion", finding_pb2.SEVERITY_HIGH, "Liver lesion of 2 cm or more"),
        display_window=lambda _v: (60.0, 400.0),
    )
""")


@pytest.fixture
def toy_route(tmp_path, monkeypatch):
    (tmp_path / "liver_lesion_route.py").write_text(TOY_ROUTE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(routes, "ROUTES", dict(ROUTES))  # the registry as it was, restored after the test
    import liver_lesion_route

    register(liver_lesion_route.ROUTE)  # the registry line
    yield routes.ROUTES["liver-lesion"]
    sys.modules.pop("liver_lesion_route", None)


def test_a_route_from_one_module_is_selected_and_reported(toy_route):
    assert select("CT", "ABDOMEN") == "liver-lesion"
    assert select("CT", "CHEST") == "lung-nodule" and select("MR", "BRAIN") == "stroke"  # built-ins unchanged
    series = dicom_pb2.DicomSeriesComplete(
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
        patient_id="p9",
        modality="CT",
        revision=1,
        route="liver-lesion",
    )
    lesion = Candidate((10.0, 20.0, 30.0), (5.0, 5.0, 5.0), 8.0, 24.8, 30.0, 0.93, 125)
    model = common_pb2.ModelRef(name="liver_lesion", version="1")
    out = outputs(series, toy_route, [lesion], model, dt.datetime(2026, 12, 5, tzinfo=dt.UTC))
    [finding] = out.findings
    assert finding.kind == "liver-lesion" and finding.code.code == "K76.89" and finding.severity >= 3
    assert [a.kind for a in out.alerts] == ["large-liver-lesion"]
    assert b"24558-9" in out.report.resource_json


def test_the_route_prepares_volumes_and_cuts_patches_its_contract_accepts(toy_route):
    from services.imaging.patches import tile
    from services.imaging.preprocess import Volume

    volume = Volume(np.zeros((20, 64, 64), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), (2.0, 2.0, 2.0), "CT", "")
    grid = toy_route.prepare(volume)
    toy_route.contract.check_inputs({"PATCH": tile(grid.array, toy_route.patch, toy_route.stride).patches})


def test_a_route_name_is_registered_once(toy_route):
    with pytest.raises(ValueError, match="already registered"):
        register(toy_route)
