"""A model's contract: its Triton name, input and output tensors, batch limit and version policy.

Each model's contract is written once, next to the service that calls it (`services/<service>/contract.py`, or
the imaging route's module), together with the numbers both sides must agree on (window, patch size, threshold,
classes). The worker checks what it sends against it, training builds and exports against it, and
tests/test_model_contracts.py checks every `model_repository/<name>/config.pbtxt` against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Triton's data_type names for the numpy dtypes the models use (Triton's model_config.proto DataType).
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}


class ContractViolation(ValueError):
    """Arrays that do not match the model's contract: a bug in the caller, never worth sending to Triton."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    dims: tuple[int, ...]  # one row's shape: Triton's dims, without the batch dimension

    @property
    def triton_dtype(self) -> str:
        return TRITON_DTYPES[self.dtype]

    def check(self, array: np.ndarray) -> None:
        if array.dtype != np.dtype(self.dtype) or tuple(array.shape[1:]) != self.dims:
            raise ContractViolation(
                f"{self.name}: expected rows of {self.dtype}{list(self.dims)}, got {array.dtype}{list(array.shape)}"
            )


@dataclass(frozen=True, slots=True)
class ModelContract:
    name: str  # the folder in model_repository/ and the name Triton serves
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # rows per request; larger calls are split (TritonClient.infer_many)
    # Which versions Triton serves: the newest only. Outputs name the version that answered (ModelRef), and ids
    # derived from a result include it, so a new version is a new result, never a silent change of an old one.
    version_policy: str = "latest 1"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    def check_inputs(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Raise ContractViolation unless `arrays` are exactly this model's inputs, as rows of the declared shape."""
        if sorted(arrays) != sorted(self.input_names):
            raise ContractViolation(f"{self.name} takes {self.input_names}, got {sorted(arrays)}")
        for spec in self.inputs:
            spec.check(arrays[spec.name])

    def check_outputs(self, arrays: Mapping[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            self.output(name).check(array)

    def config_differences(self, config_text: str) -> list[str]:
        """What a Triton config.pbtxt declares differently from this contract (empty: they agree)."""
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        config = text_format.Parse(config_text, model_config_pb2.ModelConfig())
        problems = []
        if config.name != self.name:
            problems.append(f"name {config.name!r} is not {self.name!r}")
        if config.max_batch_size != self.max_batch_size:
            problems.append(f"max_batch_size {config.max_batch_size} is not {self.max_batch_size}")
        for kind, declared, specs in (("input", config.input, self.inputs), ("output", config.output, self.outputs)):
            found = {t.name: (model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in declared}
            wanted = {t.name: (t.triton_dtype, t.dims) for t in specs}
            if found != wanted:
                problems.append(f"{kind}s {found} are not {wanted}")
        policy = config.version_policy  # absent: Triton serves the latest 1
        kind = policy.WhichOneof("policy_choice") or "latest"
        declared = f"{kind} {policy.latest.num_versions or 1}" if kind == "latest" else kind
        if declared != self.version_policy:
            problems.append(f"version_policy {declared!r} is not {self.version_policy!r}")
        return problems
