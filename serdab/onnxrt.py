"""ONNX Runtime sessions configured the one way Serdab runs stages: CPU, fixed threads, sequential."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnxruntime as ort

if TYPE_CHECKING:  # an enclave serving a model loads ONNX Runtime only, not the onnx package
    import onnx

__all__ = ["make_session"]


def make_session(model: onnx.ModelProto | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads; fixed so timings are comparable across runs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
