"""Triton python backend for a 3D segmentation U-Net (TorchScript): one forward per dynamic batch of patches.
Shared by lung_nodule and stroke_lesion (stroke_lesion/1/model.py is a symlink to this file).

Input PATCH [1, P, P, P] (the preprocessed volume cut into cubes by the imaging service), output PROB, the
lesion probability per voxel. The patch size and grid come from metadata.json inside model.pt.
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
        torch.set_num_threads(int(os.environ.get("MEDSTREAM_TRITON_TORCH_THREADS", "2")))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        extra = {"metadata.json": ""}
        self.model = torch.jit.load(str(version_dir / "model.pt"), map_location="cpu", _extra_files=extra).eval()
        metadata = json.loads(extra["metadata.json"])
        config = json.loads(args["model_config"])
        patch = [int(d) for d in pb_utils.get_input_config_by_name(config, "PATCH")["dims"]]
        if patch[1:] != [int(metadata["patch"])] * 3:
            raise pb_utils.TritonModelException(f"model.pt was trained on {metadata['patch']}^3, config says {patch}")

    def execute(self, requests):
        # The dynamic batcher hands over several requests: run them as one forward pass.
        patches = [pb_utils.get_input_tensor_by_name(r, "PATCH").as_numpy() for r in requests]
        sizes = [p.shape[0] for p in patches]
        with torch.no_grad():
            probs = self.model(torch.from_numpy(np.concatenate(patches).astype(np.float32))).numpy()
        responses, start = [], 0
        for size in sizes:
            out = pb_utils.Tensor("PROB", probs[start : start + size].astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += size
        return responses
