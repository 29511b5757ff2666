"""STViT: the authors' keys (hhb072/STViT ``models/stvit.py``) -> :class:`mmsparse.models.STViT` keys.

=============================================  =========================================
official                                       mmsparse
=============================================  =========================================
``patch_embed.proj.{0,3,6,9}.*`` (convs)       ``stem.{0,1,2,3}.conv.*``
``patch_embed.proj.{2,5,8,11}.*`` (BNs)        ``stem.{0,1,2,3}.norm.*``
``layers.i.downsample.proj.{0,1}.*``           ``stages.{i+1}.downsample.{conv,norm}.*``
``layers.i.blocks.j.pos_embed.conv.*``         ``stages.i.blocks.j.cpe.*``
``layers.i.blocks.j.norm1.norm.*``             ``stages.i.blocks.j.norm1.*``
``layers.i.blocks.j.attn.stoken_refine.*``     ``stages.i.blocks.j.attn.refine.*``
``layers.i.blocks.j.norm2.*``                  ``stages.i.blocks.j.norm2.*``
``layers.i.blocks.j.mlp2.{fc1,fc2}.*``         ``stages.i.blocks.j.ffn.{fc1,fc2}.*``
``layers.i.blocks.j.mlp2.conv.conv.*``         ``stages.i.blocks.j.ffn.dwconv.*``
``layers.i.blocks.j.gamma_{1,2}`` (1, C, 1, 1)  ``stages.i.blocks.j.gamma{1,2}.gamma`` (C, 1, 1)
``layers.i.blocks.j.attn.{unfold,fold}.weights``  dropped after checking they are ``eye(9)``
``proj.*``, ``norm.*``, ``head.*``             dropped (classification only)
=============================================  =========================================

The qkv layout (interleaved per head) is kept, so qkv weights copy over unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, NoReturn

import torch

from .common import apply_key_map

__all__ = ['convert_state_dict', 'convert_attention_state_dict', 'upgrade_state_dict', 'EYE_KERNELS']

FAMILY = 'stvit'
#: what the authors' keys look like (for the error on a state dict holding none of them)
EXPECTED = "'patch_embed.proj.*' and 'layers.<i>.blocks.<j>.*' / 'layers.<i>.downsample.*'"
EXPECTED_ATTENTION = "the keys of a StokenAttention: 'stoken_refine.{qkv,proj}.*', '{unfold,fold}.weights'"
#: the authors' frozen unfold/fold constant: nine one-hot 3×3 kernels, (9, 1, 3, 3)
EYE_KERNELS = torch.eye(9).view(9, 1, 3, 3)

_CLS_ONLY = r'(proj|norm|head)\.'
_STEM = {'0': '0.conv', '2': '0.norm', '3': '1.conv', '5': '1.norm', '6': '2.conv', '8': '2.norm',
         '9': '3.conv', '11': '3.norm'}
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'


def _check_eye(key: str, value: torch.Tensor) -> torch.Tensor:
    """The frozen kernels carry no learned information; anything but ``eye(9)`` means a different model."""
    if tuple(value.shape) != (9, 1, 3, 3) or not torch.equal(value.float().cpu(), EYE_KERNELS):
        raise ValueError(f'{FAMILY}: {key} should be the frozen eye(9) kernel of shape (9, 1, 3, 3), got a '
                         f'tensor of shape {tuple(value.shape)} with other values; this checkpoint is not '
                         'from the STViT code this converter supports')
    return value


def _reject_first_upload(key: str, value: torch.Tensor) -> NoReturn:
    """The first upload's ResDWC (a frozen eye(3) ``shortcut``) computes something else than the current one."""
    raise ValueError(f'{FAMILY}: {key} comes from the April-2023 STViT code whose ResDWC differs; '
                     'only checkpoints of the current code (commit c9ed9a4) can be converted')


def _layer_scale(key: str, value: torch.Tensor) -> torch.Tensor:
    """The authors' (1, C, 1, 1) layer scale -> mmsparse's ``LayerScale`` (C, 1, 1)."""
    return value.reshape(-1, 1, 1)


#: inside ``StokenAttention``: the fixed kernels are checked and dropped, the refinement keeps its layout
_ATTENTION_RULES = [
    (r'(unfold|fold)\.weights', None, _check_eye),
    (r'stoken_refine\.(qkv|proj)\.(weight|bias)', r'refine.\1.\2'),
]
_BLOCK = r'layers\.(\d+)\.blocks\.(\d+)\.'
_RULES = [
    (r'.*\.shortcut.*', None, _reject_first_upload),
    (r'patch_embed\.proj\.(0|2|3|5|6|8|9|11)\.(\w+)', lambda m: f'stem.{_STEM[m.group(1)]}.{m.group(2)}'),
    # the official stage i ends with the downsampling that our stage i + 1 starts with
    (rf'layers\.(\d+)\.downsample\.proj\.([01])\.{_BN}',
     lambda m: f'stages.{int(m.group(1)) + 1}.downsample.{"conv" if m.group(2) == "0" else "norm"}.{m.group(3)}'),
    (_BLOCK + r'pos_embed\.conv\.(weight|bias)', r'stages.\1.blocks.\2.cpe.\3'),
    (_BLOCK + r'norm1\.norm\.(weight|bias)', r'stages.\1.blocks.\2.norm1.\3'),
    (_BLOCK + r'attn\.(unfold|fold)\.weights', None, _check_eye),
    (_BLOCK + r'attn\.stoken_refine\.(qkv|proj)\.(weight|bias)', r'stages.\1.blocks.\2.attn.refine.\3.\4'),
    (_BLOCK + r'norm2\.' + _BN, r'stages.\1.blocks.\2.norm2.\3'),
    (_BLOCK + r'mlp2\.(fc1|fc2)\.(weight|bias)', r'stages.\1.blocks.\2.ffn.\3.\4'),
    (_BLOCK + r'mlp2\.conv\.conv\.(weight|bias)', r'stages.\1.blocks.\2.ffn.dwconv.\3'),
    (_BLOCK + r'gamma_([12])', r'stages.\1.blocks.\2.gamma\3.gamma', _layer_scale),
]
_UPGRADE_RULES = [(r'(.+\.gamma[12])', r'\1.gamma', _layer_scale)]


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Official ``STViT`` state dict -> :class:`mmsparse.models.STViT` state dict (backbone keys only).

    Raises :class:`UnmappedKeysError` listing every unknown key, :class:`ForeignStateDictError` when none is
    STViT's, ``ValueError`` for unfold / fold kernels other than ``eye(9)`` or the first upload's ResDWC.
    """
    return apply_key_map(state_dict, _RULES, FAMILY, drop=_CLS_ONLY, expected=EXPECTED)


def upgrade_state_dict(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """The first mmsparse ``STViT`` layout -> the current keys; other keys unchanged.

    The first layout held the layer scales as bare ``gamma1`` / ``gamma2`` of shape (1, C, 1, 1).
    """
    return apply_key_map(state_dict, _UPGRADE_RULES, FAMILY, strict=False)


def convert_attention_state_dict(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Official ``StokenAttention`` state dict -> :class:`mmsparse.ops.SuperTokenAttention` state dict."""
    return apply_key_map(state_dict, _ATTENTION_RULES, FAMILY, expected=EXPECTED_ATTENTION)
