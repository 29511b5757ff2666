"""CloFormer: official (qhfan/CloFormer ``9181f69``) state dicts and constructors -> mmsparse.

mmsparse's :class:`~mmsparse.models.CloFormer` keeps the authors' module names, so backbone keys map to
themselves; the work here is validating them (anything unknown raises) and dropping the classification head
(``norm.*``, ``head.*``). The authors released no checkpoints yet; this targets what their code saves.
"""
import re
from collections import OrderedDict

from .common import UnmappedKeysError

__all__ = ['convert_state_dict', 'OFFICIAL_CLASSES']

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


def convert_state_dict(state_dict):
    """Official ``CloFormer`` keys -> mmsparse ``CloFormer`` backbone keys (classification head dropped)."""
    return _map(state_dict, _BACKBONE_KEYS, _CLASSIFICATION_KEYS)


def _convert_attention(state_dict):
    return _map(state_dict, _ATTN_KEYS)


def _build_cloformer(kwargs):
    """The backbone equal to ``CloFormer(**kwargs)`` up to its raw taps (no output norms, no head)."""
    from mmsparse.models.backbones.cloformer import CloFormer
    kw = dict(dict(in_chans=3, attn_drop=0., mlp_drop=0., qkv_bias=True, drop_path_rate=0.1,
                   use_checkpoint=False), **kwargs)
    num_stages = len(kw['depths'])
    per_stage = {k: kw[k] if isinstance(kw[k], (list, tuple)) else [kw[k]] * num_stages
                 for k in ('mlp_kernel_sizes', 'mlp_ratios')}
    arch = dict(embed_dims=kw['embed_dims'], depths=kw['depths'], num_heads=kw['num_heads'],
                group_splits=kw['group_splits'], kernel_sizes=kw['kernel_sizes'],
                window_sizes=kw['window_sizes'], **per_stage)
    model = CloFormer(arch=arch, in_channels=kw['in_chans'], drop_path_rate=kw['drop_path_rate'],
                      attn_drop_rate=kw['attn_drop'], drop_rate=kw['mlp_drop'], qkv_bias=kw['qkv_bias'],
                      with_cp=kw['use_checkpoint'],
                      out_norm_cfg=None, mixer_impl='reference')  # the reference: for parity checks
    return model, convert_state_dict


def _build_attention(kwargs):
    """The :class:`~mmsparse.ops.AttnConv` equal to ``EfficientAttention(**kwargs)``."""
    from mmsparse.ops.attn_conv import AttnConv
    kw = dict(dict(window_size=7, attn_drop=0., proj_drop=0., qkv_bias=True), **kwargs)
    module = AttnConv(kw['dim'], kw['num_heads'], kw['group_split'], kw['kernel_sizes'], kw['window_size'],
                      attn_drop=kw['attn_drop'], proj_drop=kw['proj_drop'], qkv_bias=kw['qkv_bias'],
                      impl='reference')
    return module, _convert_attention


OFFICIAL_CLASSES = {
    'CloFormer': _build_cloformer,
    'EfficientAttention': _build_attention,
}
