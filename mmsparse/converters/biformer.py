"""BiFormer: the authors' checkpoints and classes (rayleizhu/BiFormer) to :class:`mmsparse.models.BiFormer`.

Key mapping (official -> mmsparse):

=====================================  ========================================
``downsample_layers.0.{0,1}.``         ``stem.0.{conv,bn}.``
``downsample_layers.0.{3,4}.``         ``stem.1.{conv,bn}.``
``downsample_layers.{i}.{0,1}.``       ``downsamples.{i-1}.{conv,bn}.`` (i = 1..3)
``stages.s.j.``                        ``layers.s.j.``
``stages.s.j.attn.qkv.qkv.``           ``layers.s.j.attn.qkv.`` (BRA, stages 0-2)
``stages.s.j.attn.wo.``                ``layers.s.j.attn.proj.``
``stages.s.j.mlp.{0,3}.weight`` (2-D)  ``layers.s.j.mlp.{fc1,fc2}.weight`` (1x1 conv, 4-D)
``extra_norms.{i}.``                   ``out_norms.{i}.`` (``BiFormer_mm`` only)
``norm.*``, ``head.*``                 dropped (classification only)
=====================================  ========================================

No mmsparse key equals an official one, so a raw official file is always recognised as such. Everything
else in a block (``pos_embed``, ``norm1``, ``norm2``, ``attn.lepe``, stage 4's ``attn.qkv`` and
``attn.proj``) keeps its name. Unknown keys raise :class:`UnmappedKeysError`.
"""
import re
from collections import OrderedDict

from .common import UnmappedKeysError

__all__ = ['convert_state_dict', 'convert_dense_state_dict', 'OFFICIAL_CLASSES']

FAMILY = 'biformer'

_DROP = re.compile(r'^(norm|head)\.')
# (pattern, replacement) tried in order; the first match wins
_RULES = [
    (re.compile(r'^downsample_layers\.0\.0\.(weight|bias)$'), r'stem.0.conv.\1'),
    (re.compile(r'^downsample_layers\.0\.1\.(\w+)$'), r'stem.0.bn.\1'),
    (re.compile(r'^downsample_layers\.0\.3\.(weight|bias)$'), r'stem.1.conv.\1'),
    (re.compile(r'^downsample_layers\.0\.4\.(\w+)$'), r'stem.1.bn.\1'),
    (re.compile(r'^downsample_layers\.([1-3])\.0\.(weight|bias)$'), None),  # index shift, see _rename
    (re.compile(r'^downsample_layers\.([1-3])\.1\.(\w+)$'), None),
    (re.compile(r'^stages\.([0-3]\.\d+)\.(pos_embed|norm1|norm2|attn\.lepe|attn\.proj)\.(weight|bias)$'),
     r'layers.\1.\2.\3'),
    (re.compile(r'^stages\.([0-3]\.\d+)\.attn\.qkv\.qkv\.(weight|bias)$'), r'layers.\1.attn.qkv.\2'),
    (re.compile(r'^stages\.([0-3]\.\d+)\.attn\.qkv\.weight$'), r'layers.\1.attn.qkv.weight'),
    (re.compile(r'^stages\.([0-3]\.\d+)\.attn\.wo\.(weight|bias)$'), r'layers.\1.attn.proj.\2'),
    (re.compile(r'^stages\.([0-3]\.\d+)\.mlp\.0\.(weight|bias)$'), r'layers.\1.mlp.fc1.\2'),
    (re.compile(r'^stages\.([0-3]\.\d+)\.mlp\.3\.(weight|bias)$'), r'layers.\1.mlp.fc2.\2'),
    (re.compile(r'^extra_norms\.([0-3])\.(weight|bias)$'), r'out_norms.\1.\2'),
]


def _rename(key):
    """mmsparse name of an official backbone key, or None if the key is unknown."""
    for pattern, repl in _RULES:
        m = pattern.match(key)
        if not m:
            continue
        if repl is None:  # downsample_layers.i.{0,1} -> downsamples.{i-1}.{conv,bn}
            stage, rest = int(m.group(1)), m.group(2)
            sub = 'conv' if key.split('.')[2] == '0' else 'bn'
            return f'downsamples.{stage - 1}.{sub}.{rest}'
        return m.expand(repl)
    return None


