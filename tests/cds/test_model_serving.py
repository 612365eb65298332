"""The served cds_multimodal: integrated-gradients explanations in model.py agree with explain.py (captum)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import types
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from services.cli.stack import TRITON_HTTP_PORT
from services.common.triton import TritonClient
from tests.conftest import wait_for
from training.cds.explain import explain
from training.cds.network import CdsMultimodal, lab_statistics
from training.cds.training import MODEL_NAME

FOLDER = Path(__file__).resolve().parents[2] / "model_repository" / MODEL_NAME
CONFIG = text_format.Parse((FOLDER / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
N_LABS, N_CLASSES = next(i.dims[0] for i in CONFIG.input if i.name == "LABS"), 6
LOG_MASK = [i % 3 == 0 for i in range(N_LABS)]  # which labs the toy models standardise on the log scale
EXPLANATIONS = ["PROBS", "LAB_ATTRIBUTIONS", "NO_LABS_PROBABILITY"]


def _served_module() -> types.ModuleType:
    """1/model.py as a module: its math imports without triton_python_backend_utils."""
    spec = importlib.util.spec_from_file_location("cds_multimodal_model", FOLDER / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # No __pycache__ in 1/: Triton polls the repository and would reload the live model for it.
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


served = _served_module()


def _model(seed: int = 0, n_classes: int = N_CLASSES) -> torch.jit.ScriptModule:
    """A small, randomly initialised CdsMultimodal, scripted as training.py ships it."""
    torch.manual_seed(seed)
    labs = np.abs(np.random.default_rng(seed).normal(5, 2, size=(50, N_LABS))).astype(np.float32) + 0.1
    mean, std = lab_statistics(labs, LOG_MASK)
    model = CdsMultimodal(mean, std, LOG_MASK, n_classes, hidden=32).eval()
    with torch.no_grad():  # as decisive as a trained head: labs move probabilities by tenths, not thousandths
        for parameter in model.head.parameters():
            parameter.mul_(3.0)
    return torch.jit.script(model)


def _inputs(rows: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-length embeddings and panels with different labs missing per row (row 0: none, last row: all)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(rows, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labs = (np.abs(rng.normal(5, 3, size=(rows, N_LABS))) + 0.1).astype(np.float32)
    labs[1:][rng.random((rows - 1, N_LABS)) < 0.4] = np.nan
    labs[-1] = np.nan
    return torch.from_numpy(emb), torch.from_numpy(labs)


def _captum(model: torch.jit.ScriptModule, emb: torch.Tensor, labs: torch.Tensor, target: int) -> torch.Tensor:
    """One row's per-lab attributions the way training/cds/explain.py asks captum for them."""
    z, missing = model.standardise(labs)

    def probability(lab_part: torch.Tensor) -> torch.Tensor:
        features = torch.cat([emb.expand(lab_part.shape[0], -1), lab_part], dim=1)
        return torch.softmax(model.head(features), dim=1)[:, target]

    inputs = torch.cat([z, missing], dim=1)
    baseline = torch.cat([torch.zeros_like(z), torch.ones_like(missing)], dim=1)
    attributions = IntegratedGradients(probability).attribute(inputs, baselines=baseline, n_steps=32)
    return (attributions[0, :N_LABS] + attributions[0, N_LABS:]).detach()


@pytest.mark.unit
def test_attributions_equal_captum_integrated_gradients_as_explain_computes_them() -> None:
    model, labels = _model(), [f"class{i}" for i in range(N_CLASSES)]
    emb, labs = _inputs(rows=6)
    with torch.no_grad():
        probs = model(emb, labs)
    top = probs.argmax(dim=1)
    attributions, no_labs = served.lab_attributions(model, emb, labs, top, n_steps=32)
    assert attributions.shape == (6, N_LABS) and no_labs.shape == (6,)
    assert attributions.abs().max() > 0.05  # the comparisons below are not between near-zeros
    for row in range(6):
        one = slice(row, row + 1)
        assert torch.allclose(attributions[row], _captum(model, emb[one], labs[one], int(top[row])), atol=1e-5)
        # explain() itself: the same class, baseline and contributions (it lists the ordered labs only).
        expected = explain(model, emb[row].numpy(), labs[row].numpy(), labels, top_k=N_LABS, n_steps=32)
        assert expected.label == labels[int(top[row])]
        assert abs(float(no_labs[row]) - expected.labs_baseline_probability) < 1e-5
        ordered = attributions[row][~torch.isnan(labs[row])]
        np.testing.assert_allclose(sorted(ordered.tolist()), sorted(c.contribution for c in expected.labs), atol=1e-5)
    assert torch.all(attributions[torch.isnan(labs)] == 0)  # a lab not ordered sits at the baseline
    assert torch.allclose(no_labs[-1], probs[-1, top[-1]], atol=1e-6)  # no labs at all: nothing to explain


