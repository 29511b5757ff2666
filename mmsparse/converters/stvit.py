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

The qkv layout (interleaved per head) is kept as is, so qkv weights copy over unchanged.
"""
import re
from collections import OrderedDict

import torch

from .common import UnmappedKeysError

__all__ = ['convert_state_dict', 'convert_attention_state_dict', 'upgrade_state_dict', 'EYE_KERNELS']

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
    (r'gamma_([12])$', r'gamma\1.gamma'),
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
            out[new] = value.reshape(-1, 1, 1) if new.endswith('.gamma') else value
    if unknown:
        raise UnmappedKeysError(FAMILY, unknown)
    return out


def upgrade_state_dict(state_dict):
    """A state dict of the first mmsparse ``STViT`` layout (layer scales as bare ``gamma1`` / ``gamma2``
    parameters of shape (1, C, 1, 1)) -> the current keys; other keys unchanged."""
    out = OrderedDict()
    for key, value in state_dict.items():
        if re.search(r'\.gamma[12]$', key):
            key, value = key + '.gamma', value.reshape(-1, 1, 1)
        out[key] = value
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
