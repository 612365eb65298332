"""Triton python backend for drug_activity: one TorchScript forward per batch of requests, ATOMS and BONDS (the dense
graph of services/drug/chem.py) in, ACTIVITY out (one prediction per ensemble member, in the series' activity units)."""

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
        atoms = [pb_utils.get_input_tensor_by_name(r, "ATOMS").as_numpy() for r in requests]
        bonds = [pb_utils.get_input_tensor_by_name(r, "BONDS").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in atoms]
        with torch.no_grad():
            out = self.model(
                torch.from_numpy(np.concatenate(atoms).astype(np.float32)),
                torch.from_numpy(np.concatenate(bonds).astype(np.uint8)),
            )
        out = out.numpy().astype(np.float32)
        responses, start = [], 0
        for size in sizes:
            tensor = pb_utils.Tensor("ACTIVITY", out[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += size
        return responses
