"""BiFormer: the authors' checkpoints (rayleizhu/BiFormer) -> :class:`mmsparse.models.BiFormer` keys.

Key mapping (official -> mmsparse):

=====================================  ==============================================
``downsample_layers.0.{0,1}.``         ``stem.0.{conv,bn}.``
``downsample_layers.0.{3,4}.``         ``stem.1.{conv,bn}.``
``downsample_layers.{i}.{0,1}.``       ``stages.{i}.downsample.{conv,bn}.`` (i = 1..3)
``stages.s.j.``                        ``stages.s.blocks.j.``
``stages.s.j.attn.qkv.qkv.``           ``stages.s.blocks.j.attn.qkv.`` (BRA, stages 0-2)
``stages.s.j.attn.wo.``                ``stages.s.blocks.j.attn.proj.``
``stages.s.j.mlp.{0,3}.weight`` (2-D)  ``stages.s.blocks.j.mlp.{fc1,fc2}.weight`` (1x1 conv, 4-D)
``extra_norms.{i}.``                   ``norm{i}.`` (``BiFormer_mm`` only)
``norm.*``, ``head.*``                 dropped (classification only)
=====================================  ==============================================

Other block keys (``pos_embed``, ``norm1``, ``norm2``, ``attn.lepe``, stage 4's ``attn.qkv`` / ``attn.proj``)
keep their names; no mmsparse key equals an official one, so a raw official file is always recognised.
:func:`upgrade_state_dict` maps the first mmsparse layout (``layers.s.j``, ``downsamples.{i-1}``,
``out_norms.{i}``) to the current one.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping

import torch

from .common import UnmappedKeysError, apply_key_map

__all__ = ['convert_state_dict', 'convert_dense_state_dict', 'upgrade_state_dict']

FAMILY = 'biformer'
#: what the authors' keys look like (for the error on a state dict holding none of them)
EXPECTED = "'downsample_layers.*' and 'stages.<s>.<j>.*' (and 'extra_norms.*' in BiFormer_mm)"


def _mlp_as_conv(key: str, value: torch.Tensor) -> torch.Tensor:
    """The authors' MLP is two Linear layers; ours are 1x1 convolutions."""
    return value[:, :, None, None] if key.endswith('.weight') and value.dim() == 2 else value


_BLOCK = r'^stages\.([0-3])\.(\d+)\.'
# (pattern, replacement[, transform]) tried in order; the first match wins (see ``apply_key_map``)
_RULES = [
    (re.compile(r'^downsample_layers\.0\.0\.(weight|bias)$'), r'stem.0.conv.\1'),
    (re.compile(r'^downsample_layers\.0\.1\.(\w+)$'), r'stem.0.bn.\1'),
    (re.compile(r'^downsample_layers\.0\.3\.(weight|bias)$'), r'stem.1.conv.\1'),
    (re.compile(r'^downsample_layers\.0\.4\.(\w+)$'), r'stem.1.bn.\1'),
    (re.compile(r'^downsample_layers\.([1-3])\.0\.(weight|bias)$'), r'stages.\1.downsample.conv.\2'),
    (re.compile(r'^downsample_layers\.([1-3])\.1\.(\w+)$'), r'stages.\1.downsample.bn.\2'),
    (re.compile(_BLOCK + r'(pos_embed|norm1|norm2|attn\.lepe|attn\.proj)\.(weight|bias)$'),
     r'stages.\1.blocks.\2.\3.\4'),
    (re.compile(_BLOCK + r'attn\.qkv\.qkv\.(weight|bias)$'), r'stages.\1.blocks.\2.attn.qkv.\3'),
    (re.compile(_BLOCK + r'attn\.qkv\.weight$'), r'stages.\1.blocks.\2.attn.qkv.weight'),
    (re.compile(_BLOCK + r'attn\.wo\.(weight|bias)$'), r'stages.\1.blocks.\2.attn.proj.\3'),
    (re.compile(_BLOCK + r'mlp\.0\.(weight|bias)$'), r'stages.\1.blocks.\2.mlp.fc1.\3', _mlp_as_conv),
    (re.compile(_BLOCK + r'mlp\.3\.(weight|bias)$'), r'stages.\1.blocks.\2.mlp.fc2.\3', _mlp_as_conv),
    (re.compile(r'^extra_norms\.([0-3])\.(weight|bias)$'), r'norm\1.\2'),
]

#: the first mmsparse layout -> the current one (current keys match no rule and pass through)
_UPGRADE_RULES = [
    (re.compile(r'^layers\.(\d+)\.(\d+)\.(.+)$'), r'stages.\1.blocks.\2.\3'),
    (re.compile(r'^downsamples\.(\d+)\.(.+)$'), lambda m: f'stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}'),
    (re.compile(r'^out_norms\.(\d+)\.(.+)$'), r'norm\1.\2'),
]


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Official ``BiFormer`` / ``BiFormer_mm`` keys -> mmsparse ``BiFormer`` keys.

    Drops ``norm.*`` / ``head.*`` and reshapes the MLP Linear weights to 1x1 convs. Raises
    :class:`UnmappedKeysError` listing every unknown key, :class:`ForeignStateDictError` when none is BiFormer's.
    """
    return apply_key_map(state_dict, _RULES, FAMILY, drop=r'^(norm|head)\.', expected=EXPECTED)


def upgrade_state_dict(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """A state dict of the first mmsparse ``BiFormer`` layout -> the current keys (others unchanged)."""
    return apply_key_map(state_dict, _UPGRADE_RULES, FAMILY, strict=False)


#: top-level prefixes of mmdet 2.x / mmseg 0.x neck and head keys whose names mmdet 3.x / mmseg 1.x kept
#: for the heads the BiFormer recipes use (FPN, RPNHead, StandardRoIHead with Shared2FC + FCNMaskHead,
#: RetinaHead, UPerHead, FCNHead, FPNHead)
DENSE_PASS_THROUGH = ('neck.', 'rpn_head.', 'roi_head.', 'bbox_head.', 'decode_head.', 'auxiliary_head.')


def convert_dense_state_dict(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """The authors' mmdet 2.x / mmseg 0.x detector or segmentor state dict -> mmdet 3.x / mmseg 1.x keys.

    ``backbone.*`` goes through :func:`convert_state_dict`; keys under :data:`DENSE_PASS_THROUGH` keep their
    names (the recipes' heads were not renamed in 3.x); anything else raises :class:`UnmappedKeysError`.
    """
    backbone = OrderedDict((k[len('backbone.'):], v) for k, v in state_dict.items() if k.startswith('backbone.'))
    unknown = [k for k in state_dict if not k.startswith(('backbone.',) + DENSE_PASS_THROUGH)]
    if unknown:
        raise UnmappedKeysError(FAMILY, unknown)
    out = OrderedDict(('backbone.' + k, v) for k, v in convert_state_dict(backbone).items())
    for k, v in state_dict.items():
        if k.startswith(DENSE_PASS_THROUGH):
            out[k] = v
    return out
