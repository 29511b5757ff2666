"""CloFormer: official (qhfan/CloFormer ``9181f69``) state dicts -> :class:`mmsparse.models.CloFormer` keys.

mmsparse's CloFormer keeps the authors' names inside a block; only the containers follow the mmsparse skeleton:
``patch_embed.`` -> ``stem.`` and ``layers.i.blocks.j.`` -> ``stages.i.blocks.j.``; the classification head
(``norm.*``, ``head.*``) is dropped. The authors released no checkpoints yet; this targets what their code saves.
"""
# why upgrade_state_dict is the same renaming applied leniently: the first mmsparse layout used the authors'
# container names
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch

from .common import apply_key_map

__all__ = ['convert_state_dict', 'convert_attention_state_dict', 'upgrade_state_dict']

FAMILY = 'cloformer'
#: what the authors' keys look like (for the error on a state dict holding none of them)
EXPECTED = "'patch_embed.*' and 'layers.<i>.blocks.<j>.*'"
EXPECTED_ATTENTION = "the keys of an EfficientAttention: 'global_q.*', 'global_kv.*', 'proj.*', 'convs.*', " \
                     "'qkvs.*', 'act_blocks.*'"

_BN = r'(?:weight|bias|running_mean|running_var|num_batches_tracked)'
_WB = r'(?:weight|bias)'
_ATTN = (rf'(?:global_q|global_kv|proj)\.{_WB}'
         rf'|(?:convs|qkvs)\.\d+\.{_WB}'
         rf'|act_blocks\.\d+\.act_block\.[02]\.{_WB}')
#: the official stem and block keys (the same names in mmsparse, inside other containers)
_STEM_KEYS = '|'.join([rf'conv[1-4]\.conv\.0\.{_WB}', rf'conv[1-4]\.conv\.1\.{_BN}', rf'(?:conv5|layernorm)\.{_WB}'])
_BLOCK_KEYS = '|'.join([
    rf'(?:norm1|norm2)\.{_WB}',
    rf'attn\.(?:{_ATTN})',
    rf'mlp\.(?:fc1|dwconv|fc2)\.{_WB}',
    rf'downsample\.[02]\.{_WB}',
    rf'downsample\.1\.{_BN}',
])
_CONTAINERS = [(r'patch_embed\.(.+)', r'stem.\1'), (r'layers\.(\d+)\.blocks\.(.+)', r'stages.\1.blocks.\2')]
_RULES = [(rf'patch_embed\.((?:{_STEM_KEYS}))', r'stem.\1'),
          (rf'layers\.(\d+)\.blocks\.(\d+\.(?:{_BLOCK_KEYS}))', r'stages.\1.blocks.\2')]
_CLASSIFICATION_KEYS = rf'(?:norm|head)\.{_WB}$'


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Official ``CloFormer`` keys -> mmsparse ``CloFormer`` backbone keys (classification head dropped).

    Raises :class:`UnmappedKeysError` listing every unknown key, :class:`ForeignStateDictError` when none is
    CloFormer's.
    """
    return apply_key_map(state_dict, _RULES, FAMILY, drop=_CLASSIFICATION_KEYS, expected=EXPECTED)


def upgrade_state_dict(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """A state dict of the first mmsparse ``CloFormer`` layout -> the current keys (others unchanged)."""
    return apply_key_map(state_dict, _CONTAINERS, FAMILY, strict=False)


def convert_attention_state_dict(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Official ``EfficientAttention`` keys -> :class:`mmsparse.ops.AttnConv` keys (the same names, checked)."""
    return apply_key_map(state_dict, [(_ATTN, r'\g<0>')], FAMILY, expected=EXPECTED_ATTENTION)
