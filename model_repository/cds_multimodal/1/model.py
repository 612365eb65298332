"""Triton python backend for cds_multimodal: one TorchScript forward per batch of requests.

Inputs: NOTE_EMBEDDING (all-MiniLM-L6-v2, unit length, computed by the service) and LABS in raw units, NaN where
a lab was not ordered (order and units in MODEL_CARD.md). Output: PROBS, softmax over the classes in labels.json.
"""

import json
import os
import site
from pathlib import Path

# The stub's embedded interpreter is isolated (ignores PYTHONPATH): the local stack names its venv here.
for _dir in filter(None, os.environ.get("MEDSTREAM_TRITON_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_dir)

import numpy as np  # noqa: E402  (after the site dirs above)
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        torch.set_num_threads(1)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        extra = {"labels.json": ""}
        self.model = torch.jit.load(str(version_dir / "model.pt"), map_location="cpu", _extra_files=extra).eval()
        output = pb_utils.get_output_config_by_name(json.loads(args["model_config"]), "PROBS")
        labels = json.loads(extra["labels.json"])
        if len(labels) != int(output["dims"][0]):
            raise pb_utils.TritonModelException(f"model has {len(labels)} classes, config says {output['dims']}")
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    def execute(self, requests):
        # The dynamic batcher hands over several requests: run them as one forward pass.
        notes = [pb_utils.get_input_tensor_by_name(r, "NOTE_EMBEDDING").as_numpy() for r in requests]
        labs = [pb_utils.get_input_tensor_by_name(r, "LABS").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in notes]
        with torch.no_grad():
            probs = self.model(
                torch.from_numpy(np.concatenate(notes).astype(np.float32)),
                torch.from_numpy(np.concatenate(labs).astype(np.float32)),
            ).numpy()
        responses, start = [], 0
        for size in sizes:
            out = pb_utils.Tensor("PROBS", probs[start : start + size].astype(self.output_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += size
        return responses
