"""Why a ``--dynamic`` export cannot be made, in one line instead of the tracer's report.

* :func:`check_dynamic_example` (before the trace): ``torch.export`` fixes every size that is 1 in the example,
  so an example at which a Bi-Level Routing Attention region is one token high or wide would give a graph for
  that size only. The graph traced at a larger example serves every size, one-token regions included.
* :func:`explain_export_failure` (after a failed trace): a ``torch.export`` error as one line naming the input
  dimension, the sizes the traced model accepts and what to do.
"""
from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn as nn

#: input sizes are suggested as multiples of this (the backbones' coarsest stride)
SIZE_STEP = 32

_VIOLATION = re.compile(r'Not all values of (\w+) = \S+ in the specified range (.+?) satisfy the generated guard (.+)')


def region_sizes(model: nn.Module, example: torch.Tensor) -> list[dict[str, Any]]:
    """Each Bi-Level Routing Attention layer's map and region size when ``model`` runs on ``example``.

    Returns:
        one dict per layer call: ``name``, ``n_win``, ``map`` (h, w), ``region`` (rh, rw) and ``stride`` (the
        input height over the map height, rounded to a power of two).
    """
    from mmsparse.ops import BiLevelRoutingAttention
    found: list[dict[str, Any]] = []

    def record(name: str) -> Any:
        def hook(module: BiLevelRoutingAttention, args: tuple[torch.Tensor, ...]) -> None:
            h, w = args[0].shape[-2:]
            _, _, rh, rw = module.region_layout((h, w))
            stride = 2 ** round(math.log2(max(example.shape[-2] / h, 1)))
            found.append(dict(name=name, n_win=module.n_win, map=(h, w), region=(rh, rw), stride=stride))
        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules()
               if isinstance(m, BiLevelRoutingAttention)]
    try:
        if handles:
            with torch.no_grad():
                model(example)
    finally:
        for handle in handles:
            handle.remove()
    return found


def check_dynamic_example(model: nn.Module, example: torch.Tensor) -> None:
    """ValueError (one line) when a BRA region is one token high or wide at the example's size.

    Args:
        model: the module that is traced (called as ``model(example)``).
        example: the example input ``[B, 3, H, W]``.
    """
    small = [layer for layer in region_sizes(model, example) if min(layer['region']) == 1]
    if not small:
        return
    # a map of n_win + 1 rows or more has regions of two rows or more; the map is ceil(size / stride) rows
    need = max(layer['stride'] * layer['n_win'] + 1 for layer in small)
    need = -(-need // SIZE_STEP) * SIZE_STEP
    layer = max(small, key=lambda x: x['stride'] * x['n_win'])
    h, w = example.shape[-2:]
    raise ValueError(
        f'--dynamic: at the example size {h}x{w} the regions of {layer["name"]} are {layer["region"][0]}x'
        f'{layer["region"][1]} tokens (a {layer["map"][0]}x{layer["map"][1]} map in n_win={layer["n_win"]} '
        f'regions) and torch.export fixes sizes that are 1 in the example; export at --shape {max(need, h)} '
        f'{max(need, w)} or larger: that graph serves every size, small ones included')


def explain_export_failure(err: BaseException, model: nn.Module, example: torch.Tensor) -> str | None:
    """One line for an error of ``torch.export.export(model, (example, ), dynamic_shapes=...)``; None if not one.

    Args:
        err: the exception the export raised.
        model: the traced module; example: its example input ``[B, 3, H, W]``.

    Returns:
        ``None`` when ``err`` does not come from torch (the caller re-raises it), else the message: the
        example-size problem of :func:`check_dynamic_example`, the input dimension the traced model restricts
        and the range it accepts, or the first line of any other ``torch.export`` error.
    """
    if not type(err).__module__.startswith('torch'):
        return None
    text = str(err)
    if 'Constraints violated' in text or 'ConstraintViolation' in type(err).__name__:
        try:
            check_dynamic_example(model, example)
        except ValueError as small_regions:
            return str(small_regions)
        found = _VIOLATION.search(text)
        if found:
            dim, declared, guard = found.groups()
            holds = guard.strip().replace(_source(text, dim), dim)
            return (f'--dynamic: torch.export cannot keep {dim} symbolic over {declared}: the traced model only '
                    f'holds for {holds} (a shape-dependent branch or reshape); export at a fixed --shape, or find '
                    'the line with TORCH_LOGS="+dynamic"')
    first = next((line.strip() for line in text.splitlines() if line.strip()), '')
    return f'--dynamic: torch.export failed ({type(err).__name__}): {first}'


def _source(text: str, dim: str) -> str:
    """The tracer's name of ``dim`` in ``text`` (``L['input'].size()[3]``), or ``dim`` itself."""
    found = re.search(rf'{dim} = (\S+) in the specified range', text)
    return found.group(1) if found else dim
