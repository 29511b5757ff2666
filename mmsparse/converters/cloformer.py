"""CloFormer: official (qhfan/CloFormer ``9181f69``) state dicts -> :class:`mmsparse.models.CloFormer` keys.

mmsparse's CloFormer keeps the authors' names inside a block; only the containers follow the mmsparse skeleton:
``patch_embed.`` -> ``stem.`` and ``layers.i.blocks.j.`` -> ``stages.i.blocks.j.``. Every key is validated
(anything unknown raises) and the classification head (``norm.*``, ``head.*``) is dropped. The authors
released no checkpoints yet; this targets what their code saves. The first mmsparse layout used the authors'
container names, so :func:`upgrade_state_dict` is the same renaming applied leniently.
"""
import re
from collections import OrderedDict

from .common import UnmappedKeysError, rename_by_rules

__all__ = ['convert_state_dict', 'convert_attention_state_dict', 'upgrade_state_dict']

_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_WB = r'(weight|bias)'
_ATTN = (rf'(global_q|global_kv|proj)\.{_WB}'
         rf'|(convs|qkvs)\.\d+\.{_WB}'
         rf'|act_blocks\.\d+\.act_block\.[02]\.{_WB}')

#: full-match patterns of the official backbone keys (identical in mmsparse)
_BACKBONE_KEYS = re.compile('|'.join([
    rf'patch_embed\.conv[1-4]\.conv\.0\.{_WB}',
    rf'patch_embed\.conv[1-4]\.conv\.1\.{_BN}',
    rf'patch_embed\.(conv5|layernorm)\.{_WB}',
    rf'layers\.\d+\.blocks\.\d+\.(norm1|norm2)\.{_WB}',
    rf'layers\.\d+\.blocks\.\d+\.attn\.({_ATTN})',
    rf'layers\.\d+\.blocks\.\d+\.mlp\.(fc1|dwconv|fc2)\.{_WB}',
    rf'layers\.\d+\.blocks\.\d+\.downsample\.[02]\.{_WB}',
    rf'layers\.\d+\.blocks\.\d+\.downsample\.1\.{_BN}',
]))
_CLASSIFICATION_KEYS = re.compile(rf'(norm|head)\.{_WB}')
_ATTN_KEYS = re.compile(_ATTN)


def _map(state_dict, keep, drop=None):
    out, unknown = OrderedDict(), []
    for k, v in state_dict.items():
        if keep.fullmatch(k):
            out[k] = v
        elif drop is None or not drop.fullmatch(k):
            unknown.append(k)
    if unknown:
        raise UnmappedKeysError('cloformer', unknown)
    return out


_CONTAINERS = [(re.compile(r'^patch_embed\.(.+)$'), r'stem.\1'),
               (re.compile(r'^layers\.(\d+)\.blocks\.(.+)$'), r'stages.\1.blocks.\2')]


def convert_state_dict(state_dict):
    """Official ``CloFormer`` keys -> mmsparse ``CloFormer`` backbone keys (classification head dropped)."""
    checked = _map(state_dict, _BACKBONE_KEYS, _CLASSIFICATION_KEYS)
    return OrderedDict((rename_by_rules(k, _CONTAINERS), v) for k, v in checked.items())


def upgrade_state_dict(state_dict):
    """A state dict of the first mmsparse ``CloFormer`` layout -> the current keys (others unchanged)."""
    return OrderedDict((rename_by_rules(k, _CONTAINERS) or k, v) for k, v in state_dict.items())


def convert_attention_state_dict(state_dict):
    """Official ``EfficientAttention`` keys -> :class:`mmsparse.ops.AttnConv` keys (the same names, checked)."""
    return _map(state_dict, _ATTN_KEYS)
