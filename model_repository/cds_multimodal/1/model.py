"""Triton python backend for cds_multimodal: one TorchScript forward per batch of requests, plus explanations.

Inputs: NOTE_EMBEDDING (all-MiniLM-L6-v2, unit length, computed by the service) and LABS in raw units, NaN where
a lab was not ordered (order and units in MODEL_CARD.md). Outputs: PROBS, softmax over the classes in labels.json;
LAB_ATTRIBUTIONS and NO_LABS_PROBABILITY, integrated gradients of each row's top class over its labs, computed
only for requests that ask for them.
"""

import json
import os
import site
from functools import lru_cache
from pathlib import Path

# The stub's embedded interpreter is isolated (ignores PYTHONPATH): the local stack names its venv here.
for _dir in filter(None, os.environ.get("MEDSTREAM_TRITON_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_dir)

import numpy as np  # noqa: E402  (after the site dirs above)
import torch  # noqa: E402

EXPLANATIONS = ("LAB_ATTRIBUTIONS", "NO_LABS_PROBABILITY")
STEPS_PARAMETER = "integrated_gradients_steps"
DEFAULT_STEPS = 32


@lru_cache(maxsize=8)
def gauss_legendre(n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's default IG rule ("gausslegendre") on [0, 1]: (alphas, weights), weights summing to 1."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return torch.from_numpy(0.5 * (1.0 + nodes)).float(), torch.from_numpy(0.5 * weights).float()


def _probability(head: torch.nn.Module, note_embedding: torch.Tensor, lab_part: torch.Tensor, target: torch.Tensor):
    probs = torch.softmax(head(torch.cat([note_embedding, lab_part], dim=1)), dim=1)
    return probs.gather(1, target.unsqueeze(1)).squeeze(1)


def lab_attributions(
    model: torch.nn.Module,
    note_embedding: torch.Tensor,
    labs: torch.Tensor,
    target: torch.Tensor,
    n_steps: int = DEFAULT_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients of p(target) per row from "no labs ordered" to the row's panel, as
    training/cds/explain.py computes them with captum: (attributions [rows, labs], p(target | no labs) [rows]).

    A lab's attribution is that of its z-score plus that of its ordered flag; they sum to p(panel) - p(no labs).
    All rows and steps go through the head as one forward and one backward pass.
    """
    z, missing = model.standardise(labs)
    n_labs, rows = z.shape[1], z.shape[0]
    inputs = torch.cat([z, missing], dim=1)
    baseline = torch.cat([torch.zeros_like(z), torch.ones_like(missing)], dim=1)
    alphas, weights = gauss_legendre(n_steps)
    # Step-major like captum: n_steps blocks of `rows` rows.
    path = (baseline + alphas.view(-1, 1, 1) * (inputs - baseline)).reshape(n_steps * rows, -1)
    with torch.enable_grad():
        path.requires_grad_(True)
        p = _probability(model.head, note_embedding.repeat(n_steps, 1), path, target.repeat(n_steps))
        (grads,) = torch.autograd.grad(p.sum(), path)
    mean_grads = (grads.view(n_steps, rows, -1) * weights.view(-1, 1, 1)).sum(dim=0)
    attributions = mean_grads * (inputs - baseline)
    with torch.no_grad():
        no_labs = _probability(model.head, note_embedding, baseline, target)
    return attributions[:, :n_labs] + attributions[:, n_labs:], no_labs


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        torch.set_num_threads(1)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        extra = {"labels.json": ""}
        self.model = torch.jit.load(str(version_dir / "model.pt"), map_location="cpu", _extra_files=extra).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)  # explanations need gradients for the inputs only
        config = json.loads(args["model_config"])
        labels = json.loads(extra["labels.json"])
        n_labs = int(self.model.lab_mean.shape[0])
        expected = {"PROBS": len(labels), "LAB_ATTRIBUTIONS": n_labs, "NO_LABS_PROBABILITY": 1}
        self.dtypes = {}
        for name, width in expected.items():
            output = pb_utils.get_output_config_by_name(config, name)
            if output is None and name in EXPLANATIONS:
                continue  # a config without explanations still serves PROBS
            if output is None or int(output["dims"][0]) != width:
                raise pb_utils.TritonModelException(f"{name}: the model gives {width} values, config says {output}")
            self.dtypes[name] = pb_utils.triton_string_to_numpy(output["data_type"])
        steps = config.get("parameters", {}).get(STEPS_PARAMETER, {}).get("string_value", str(DEFAULT_STEPS))
        self.n_steps = int(steps)
        if self.n_steps < 1:
            raise pb_utils.TritonModelException(f"{STEPS_PARAMETER} must be at least 1, got {steps}")

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        # The dynamic batcher hands over several requests: run them as one forward pass.
        notes = [pb_utils.get_input_tensor_by_name(r, "NOTE_EMBEDDING").as_numpy() for r in requests]
        labs = [pb_utils.get_input_tensor_by_name(r, "LABS").as_numpy() for r in requests]
        bounds = np.cumsum([0, *(a.shape[0] for a in notes)])
        embedding = torch.from_numpy(np.concatenate(notes).astype(np.float32))
        raw = torch.from_numpy(np.concatenate(labs).astype(np.float32))
        with torch.no_grad():
            probs = self.model(embedding, raw)
        outputs = {"PROBS": probs.numpy()}

        # Explanations only for the requests that asked: one integrated-gradients pass over all their rows.
        asked = [bool(self.dtypes.keys() & set(EXPLANATIONS) & set(r.requested_output_names())) for r in requests]
        if any(asked):
            rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i, a in enumerate(asked) if a])
            index = torch.from_numpy(rows)
            attributions, no_labs = lab_attributions(
                self.model, embedding[index], raw[index], probs[index].argmax(dim=1), self.n_steps
            )
            outputs["LAB_ATTRIBUTIONS"] = np.full((len(raw), attributions.shape[1]), np.nan, dtype=np.float32)
            outputs["NO_LABS_PROBABILITY"] = np.full((len(raw), 1), np.nan, dtype=np.float32)
            outputs["LAB_ATTRIBUTIONS"][rows] = attributions.numpy()
            outputs["NO_LABS_PROBABILITY"][rows, 0] = no_labs.numpy()

        responses = []
        for i, wants in enumerate(asked):
            names = ["PROBS", *(n for n in EXPLANATIONS if n in self.dtypes)] if wants else ["PROBS"]
            tensors = [pb_utils.Tensor(n, outputs[n][bounds[i] : bounds[i + 1]].astype(self.dtypes[n])) for n in names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
