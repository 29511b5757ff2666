"""Small building blocks and argument helpers shared by the backbones, plug-ins and necks."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsparse.ops._checks import check_nchw
from mmsparse.registry import register_in_root

__all__ = ['LayerNorm2d', 'LayerScale2d', 'per_stage']


@register_in_root('LN2d')
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW map (timm's ``LayerNorm2d``).

    Registered as norm type ``'LN2d'`` so ``out_norm_cfg=dict(type='LN2d', eps=1e-6)`` builds through
    mmcv's ``build_norm_layer``. State-dict keys are ``weight`` and ``bias``, like ``nn.LayerNorm``.
    """
    _abbr_ = 'ln'

    def forward(self, x):
        check_nchw(x, None, type(self).__name__)
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScale2d(nn.Module):
    """Learnable per-channel scale of a residual branch on NCHW maps: ``x * gamma`` (``gamma``: (C, 1, 1)).

    Args:
        embed_dims (int): channels C.
        init_value (float): initial value of every entry (0 makes the branch start switched off).
    """

    def __init__(self, embed_dims, init_value):
        super().__init__()
        self.init_value = float(init_value)
        self.gamma = nn.Parameter(torch.full((embed_dims, 1, 1), self.init_value))

    def reset_parameters(self):
        with torch.no_grad():
            self.gamma.fill_(self.init_value)

    def forward(self, x):
        return x * self.gamma

    def extra_repr(self):
        return f'{self.gamma.shape[0]}, init_value={self.init_value}'


def per_stage(value, name, num_stages, types=(int, float)):
    """One value per stage: broadcast a scalar of ``types`` or check a sequence of ``num_stages`` such values.

    Bools are accepted only when ``types`` contains ``bool``. Raises ``ValueError`` naming ``name``.
    """
    types = tuple(types) if isinstance(types, (tuple, list)) else (types, )

    def ok(v):
        return isinstance(v, types) and (bool in types or not isinstance(v, bool))

    if ok(value) and not isinstance(value, (list, tuple)):
        return [value] * num_stages
    if not isinstance(value, (list, tuple)) or len(value) != num_stages or not all(ok(v) for v in value):
        accepted = ' / '.join(t.__name__ for t in types)
        raise ValueError(f'{name} must be one {accepted} or a sequence of {num_stages} of them (one per stage), '
                         f'got {value!r}')
    return list(value)
