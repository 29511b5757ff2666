"""What the operators do differently while a graph is being exported (ONNX, ``torch.export``)."""
import torch


def exporting():
    """True while ``torch.onnx.export`` (either exporter) or ``torch.export`` traces the model."""
    is_exporting = getattr(getattr(torch, 'compiler', None), 'is_exporting', None)  # torch >= 2.4
    return bool(torch.onnx.is_in_onnx_export() or (is_exporting is not None and is_exporting()))


def pad_needed(pad_b, pad_r):
    """Whether to run the zero-padding branch for a bottom/right padding of ``pad_b`` / ``pad_r``.

    Eagerly only when something is padded (padding by zero costs a copy). While exporting always: the tracer
    evaluates the condition at the example size and would freeze that branch into the graph, so a graph exported
    at a size that divides the window grid would lack the padding the other sizes need. Padding by zero and
    cropping to the input size are exact no-ops, so the graph stays right at every size.
    """
    return exporting() or bool(pad_b or pad_r)
