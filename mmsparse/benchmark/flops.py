"""What ``tools/analysis_tools/get_flops.py`` counts: a config's model (tensor forward) or backbone, and its
summary (the method is in the tool's docstring)."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn


class TensorForward(nn.Module):
    """``model._forward(x, data_samples)`` as a plain module (what jit tracing needs)."""

    def __init__(self, model: nn.Module, data_samples: list | None) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, x: torch.Tensor) -> Any:
        return self.model._forward(x, self.data_samples)  # type: ignore[operator]  # mmdet / mmseg models' _forward


def build_measured(cfg: Any, shape: tuple[int, int]) -> tuple[nn.Module, torch.Tensor, str]:
    """``(module, input, description)`` for the model of ``cfg`` at image size ``shape`` (random weights)."""
    from mmsparse.apis import build_model, fake_data_sample
    scope = cfg.get('default_scope') or 'mmdet'
    model = build_model(cfg)
    h, w = shape
    divisor = (cfg.model.get('data_preprocessor') or {}).get('pad_size_divisor', 1)
    h, w = math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor
    x = torch.randn(1, 3, h, w)
    if hasattr(model, '_forward') and hasattr(model, 'backbone'):
        # the metainfo a two-stage detector's RPN needs in ``_forward``; segmentors and one-stage heads need none
        samples = [fake_data_sample(scope, h, w, with_gt=False)] if scope == 'mmdet' else None
        return TensorForward(model, samples), x, 'model._forward'
    return model, x, 'backbone'


def summary(config: str, module: nn.Module, x: torch.Tensor, what: str) -> list[str]:
    """The lines ``get_flops.py`` prints: totals, each top-level module, and all ``SparseAttnBlock`` together."""
    from mmsparse.models.plugins import SparseAttnBlock
    from mmsparse.utils import flop_count
    res = flop_count(module, x)
    prefix = 'model.' if isinstance(module, TensorForward) else ''
    by_module = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in res['by_module'].items()}
    inner = module.model if isinstance(module, TensorForward) else module
    lines = [f'config: {config}', f'measured: {what}, input shape: {tuple(x.shape)}',
             f'Params: {res["params"] / 1e6:.3f} M    FLOPs: {res["flops"] / 1e9:.3f} G (multiply-adds)',
             'by top-level module:']
    for name, child in inner.named_children():
        params = sum(p.numel() for p in child.parameters())
        if by_module.get(name) or params:
            lines.append(f'  {name:<20} params {params / 1e6:9.3f} M   FLOPs {by_module.get(name, 0) / 1e9:9.3f} G')
    blocks = [(n, m) for n, m in inner.named_modules() if isinstance(m, SparseAttnBlock)]
    if blocks:
        params = sum(p.numel() for _, m in blocks for p in m.parameters())
        flops = sum(by_module.get(n, 0) for n, _ in blocks)
        lines.append(f'  {len(blocks)} x SparseAttnBlock: params {params / 1e6:.3f} M   FLOPs {flops / 1e9:.3f} G')
    return lines
