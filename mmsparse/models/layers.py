"""Small building blocks shared by the backbones."""
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS as MMENGINE_MODELS


@MMENGINE_MODELS.register_module('LN2d', force=False)
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW map (timm's ``LayerNorm2d``).

    Registered as norm type ``'LN2d'`` so ``out_norm_cfg=dict(type='LN2d', eps=1e-6)`` builds through
    mmcv's ``build_norm_layer``. State-dict keys are ``weight`` and ``bias``, like ``nn.LayerNorm``.
    """
    _abbr_ = 'ln'

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f'LayerNorm2d expects an NCHW tensor, got shape {tuple(x.shape)}')
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
