"""Adaptive average pooling written with standard ONNX operators, exact at every input size.

Bin ``i`` of ``k`` along a size ``n`` covers ``[floor(i * n / k), ceil((i + 1) * n / k))``, as in PyTorch; the
pooling is ``A_h @ x @ A_w^T`` with ``A`` the ``k x n`` matrix holding ``1 / len(bin i)`` on bin ``i``'s columns.
"""
# why: nn.AdaptiveAvgPool2d to a grid larger than 1 x 1 has no ONNX operator; the exporter writes a fixed
# AveragePool sized from the example, wrong at any other size. Here the bins follow the runtime shape (Range,
# comparisons, MatMul), and each bin is summed directly (no running sums whose differences lose float32 precision).
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn

OutputSize = Union[int, None, tuple[Optional[int], Optional[int]]]


def bin_matrix(n: int | torch.SymInt, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The averaging matrix of ``k`` bins along a size ``n`` (``n`` may be symbolic).

    Shapes:
        output: ``[k, n]``; row ``i`` averages bin ``i``.
    """
    i = torch.arange(k, device=device)
    # integer arithmetic on non-negative values: floor division is exact (no float rounding at the edges)
    start = i * n // k
    end = ((i + 1) * n + k - 1) // k
    j = torch.arange(n, device=device)  # type: ignore[arg-type]  # arange takes a SymInt when traced
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


def _pair(output_size: OutputSize) -> tuple[Optional[int], Optional[int]]:
    if isinstance(output_size, int) or output_size is None:
        return output_size, output_size
    return tuple(output_size)  # type: ignore[return-value]  # a pair in nn.AdaptiveAvgPool2d


def adaptive_avg_pool2d(x: torch.Tensor, output_size: OutputSize) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)``, exportable at any size; ``None`` keeps that size.

    Shapes:
        x: ``[..., H, W]``; output: ``[..., kh, kw]``.
    """
    kh, kw = _pair(output_size)
    h, w = x.shape[-2:]
    if kh is not None:
        x = torch.matmul(bin_matrix(h, kh, x.dtype, x.device), x)
    if kw is not None:
        x = torch.matmul(x, bin_matrix(w, kw, x.dtype, x.device).transpose(0, 1))
    return x


def needs_generic_pooling(module: nn.Module) -> bool:
    """True for adaptive average pooling to a grid other than 1 x 1 (1 x 1 exports as a global mean)."""
    if not isinstance(module, nn.AdaptiveAvgPool2d):
        return False
    return any(s not in (1, None) for s in _pair(module.output_size))


class size_generic_pooling:
    """Context manager: ``model``'s adaptive average pooling (other than 1 x 1) runs as
    :func:`adaptive_avg_pool2d`, so that an export traces bins computed from the input's runtime shape."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if needs_generic_pooling(m)]

    def __enter__(self) -> size_generic_pooling:
        for m in self.modules:
            m.forward = (lambda size: lambda x: adaptive_avg_pool2d(x, size))(m.output_size)  # type: ignore[arg-type]
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self.modules:
            del m.forward  # back to the class's forward
