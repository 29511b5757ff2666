"""What the operators do differently while a graph is being exported (ONNX, ``torch.export``)."""
from __future__ import annotations

import torch


def exporting() -> bool:
    """True while ``torch.onnx.export`` (either exporter) or ``torch.export`` traces the model."""
    is_exporting = getattr(getattr(torch, 'compiler', None), 'is_exporting', None)  # torch >= 2.4
    return bool(torch.onnx.is_in_onnx_export() or (is_exporting is not None and is_exporting()))


def pad_needed(pad_b: int, pad_r: int) -> bool:
    """Whether to run the zero-padding branch: eagerly only when something is padded, always while exporting."""
    # why always when exporting: the tracer would freeze the branch taken at the example size into the graph;
    # padding by zero and cropping back are exact no-ops, so the graph stays right at every size
    return exporting() or bool(pad_b or pad_r)
