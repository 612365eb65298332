"""Triton python backend for adr_risk: one TorchScript forward per batch of requests, RISK and ATTENTION out."""

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
        self.model = torch.jit.load(str(version_dir / "model.pt"), map_location="cpu").eval()

    def execute(self, requests):
        # The dynamic batcher hands over several requests: run them as one forward pass.
        sequences = [pb_utils.get_input_tensor_by_name(r, "SEQUENCE").as_numpy() for r in requests]
        statics = [pb_utils.get_input_tensor_by_name(r, "STATIC").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in statics]
        with torch.no_grad():
            risk, attention = self.model(
                torch.from_numpy(np.concatenate(sequences).astype(np.float32)),
                torch.from_numpy(np.concatenate(statics).astype(np.float32)),
            )
        risk, attention = risk.numpy().astype(np.float32), attention.numpy().astype(np.float32)
        responses, start = [], 0
        for size in sizes:
            outputs = [
                pb_utils.Tensor("RISK", risk[start : start + size]),
                pb_utils.Tensor("ATTENTION", attention[start : start + size]),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start += size
        return responses
