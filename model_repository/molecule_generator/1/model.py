"""Triton python backend for molecule_generator: the TorchScript Generator's own sampler (`sample`), once per request.

Each request is sampled on its own, with torch seeded from the request's first SEED row, so a request's molecules
depend only on that request (its first seed, its row count and its GUIDANCE rows), never on what the dynamic batcher
grouped it with. Rows of one request share that seed's random stream: ask for n molecules in one request of n rows.
"""

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
        responses = []
        for request in requests:
            seeds = pb_utils.get_input_tensor_by_name(request, "SEED").as_numpy().astype(np.int64)
            guidance = pb_utils.get_input_tensor_by_name(request, "GUIDANCE").as_numpy().astype(np.float32)
            # no torch.no_grad() needed: the sampler turns gradients on only for the guidance regressor
            atom_types, bond_types = self.model.sample(torch.from_numpy(seeds), torch.from_numpy(guidance))
            outputs = [
                pb_utils.Tensor("ATOM_TYPES", atom_types.numpy().astype(np.uint8)),
                pb_utils.Tensor("BOND_TYPES", bond_types.numpy().astype(np.uint8)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