@pytest.mark.unit
@pytest.mark.parametrize("n_steps", [32, 64])
def test_attributions_add_up_to_probability_minus_no_labs_probability(n_steps: int) -> None:
    model = _model(seed=3)
    emb, labs = _inputs(rows=8, seed=4)
    with torch.no_grad():
        probs = model(emb, labs)
    top = probs.argmax(dim=1)
    attributions, no_labs = served.lab_attributions(model, emb, labs, top, n_steps=n_steps)
    gap = probs.gather(1, top.unsqueeze(1)).squeeze(1) - no_labs
    assert gap.abs().max() > 0.2
    # Completeness holds up to the quadrature error over the ReLU kinks (about 0.005 here, gaps up to 0.37).
    assert torch.allclose(attributions.sum(dim=1), gap, atol=1e-2)


@pytest.mark.unit
def test_one_batched_pass_equals_row_by_row() -> None:
    model = _model(seed=5)
    emb, labs = _inputs(rows=5, seed=6)
    target = torch.tensor([0, 1, 2, 3, 4])
    together, no_labs = served.lab_attributions(model, emb, labs, target)
    for row in range(5):
        alone, alone_no_labs = served.lab_attributions(
            model, emb[row : row + 1], labs[row : row + 1], target[row : row + 1]
        )
        assert torch.allclose(together[row], alone[0], atol=1e-6)
        assert torch.allclose(no_labs[row], alone_no_labs[0], atol=1e-7)


@pytest.mark.unit
def test_config_declares_the_outputs_model_py_gives() -> None:
    dims = {o.name: list(o.dims) for o in CONFIG.output}
    assert dims == {"PROBS": [24], "LAB_ATTRIBUTIONS": [N_LABS], "NO_LABS_PROBABILITY": [1]}
    assert list(served.EXPLANATIONS) == ["LAB_ATTRIBUTIONS", "NO_LABS_PROBABILITY"]
    assert int(CONFIG.parameters[served.STEPS_PARAMETER].string_value) == served.DEFAULT_STEPS


class _Request:
    def __init__(self, emb: np.ndarray, labs: np.ndarray, outputs: list[str]) -> None:
        self.inputs = {"NOTE_EMBEDDING": emb, "LABS": labs}
        self.outputs = outputs

    def requested_output_names(self) -> list[str]:
        return self.outputs


def _fake_pb_utils() -> types.ModuleType:
    """The parts of triton_python_backend_utils that model.py uses, over plain numpy."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self.name, self.array = name, array

    class InferenceResponse:
        def __init__(self, output_tensors: list[Tensor]) -> None:
            self.outputs = {t.name: t.array for t in output_tensors}

    pb.Tensor = Tensor  # type: ignore[attr-defined]
    pb.InferenceResponse = InferenceResponse  # type: ignore[attr-defined]
    pb.TritonModelException = RuntimeError  # type: ignore[attr-defined]
    pb.get_input_tensor_by_name = lambda r, name: types.SimpleNamespace(as_numpy=lambda: r.inputs[name])  # type: ignore[attr-defined]
    pb.get_output_config_by_name = lambda c, name: next((o for o in c["output"] if o["name"] == name), None)  # type: ignore[attr-defined]
    pb.triton_string_to_numpy = lambda t: {"TYPE_FP32": np.float32}[t]  # type: ignore[attr-defined]
    return pb


@pytest.mark.unit
def test_execute_explains_only_the_requests_that_ask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 24-class model written as training.py writes it, served with the real config.pbtxt.
    model = _model(seed=7, n_classes=24)
    (tmp_path / "1").mkdir()
    labels = json.dumps([f"class{i}" for i in range(24)])
    torch.jit.save(model, str(tmp_path / "1" / "model.pt"), _extra_files={"labels.json": labels})
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    config = json_format.MessageToDict(CONFIG, preserving_proto_field_name=True)
    instance = served.TritonPythonModel()
    instance.initialize({"model_repository": str(tmp_path), "model_version": "1", "model_config": json.dumps(config)})

    emb, labs = (t.numpy() for t in _inputs(rows=5, seed=8))
    requests = [
        _Request(emb[:2], labs[:2], ["PROBS"]),
        _Request(emb[2:4], labs[2:4], EXPLANATIONS),
        _Request(emb[4:], labs[4:], ["PROBS", "NO_LABS_PROBABILITY"]),
    ]
    plain, explained, partly = instance.execute(requests)
    assert set(plain.outputs) == {"PROBS"} and set(explained.outputs) == set(partly.outputs) == set(EXPLANATIONS)
    assert explained.outputs["LAB_ATTRIBUTIONS"].shape == (2, N_LABS)
    assert explained.outputs["NO_LABS_PROBABILITY"].shape == (2, 1)
    with torch.no_grad():
        probs = model(torch.from_numpy(emb), torch.from_numpy(labs))
    np.testing.assert_array_equal(np.concatenate([r.outputs["PROBS"] for r in (plain, explained, partly)]), probs)
    attributions, no_labs = served.lab_attributions(
        model, torch.from_numpy(emb[2:]), torch.from_numpy(labs[2:]), probs[2:].argmax(dim=1)
    )
    np.testing.assert_allclose(explained.outputs["LAB_ATTRIBUTIONS"], attributions[:2], atol=1e-6)
    np.testing.assert_allclose(partly.outputs["NO_LABS_PROBABILITY"][:, 0], no_labs[2:], atol=1e-6)


def _panels(model: torch.jit.ScriptModule, rows: int, seed: int) -> np.ndarray:
    """Raw lab values drawn around the model's own training statistics, about a third not ordered."""
    rng = np.random.default_rng(seed)
    value = model.lab_mean.detach().numpy() + rng.normal(0, 1.5, (rows, N_LABS)) * model.lab_std.detach().numpy()
    labs = np.where(model.log_mask.numpy(), np.exp(value), value).astype(np.float32)
    labs[rng.random(labs.shape) < 0.35] = np.nan
    return labs


