"""Parameter and FLOP counts on top of :mod:`mmengine.analysis`, with the attention ops our operators use.

mmengine's :class:`~mmengine.analysis.FlopAnalyzer` traces the model with ``torch.jit`` and counts one fused
multiply-add as one "flop" (the unit of OpenMMLab's GFLOPs tables). It already counts ``aten::matmul``, ``bmm``,
``einsum``, ``linear`` and convolutions, which covers the explicit attention products of BRA, AttnConv's
``'reference'`` path and STA's association; :func:`flop_count` adds ``aten::scaled_dot_product_attention``,
which the ``'sdpa'`` paths (AttnConv global heads, STA's super-token MHSA, BiFormer's global stage) trace to and
which mmengine would otherwise skip silently.
"""
from math import prod

import torch

__all__ = ['flop_count', 'sdpa_flop_jit']


def sdpa_flop_jit(inputs, outputs):
    """Multiply-adds of ``scaled_dot_product_attention(q, k, v)``.

    ``q: (*B, Lq, Dqk)``, ``k: (*B, Lk, Dqk)``, ``v: (*B, Lk, Dv)``, output ``(*B, Lq, Dv)``: the two products
    ``q @ k^T`` and ``attn @ v`` cost ``prod(B) * Lq * Lk * (Dqk + Dv)`` multiply-adds, exactly what
    mmengine's matmul handle counts for the same products written out (softmax and scaling are not counted,
    as elsewhere in mmengine). ``prod(B)`` is taken from the output, so broadcast or grouped K/V count per
    query head.
    """
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(t) for t in inputs[:3])
    out = get_shape(outputs[0])
    lq, dqk = q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    return prod(out[:-2]) * lq * lk * (dqk + dv)


#: handles added to mmengine's defaults
EXTRA_FLOP_HANDLES = {'aten::scaled_dot_product_attention': sdpa_flop_jit}


def flop_count(model, inputs):
    """Parameters and FLOPs (multiply-adds) of ``model(*inputs)``, by mmengine's jit-trace analysis.

    The model runs once in eval mode without gradients (its training mode is restored afterwards).

    Args:
        model (nn.Module): the module to analyse.
        inputs (Tensor | tuple): what ``model`` is called with (a tensor, or a tuple of positional arguments).

    Returns:
        dict: ``flops`` (int, total multiply-adds), ``params`` (int, all parameters of ``model``),
        ``by_module`` (dict: submodule name -> multiply-adds, ``''`` is the whole model; only modules that ran)
        and ``by_operator`` (dict: op name -> multiply-adds, whole model).
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
