"""Small building blocks and argument helpers shared by the backbones, plug-ins and necks."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsparse.ops.checks import check_each, check_nchw, check_positive_int, check_rate
from mmsparse.registry import register_in_root

__all__ = ['LayerNorm2d', 'LayerScale2d', 'per_stage', 'drop_path_rates']


@register_in_root('LN2d')
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW map (timm's ``LayerNorm2d``).

    Registered as norm type ``'LN2d'`` so ``out_norm_cfg=dict(type='LN2d', eps=1e-6)`` builds through
    mmcv's ``build_norm_layer``. State-dict keys are ``weight`` and ``bias``, like ``nn.LayerNorm``.
    """
    _abbr_ = 'ln'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, None, type(self).__name__)
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        # the permuted result has channels-last strides; kernels that index NCHW memory directly (mmcv's
        # RoIAlign, CPU and CUDA) would read it as another tensor, so hand on a contiguous NCHW map
        return x.permute(0, 3, 1, 2).contiguous()


class LayerScale2d(nn.Module):
    """Learnable per-channel scale of a residual branch on NCHW maps: ``x * gamma`` (``gamma``: (C, 1, 1)).

    Args:
        embed_dims (int): channels C.
        init_value (float): initial value of every entry (0 makes the branch start switched off).
    """

    def __init__(self, embed_dims: int, init_value: float) -> None:
        super().__init__()
        self.init_value = float(init_value)
        self.gamma = nn.Parameter(torch.full((embed_dims, 1, 1), self.init_value))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.gamma.fill_(self.init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def extra_repr(self) -> str:
        return f'{self.gamma.shape[0]}, init_value={self.init_value}'


def per_stage(value: Any, name: str, num_stages: int, types: type | Sequence[type] = (int, float)) -> list:
    """One value per stage: broadcast a scalar of ``types`` or check a sequence of ``num_stages`` such values.

    Bools are accepted only when ``types`` contains ``bool``. Raises ``ValueError`` naming ``name``.
    """
    accepted_types: tuple = tuple(types) if isinstance(types, (tuple, list)) else (types, )

    def ok(v: Any) -> bool:
        return isinstance(v, accepted_types) and (bool in accepted_types or not isinstance(v, bool))

    if ok(value) and not isinstance(value, (list, tuple)):
        return [value] * num_stages
    if not isinstance(value, (list, tuple)) or len(value) != num_stages or not all(ok(v) for v in value):
        accepted = ' / '.join(t.__name__ for t in accepted_types)
        raise ValueError(f'{name} must be one {accepted} or a sequence of {num_stages} of them (one per stage), '
                         f'got {value!r}')
    return list(value)


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rates per stage: ``rate`` spread linearly over all blocks, from 0 at the first block to
    ``rate`` at the last (``torch.linspace(0, rate, sum(depths))``), split into one list per stage.

    Computed on the CPU whatever the default device, so that a backbone also builds under
    ``with torch.device('meta'):``. e.g. ``drop_path_rates(0.3, [1, 2]) == [[0.0], [0.15, 0.3]]``.
    """
    rate = check_rate(rate, 'drop_path_rate')
    depths = check_each(depths, check_positive_int, 'depths')
    rates = torch.linspace(0, rate, sum(depths), device='cpu').tolist()
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[start:start + depth] for start, depth in zip(starts, depths)]