@pytest.mark.integration
def test_live_triton_serves_probabilities_and_explanations_from_one_version(local_stack) -> None:
    rng = np.random.default_rng(9)
    emb = rng.normal(size=(3, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labs = _panels(torch.jit.load(str(FOLDER / "1" / "model.pt"), map_location="cpu"), rows=3, seed=10)
    wait_for(lambda: _served_outputs() >= set(EXPLANATIONS), timeout_s=60, what=f"{MODEL_NAME} with explanations")

    async def go():
        client = TritonClient(local_stack.triton_grpc_url, "test")
        try:
            inputs = {"NOTE_EMBEDDING": emb, "LABS": labs}
            return await client.infer_many(MODEL_NAME, inputs, EXPLANATIONS), await client.infer(
                MODEL_NAME, inputs, ["PROBS"]
            )
        finally:
            await client.close()

    (outputs, version), plain = asyncio.run(go())
    assert outputs["PROBS"].shape == (3, 24) and outputs["LAB_ATTRIBUTIONS"].shape == (3, N_LABS)
    assert outputs["NO_LABS_PROBABILITY"].shape == (3, 1) and set(plain.outputs) == {"PROBS"}
    np.testing.assert_array_equal(plain.outputs["PROBS"], outputs["PROBS"])

    extra = {"labels.json": ""}
    model = torch.jit.load(str(FOLDER / version / "model.pt"), map_location="cpu", _extra_files=extra).eval()
    with torch.no_grad():
        probs = model(torch.from_numpy(emb), torch.from_numpy(labs))
    top = probs.argmax(dim=1)
    attributions, no_labs = served.lab_attributions(model, torch.from_numpy(emb), torch.from_numpy(labs), top)
    np.testing.assert_allclose(outputs["PROBS"], probs.numpy(), atol=1e-6)
    np.testing.assert_allclose(outputs["LAB_ATTRIBUTIONS"], attributions.numpy(), atol=1e-5)
    np.testing.assert_allclose(outputs["NO_LABS_PROBABILITY"][:, 0], no_labs.numpy(), atol=1e-6)
    assert np.all(outputs["LAB_ATTRIBUTIONS"][np.isnan(labs)] == 0)


def _served_outputs() -> set[str]:
    """The outputs of the ready cds_multimodal (the repository is polled every few seconds)."""
    base = f"http://127.0.0.1:{TRITON_HTTP_PORT}/v2/models/{MODEL_NAME}"
    try:
        if httpx.get(f"{base}/ready", timeout=2.0).status_code != 200:
            return set()
        return {o["name"] for o in httpx.get(f"{base}/config", timeout=2.0).json().get("output", [])}
    except httpx.HTTPError:
        return set()
