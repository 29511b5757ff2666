"""Parameter and FLOP counts on top of :mod:`mmengine.analysis`, SDPA included.

One "flop" is one fused multiply-add (the unit of OpenMMLab's GFLOPs tables).
"""
# why: mmengine's FlopAnalyzer counts matmul / bmm / einsum / linear / convolutions (BRA, AttnConv 'reference',
# STA's association) but silently skips aten::scaled_dot_product_attention, which the 'sdpa' paths trace to
from __future__ import annotations

from math import prod
from typing import Any

import torch
import torch.nn as nn

__all__ = ['flop_count', 'sdpa_flop_jit']


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of ``scaled_dot_product_attention(q, k, v)``: ``prod(B) * Lq * Lk * (Dqk + Dv)``.

    Shapes:
        q: ``(*B, Lq, Dqk)``; k: ``(*B, Lk, Dqk)``; v: ``(*B, Lk, Dv)``; output: ``(*B, Lq, Dv)``.
    """
    # why: exactly mmengine's matmul count for q @ k^T and attn @ v written out (softmax and scaling uncounted);
    # prod(B) comes from the output, so broadcast or grouped K/V count per query head
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(t) for t in inputs[:3])
    out = get_shape(outputs[0])
    lq, dqk = q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    return prod(out[:-2]) * lq * lk * (dqk + dv)


#: handles added to mmengine's defaults
EXTRA_FLOP_HANDLES = {'aten::scaled_dot_product_attention': sdpa_flop_jit}


def flop_count(model: nn.Module, inputs: torch.Tensor | tuple[Any, ...]) -> dict[str, Any]:
    """Parameters and FLOPs (multiply-adds) of ``model(*inputs)``, by mmengine's jit-trace analysis.

    Runs once in eval mode without gradients (the training mode is restored). Returns ``flops`` (int),
    ``params`` (int), ``by_module`` (submodule name -> multiply-adds; ``''`` is the whole model, only modules that
    ran) and ``by_operator`` (op name -> multiply-adds).

    Args:
        inputs: a tensor, or a tuple of positional arguments.
    """
    # imported here: mmengine.analysis pulls in the jit tracer, which `import mmsparse` does not need
    from mmengine.analysis import FlopAnalyzer, parameter_count
    if not isinstance(inputs, tuple):
        inputs = (inputs, )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, inputs)
            analyzer.set_op_handle(**EXTRA_FLOP_HANDLES)
            analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analyzer.tracer_warnings('none')
            by_module = {name: int(v) for name, v in analyzer.by_module().items()}
            by_operator = {name: int(v) for name, v in analyzer.by_operator().items()}
            total = int(analyzer.total())
    finally:
        model.train(was_training)
    return dict(flops=total, params=int(parameter_count(model)['']), by_module=by_module, by_operator=by_operator)
