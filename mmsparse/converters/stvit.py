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
``layers.i.blocks.j.gamma_{1,2}``              ``stages.i.blocks.j.gamma{1,2}``
``layers.i.blocks.j.attn.{unfold,fold}.weights``  dropped after checking they are ``eye(9)``
``proj.*``, ``norm.*``, ``head.*``             dropped (classification only)
=============================================  =========================================

The qkv layout (interleaved per head) is kept as is, so qkv weights copy over unchanged.
"""
import re
from collections import OrderedDict

import torch

from .common import UnmappedKeysError

__all__ = ['convert_state_dict', 'convert_attention_state_dict', 'OFFICIAL_CLASSES', 'EYE_KERNELS']

FAMILY = 'stvit'
#: the authors' frozen unfold/fold constant: nine one-hot 3×3 kernels, (9, 1, 3, 3)
EYE_KERNELS = torch.eye(9).view(9, 1, 3, 3)

_CLS_ONLY = re.compile(r'^(proj|norm|head)\.')
_STEM = {'0': '0.conv', '2': '0.norm', '3': '1.conv', '5': '1.norm', '6': '2.conv', '8': '2.norm',
         '9': '3.conv', '11': '3.norm'}
_BLOCK = [
    (r'pos_embed\.conv\.(weight|bias)$', r'cpe.\1'),
    (r'norm1\.norm\.(weight|bias)$', r'norm1.\1'),
    (r'attn\.stoken_refine\.(qkv|proj)\.(weight|bias)$', r'attn.refine.\1.\2'),
    (r'norm2\.(weight|bias|running_mean|running_var|num_batches_tracked)$', r'norm2.\1'),
    (r'mlp2\.(fc1|fc2)\.(weight|bias)$', r'ffn.\1.\2'),
    (r'mlp2\.conv\.conv\.(weight|bias)$', r'ffn.dwconv.\1'),
    (r'gamma_([12])$', r'gamma\1'),
]
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'


def _check_eye(key, value):
    """The frozen kernels carry no learned information; anything but ``eye(9)`` means a different model."""
    if tuple(value.shape) != (9, 1, 3, 3) or not torch.equal(value.float().cpu(), EYE_KERNELS):
        raise ValueError(f'{FAMILY}: {key} should be the frozen eye(9) kernel of shape (9, 1, 3, 3), got a '
                         f'tensor of shape {tuple(value.shape)} with other values; this checkpoint is not '
                         'from the STViT code this converter supports')


def _attention_key(rest, value, key):
    """Map a key inside ``StokenAttention``; ``None`` = drop, raises on unknown keys via the caller."""
    if rest in ('unfold.weights', 'fold.weights'):
        _check_eye(key, value)
        return None
    m = re.fullmatch(r'stoken_refine\.(qkv|proj)\.(weight|bias)', rest)
    return f'refine.{m.group(1)}.{m.group(2)}' if m else False


def convert_state_dict(state_dict):
    """Official ``STViT`` state dict -> :class:`mmsparse.models.STViT` state dict (backbone keys only)."""
    out, unknown = OrderedDict(), []
    for key, value in state_dict.items():
        if _CLS_ONLY.match(key):
            continue
        if '.shortcut' in key:  # the first upload's ResDWC (frozen eye(3) 'shortcut'): other semantics
            raise ValueError(f'{FAMILY}: {key} comes from the April-2023 STViT code whose ResDWC differs; '
                             'only checkpoints of the current code (commit c9ed9a4) can be converted')
        new = None
        m = re.fullmatch(r'patch_embed\.proj\.(\d+)\.(\w+)', key)
        if m and m.group(1) in _STEM:
            new = f'stem.{_STEM[m.group(1)]}.{m.group(2)}'
        md = re.fullmatch(rf'layers\.(\d+)\.downsample\.proj\.([01])\.{_BN}', key)
        if md:  # the official stage i ends with the downsampling that our stage i + 1 starts with
            layer = 'conv' if md.group(2) == '0' else 'norm'
            new = f'stages.{int(md.group(1)) + 1}.downsample.{layer}.{md.group(3)}'
        mb = re.fullmatch(r'layers\.(\d+)\.blocks\.(\d+)\.(.+)', key)
        if new is None and mb:
            prefix, rest = f'stages.{mb.group(1)}.blocks.{mb.group(2)}.', mb.group(3)
            if rest.startswith('attn.'):
                mapped = _attention_key(rest[len('attn.'):], value, key)
                if mapped is None:
                    continue
                new = prefix + 'attn.' + mapped if mapped else None
            else:
                for pattern, repl in _BLOCK:
                    if re.fullmatch(pattern, rest):
                        new = prefix + re.sub(pattern, repl, rest)
                        break
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise UnmappedKeysError(FAMILY, unknown)
    return out


def convert_attention_state_dict(state_dict):
    """Official ``StokenAttention`` state dict -> :class:`mmsparse.ops.SuperTokenAttention` state dict."""
    out, unknown = OrderedDict(), []
    for key, value in state_dict.items():
        new = _attention_key(key, value, key)
        if new is None:
            continue
        if new is False:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise UnmappedKeysError(FAMILY, unknown)
    return out


_STVIT_DEFAULTS = dict(
    in_chans=3, num_classes=1000, embed_dim=[96, 192, 384, 768], depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
    n_iter=[1, 1, 1, 1], stoken_size=[8, 4, 2, 1], mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0.,
    attn_drop_rate=0., drop_path_rate=0.1, projection=None, freeze_bn=False, use_checkpoint=False,
    checkpoint_num=[0, 0, 0, 0], layerscale=[False, False, False, False], init_values=1e-6)
# only affect the classification head, training or nothing at all
_STVIT_IGNORED = ('num_classes', 'projection', 'freeze_bn', 'use_checkpoint', 'checkpoint_num')

_STA_DEFAULTS = dict(stoken_size=[8, 8], n_iter=1, refine=True, refine_attention=True, num_heads=8,
                     qkv_bias=False, qk_scale=None, attn_drop=0., proj_drop=0.)


def _merge(defaults, kwargs, cls):
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ValueError(f'{cls}: unsupported constructor argument(s) {unknown}; known: {sorted(defaults)}')
    return {**defaults, **kwargs}


def build_stvit(official_kwargs):
    """``STViT(**official_kwargs)`` -> (our :class:`STViT` with ``out_norm_cfg=None``, converter)."""
    from mmsparse.models.backbones.stvit import STViT
    kw = _merge(_STVIT_DEFAULTS, official_kwargs, 'STViT')
    model = STViT(
        arch=dict(embed_dims=list(kw['embed_dim']), depths=list(kw['depths']), num_heads=list(kw['num_heads'])),
        in_channels=kw['in_chans'], stoken_size=list(kw['stoken_size']), n_iter=list(kw['n_iter']),
        mlp_ratio=kw['mlp_ratio'], qkv_bias=kw['qkv_bias'], qk_scale=kw['qk_scale'], drop_rate=kw['drop_rate'],
        attn_drop_rate=kw['attn_drop_rate'], drop_path_rate=kw['drop_path_rate'],
        layer_scale=[bool(v) for v in kw['layerscale']], layer_scale_init_value=kw['init_values'],
        out_norm_cfg=None, sta_impl='reference')  # the reference: model_from_official serves parity checks
    return model, convert_state_dict


def build_stoken_attention(official_kwargs):
    """``StokenAttention(**official_kwargs)`` -> (:class:`SuperTokenAttention`, converter)."""
    from mmsparse.ops.super_token_attention import SuperTokenAttention
    kw = _merge(dict(dim=None, **_STA_DEFAULTS), official_kwargs, 'StokenAttention')
    if kw['dim'] is None:
        raise ValueError('StokenAttention: the "dim" argument is required')
    if not (kw['refine'] and kw['refine_attention']):
        raise ValueError('StokenAttention: only refine=True, refine_attention=True (what every STViT model '
                         f'uses) is supported, got refine={kw["refine"]}, refine_attention={kw["refine_attention"]}')
    module = SuperTokenAttention(kw['dim'], kw['num_heads'], tuple(kw['stoken_size']), kw['n_iter'],
                                 qkv_bias=kw['qkv_bias'], qk_scale=kw['qk_scale'], attn_drop=kw['attn_drop'],
                                 proj_drop=kw['proj_drop'], impl='reference')
    return module, convert_attention_state_dict


OFFICIAL_CLASSES = {'STViT': build_stvit, 'StokenAttention': build_stoken_attention}
