"""Triton python backend for glycaemia_risk: one TorchScript forward per batch of requests."""

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
        self.model = torch.jit.load(str(version_dir / "model.pt"), map_location="cpu").eval()
        self.output_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(json.loads(args["model_config"]), "RISK")["data_type"]
        )

    def execute(self, requests):
        # The dynamic batcher hands over several requests: run them as one forward pass.
        arrays = [pb_utils.get_input_tensor_by_name(r, "CGM").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        with torch.no_grad():
            risk = self.model(torch.from_numpy(np.concatenate(arrays).astype(np.float32))).numpy()
        responses, start = [], 0
        for size in sizes:
            out = pb_utils.Tensor("RISK", risk[start : start + size].astype(self.output_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += size
        return responses
