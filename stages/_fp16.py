"""fp16 for GPUs: an fp16 copy of the fused student, and IO-bound sessions.

Half precision only pays on a GPU (tensor cores); onnxruntime's CPU provider has few fp16 kernels.
Inputs and outputs stay int64/float32 (keep_io_types) so callers feed the same arrays.
IO binding places inputs and outputs on the session's device once per call instead of letting
onnxruntime copy through host buffers it allocates itself ("ORT on GPU slower than PyTorch
without IO binding" is the known trap).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def convert_to_fp16(src: Path, dst: Path) -> dict[str, int]:
    """Write an fp16 copy of an fp32 ONNX model; returns initializer counts by element type."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    counts = {"float16": 0, "float32": 0}
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT16:
            counts["float16"] += 1
        elif tensor.data_type == onnx.TensorProto.FLOAT:
            counts["float32"] += 1
    return counts


def io_bound(session: ort.InferenceSession, output: str = "logits") -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A predict function that binds inputs and the output on the session's first provider's
    device (cuda:0 with the CUDA provider, cpu otherwise)."""
    device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    names = {i.name for i in session.get_inputs()}

    def predict(batch: dict[str, np.ndarray]) -> np.ndarray:
        binding = session.io_binding()
        for name, array in batch.items():
            if name in names:
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0))
        binding.bind_output(output, device)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return predict