def convert_state_dict(state_dict):
    """Official ``BiFormer`` / ``BiFormer_mm`` keys -> mmsparse ``BiFormer`` keys.

    Drops the classification ``norm.*`` and ``head.*``; reshapes the MLP Linear weights to 1x1-conv
    weights; raises :class:`UnmappedKeysError` listing every key it does not know.
    """
    out, unknown = OrderedDict(), []
    for key, value in state_dict.items():
        if _DROP.match(key):
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
            continue
        if re.search(r'\.mlp\.fc[12]\.weight$', new) and value.dim() == 2:
            value = value[:, :, None, None]
        out[new] = value
    if unknown:
        raise UnmappedKeysError(FAMILY, unknown)
    return out


#: top-level prefixes of mmdet 2.x / mmseg 0.x neck and head keys whose names mmdet 3.x / mmseg 1.x kept
#: for the heads the BiFormer recipes use (FPN, RPNHead, StandardRoIHead with Shared2FC + FCNMaskHead,
#: RetinaHead, UPerHead, FCNHead, FPNHead)
DENSE_PASS_THROUGH = ('neck.', 'rpn_head.', 'roi_head.', 'bbox_head.', 'decode_head.', 'auxiliary_head.')


def convert_dense_state_dict(state_dict):
    """The authors' mmdet 2.x / mmseg 0.x detector or segmentor state dict -> mmdet 3.x / mmseg 1.x keys.

    ``backbone.*`` (``BiFormer_mm`` keys, ``extra_norms`` included) is converted with
    :func:`convert_state_dict`; neck and head keys under :data:`DENSE_PASS_THROUGH` keep their names (the
    2.x -> 3.x heads used by the recipes did not rename parameters). Anything else raises
    :class:`UnmappedKeysError`.
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


# ----------------------------------------------------------------------------------------------------------
# Official classes -> mmsparse modules (for model_from_official and the parity tests)

#: constructor defaults of the authors' ``BiFormer`` (models/biformer.py), used for absent kwargs
_BIFORMER_DEFAULTS = dict(
    depth=[3, 4, 8, 3], in_chans=3, num_classes=1000, embed_dim=[64, 128, 320, 512], head_dim=64,
    qk_scale=None, representation_size=None, drop_path_rate=0., drop_rate=0., use_checkpoint_stages=[],
    n_win=7, kv_downsample_mode='ada_avgpool', kv_per_wins=[2, 2, -1, -1], topks=[8, 8, -1, -1],
    side_dwconv=5, layer_scale_init_value=-1, qk_dims=[None, None, None, None], param_routing=False,
    diff_routing=False, soft_routing=False, pre_norm=True, pe=None, pe_stages=[0], before_attn_dwconv=3,
    auto_pad=False, kv_downsample_kernels=[4, 2, 1, 1], kv_downsample_ratios=[4, 2, 1, 1],
    mlp_ratios=[4, 4, 4, 4], param_attention='qkvo', mlp_dwconv=False)
#: extra constructor defaults of ``BiFormer_mm`` (object_detection/models_mm/biformer_mm.py)
_BIFORMER_MM_DEFAULTS = dict(pretrained=None, norm_eval=True, disable_bn_grad=False)
#: constructor defaults of the legacy ``BiLevelRoutingAttention`` (ops/bra_legacy.py)
_BRA_DEFAULTS = dict(
    num_heads=8, n_win=7, qk_dim=None, qk_scale=None, kv_per_win=4, kv_downsample_ratio=4,
    kv_downsample_kernel=None, kv_downsample_mode='identity', topk=4, param_attention='qkvo',
    param_routing=False, diff_routing=False, soft_routing=False, side_dwconv=3, auto_pad=False)

#: official options the released models never change and mmsparse does not implement: name -> required value
_FIXED = dict(kv_downsample_mode='identity', param_routing=False, diff_routing=False, soft_routing=False,
              param_attention='qkvo', layer_scale_init_value=-1, pre_norm=True, pe=None, before_attn_dwconv=3,
              mlp_dwconv=False, representation_size=None, drop_rate=0., pretrained=None)


def _merge(official_kwargs, *defaults):
    merged = {}
    for d in defaults:
        merged.update(d)
    unknown = set(official_kwargs) - set(merged)
    if unknown:
        raise ValueError(f'unknown official constructor argument(s) {sorted(unknown)}; '
                         f'known: {sorted(merged)}')
    merged.update(official_kwargs)
    for name, required in _FIXED.items():
        if name in merged and merged[name] != required:
            # layer_scale_init_value: any value <= 0 means "off" in the official code
            if name == 'layer_scale_init_value' and merged[name] <= 0:
                continue
            raise NotImplementedError(f'official {name}={merged[name]!r} is not supported by mmsparse '
                                      f'(the released BiFormers use {required!r})')
    return merged


def _backbone_kwargs(kw):
    qk_dims = [q if q is not None else e for q, e in zip(kw['qk_dims'], kw['embed_dim'])]
    return dict(
        arch=dict(embed_dims=list(kw['embed_dim']), depths=list(kw['depth']), head_dim=kw['head_dim'],
                  mlp_ratios=list(kw['mlp_ratios']), qk_dims=qk_dims),
        in_channels=kw['in_chans'], n_win=kw['n_win'], topks=list(kw['topks']), auto_pad=kw['auto_pad'],
        side_dwconv=kw['side_dwconv'], qk_scale=kw['qk_scale'], drop_path_rate=kw['drop_path_rate'])


def _build_biformer(official_kwargs):
    """``BiFormer(**kw)`` -> our backbone with raw stage outputs (``out_norm_cfg=None``)."""
    from mmsparse.models.backbones.biformer import BiFormer
    kw = _merge(official_kwargs, _BIFORMER_DEFAULTS)
    # the reference BRA: model_from_official serves parity checks against the authors' outputs
    model = BiFormer(**_backbone_kwargs(kw), out_norm_cfg=None, attn_impl='gather')
    return model, convert_state_dict


def _build_biformer_mm(official_kwargs):
    """``BiFormer_mm(**kw)`` -> our backbone with LayerNorm2d output norms (``extra_norms``)."""
    import torch.nn as nn

    from mmsparse.models.backbones.biformer import BiFormer
    kw = _merge(official_kwargs, _BIFORMER_DEFAULTS, _BIFORMER_MM_DEFAULTS)
    kw.pop('num_classes')  # the wrapper deletes the head
    model = BiFormer(**_backbone_kwargs(kw), norm_eval=kw['norm_eval'],
                     out_norm_cfg=dict(type='LN2d', eps=1e-6), attn_impl='gather')
    if kw['disable_bn_grad']:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.requires_grad_(False)
    return model, convert_state_dict


def _convert_bra(state_dict):
    out, unknown = OrderedDict(), []
    for key, value in state_dict.items():
        new = _rename('stages.0.0.attn.' + key)
        if new is None or not new.startswith('layers.0.0.attn.'):
            unknown.append(key)
        else:
            out[new[len('layers.0.0.attn.'):]] = value
    if unknown:
        raise UnmappedKeysError(FAMILY, unknown)
    return out


def _build_bra(official_kwargs):
    """Legacy ``BiLevelRoutingAttention(**kw)`` (NHWC) -> our NCHW layer (permute around it)."""
    from mmsparse.ops.routing_attention import BiLevelRoutingAttention
    if 'dim' not in official_kwargs:
        raise ValueError('BiLevelRoutingAttention needs the official "dim" argument')
    kw = dict(official_kwargs)
    dim = kw.pop('dim')
    kw = _merge(kw, _BRA_DEFAULTS)
    layer = BiLevelRoutingAttention(dim, num_heads=kw['num_heads'], n_win=kw['n_win'], topk=kw['topk'],
                                    qk_dim=kw['qk_dim'], qk_scale=kw['qk_scale'], side_dwconv=kw['side_dwconv'],
                                    auto_pad=kw['auto_pad'], impl='gather')
    return layer, _convert_bra


OFFICIAL_CLASSES = {
    'BiFormer': _build_biformer,
    'BiFormer_mm': _build_biformer_mm,
    'BiLevelRoutingAttention': _build_bra,
}
