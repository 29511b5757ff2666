"""Build the mmsparse module equal to one of the authors' classes, for parity tests against their outputs.

:func:`model_from_official` takes the authors' class name and constructor keyword arguments (their defaults
fill the rest; unknown or unsupported arguments raise), builds the mmsparse module with ``impl='reference'``
(the authors-exact paths) and, given the authors' state dict, converts it with the family's key map and loads
it strictly. The golden fixtures in ``tests/data/fixtures`` record exactly these class names and kwargs.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Tuple

import torch
import torch.nn as nn

from mmsparse.converters import biformer, cloformer, stvit
from mmsparse.families import LiveMapping, get_family, list_families
from mmsparse.models.backbones import BiFormer, CloFormer, STViT
from mmsparse.ops import AttnConv, BiLevelRoutingAttention, SuperTokenAttention
from mmsparse.utils.checkpoint import unwrap_state_dict

__all__ = ['OFFICIAL_CLASSES', 'BIFORMER_CLASSES', 'CLOFORMER_CLASSES', 'STVIT_CLASSES', 'model_from_official']

#: a state dict converter: the authors' keys -> mmsparse keys
Converter = Callable[[Any], 'OrderedDict[str, torch.Tensor]']
#: what a builder returns: the mmsparse module and the converter of its state dicts
Built = Tuple[nn.Module, Converter]


def _merge(defaults: dict[str, Any], kwargs: dict[str, Any], cls: str) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ValueError(f'{cls}: unsupported constructor argument(s) {unknown}; known: {sorted(defaults)}')
    return {**defaults, **kwargs}


# ----------------------------------------------------------------------------------------------------------
# BiFormer (rayleizhu/BiFormer)

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


def _merge_biformer(official_kwargs: dict[str, Any], cls: str, *defaults: dict[str, Any]) -> dict[str, Any]:
    merged = _merge(dict(kv for d in defaults for kv in d.items()), official_kwargs, cls)
    for name, required in _FIXED.items():
        if name in merged and merged[name] != required:
            # layer_scale_init_value: any value <= 0 means "off" in the official code
            if name == 'layer_scale_init_value' and merged[name] <= 0:
                continue
            raise NotImplementedError(f'official {name}={merged[name]!r} is not supported by mmsparse '
                                      f'(the released BiFormers use {required!r})')
    return merged


def _backbone_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    qk_dims = [q if q is not None else e for q, e in zip(kw['qk_dims'], kw['embed_dim'])]
    return dict(
        arch=dict(embed_dims=list(kw['embed_dim']), depths=list(kw['depth']), head_dim=kw['head_dim'],
                  mlp_ratios=list(kw['mlp_ratios']), qk_dims=qk_dims),
        in_channels=kw['in_chans'], n_win=kw['n_win'], topks=list(kw['topks']), auto_pad=kw['auto_pad'],
        side_dwconv=kw['side_dwconv'], qk_scale=kw['qk_scale'], drop_path_rate=kw['drop_path_rate'])


def _build_biformer(official_kwargs: dict[str, Any]) -> Built:
    """``BiFormer(**kw)`` -> our backbone with raw stage outputs (``out_norm_cfg=None``)."""
    kw = _merge_biformer(official_kwargs, 'BiFormer', _BIFORMER_DEFAULTS)
    # the reference BRA: model_from_official serves parity checks against the authors' outputs
    model = BiFormer(**_backbone_kwargs(kw), out_norm_cfg=None, impl='reference')
    return model, biformer.convert_state_dict


def _build_biformer_mm(official_kwargs: dict[str, Any]) -> Built:
    """``BiFormer_mm(**kw)`` -> our backbone with LayerNorm2d output norms (``extra_norms``)."""
    kw = _merge_biformer(official_kwargs, 'BiFormer_mm', _BIFORMER_DEFAULTS, _BIFORMER_MM_DEFAULTS)
    kw.pop('num_classes')  # the wrapper deletes the head
    model = BiFormer(**_backbone_kwargs(kw), norm_eval=kw['norm_eval'],
                     out_norm_cfg=dict(type='LN2d', eps=1e-6), impl='reference')
    if kw['disable_bn_grad']:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.requires_grad_(False)
    return model, biformer.convert_state_dict


def _convert_bra(state_dict: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Legacy BRA keys: converted as the attention of the first block of stage 0."""
    src, dst = 'stages.0.0.attn.', 'stages.0.blocks.0.attn.'
    out = biformer.convert_state_dict(OrderedDict((src + k, v) for k, v in state_dict.items()))
    return OrderedDict((k[len(dst):], v) for k, v in out.items())


def _build_bra(official_kwargs: dict[str, Any]) -> Built:
    """Legacy ``BiLevelRoutingAttention(**kw)`` (NHWC) -> our NCHW layer (permute around it)."""
    if 'dim' not in official_kwargs:
        raise ValueError('BiLevelRoutingAttention needs the official "dim" argument')
    kw = dict(official_kwargs)
    dim = kw.pop('dim')
    kw = _merge_biformer(kw, 'BiLevelRoutingAttention', _BRA_DEFAULTS)
    layer = BiLevelRoutingAttention(dim, num_heads=kw['num_heads'], n_win=kw['n_win'], topk=kw['topk'],
                                    qk_dim=kw['qk_dim'], qk_scale=kw['qk_scale'], side_dwconv=kw['side_dwconv'],
                                    auto_pad=kw['auto_pad'], impl='reference')
    return layer, _convert_bra


# ----------------------------------------------------------------------------------------------------------
# CloFormer (qhfan/CloFormer)

_CLOFORMER_DEFAULTS = dict(in_chans=3, num_classes=1000, embed_dims=None, depths=None, num_heads=None,
                           group_splits=None, kernel_sizes=None, window_sizes=None, mlp_kernel_sizes=None,
                           mlp_ratios=None, attn_drop=0., mlp_drop=0., qkv_bias=True, drop_path_rate=0.1,
                           use_checkpoint=False)
_EFFICIENT_ATTENTION_DEFAULTS = dict(dim=None, num_heads=None, group_split=None, kernel_sizes=None, window_size=7,
                                     attn_drop=0., proj_drop=0., qkv_bias=True)


def _required(kw: dict[str, Any], cls: str) -> dict[str, Any]:
    absent = sorted(k for k, v in kw.items() if v is None)
    if absent:
        raise ValueError(f'{cls}: the official argument(s) {absent} are required (they have no default)')
    return kw


def _build_cloformer(official_kwargs: dict[str, Any]) -> Built:
    """The backbone equal to ``CloFormer(**kwargs)`` up to its raw taps (no output norms, no head)."""
    kw = _required(_merge(_CLOFORMER_DEFAULTS, official_kwargs, 'CloFormer'), 'CloFormer')
    num_stages = len(kw['depths'])
    per_stage = {k: kw[k] if isinstance(kw[k], (list, tuple)) else [kw[k]] * num_stages
                 for k in ('mlp_kernel_sizes', 'mlp_ratios')}
    arch = dict(embed_dims=kw['embed_dims'], depths=kw['depths'], num_heads=kw['num_heads'],
                group_splits=kw['group_splits'], kernel_sizes=kw['kernel_sizes'],
                window_sizes=kw['window_sizes'], **per_stage)
    model = CloFormer(arch=arch, in_channels=kw['in_chans'], drop_path_rate=kw['drop_path_rate'],
                      attn_drop_rate=kw['attn_drop'], drop_rate=kw['mlp_drop'], qkv_bias=kw['qkv_bias'],
                      with_cp=kw['use_checkpoint'], out_norm_cfg=None, impl='reference')
    return model, cloformer.convert_state_dict


def _build_efficient_attention(official_kwargs: dict[str, Any]) -> Built:
    """The :class:`~mmsparse.ops.AttnConv` equal to ``EfficientAttention(**kwargs)``."""
    kw = _required(_merge(_EFFICIENT_ATTENTION_DEFAULTS, official_kwargs, 'EfficientAttention'),
                   'EfficientAttention')
    module = AttnConv(kw['dim'], kw['num_heads'], kw['group_split'], kw['kernel_sizes'], kw['window_size'],
                      attn_drop=kw['attn_drop'], proj_drop=kw['proj_drop'], qkv_bias=kw['qkv_bias'],
                      impl='reference')
    return module, cloformer.convert_attention_state_dict


# ----------------------------------------------------------------------------------------------------------
# STViT (hhb072/STViT)

_STVIT_DEFAULTS = dict(
    in_chans=3, num_classes=1000, embed_dim=[96, 192, 384, 768], depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
    n_iter=[1, 1, 1, 1], stoken_size=[8, 4, 2, 1], mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0.,
    attn_drop_rate=0., drop_path_rate=0.1, projection=None, freeze_bn=False, use_checkpoint=False,
    checkpoint_num=[0, 0, 0, 0], layerscale=[False, False, False, False], init_values=1e-6)

_STA_DEFAULTS = dict(stoken_size=[8, 8], n_iter=1, refine=True, refine_attention=True, num_heads=8,
                     qkv_bias=False, qk_scale=None, attn_drop=0., proj_drop=0.)


def _build_stvit(official_kwargs: dict[str, Any]) -> Built:
    """``STViT(**official_kwargs)`` -> (our :class:`STViT` with ``out_norm_cfg=None``, converter)."""
    kw = _merge(_STVIT_DEFAULTS, official_kwargs, 'STViT')
    model = STViT(
        arch=dict(embed_dims=list(kw['embed_dim']), depths=list(kw['depths']), num_heads=list(kw['num_heads'])),
        in_channels=kw['in_chans'], stoken_size=list(kw['stoken_size']), n_iter=list(kw['n_iter']),
        mlp_ratio=kw['mlp_ratio'], qkv_bias=kw['qkv_bias'], qk_scale=kw['qk_scale'], drop_rate=kw['drop_rate'],
        attn_drop_rate=kw['attn_drop_rate'], drop_path_rate=kw['drop_path_rate'],
        layer_scale=[bool(v) for v in kw['layerscale']], layer_scale_init_value=kw['init_values'],
        out_norm_cfg=None, impl='reference')  # the reference: model_from_official serves parity checks
    return model, stvit.convert_state_dict


def _build_stoken_attention(official_kwargs: dict[str, Any]) -> Built:
    """``StokenAttention(**official_kwargs)`` -> (:class:`SuperTokenAttention`, converter)."""
    kw = _merge(dict(dim=None, **_STA_DEFAULTS), official_kwargs, 'StokenAttention')
    if kw['dim'] is None:
        raise ValueError('StokenAttention: the "dim" argument is required')
    if not (kw['refine'] and kw['refine_attention']):
        raise ValueError('StokenAttention: only refine=True, refine_attention=True (what every STViT model '
                         f'uses) is supported, got refine={kw["refine"]}, refine_attention={kw["refine_attention"]}')
    module = SuperTokenAttention(kw['dim'], kw['num_heads'], tuple(kw['stoken_size']), kw['n_iter'],
                                 qkv_bias=kw['qkv_bias'], qk_scale=kw['qk_scale'], attn_drop=kw['attn_drop'],
                                 proj_drop=kw['proj_drop'], impl='reference')
    return module, stvit.convert_attention_state_dict


#: the authors' class name -> ``build(official_kwargs) -> (module, convert_fn)``, per family (the family specs
#: of :mod:`mmsparse.families` name these tables)
BIFORMER_CLASSES = {'BiFormer': _build_biformer, 'BiFormer_mm': _build_biformer_mm,
                    'BiLevelRoutingAttention': _build_bra}
CLOFORMER_CLASSES = {'CloFormer': _build_cloformer, 'EfficientAttention': _build_efficient_attention}
STVIT_CLASSES = {'STViT': _build_stvit, 'StokenAttention': _build_stoken_attention}


def _official_classes() -> dict[str, Callable[[dict[str, Any]], Built]]:
    return {name: build for fam in list_families() for name, build in (get_family(fam).official or {}).items()}


#: every registered family's builders, by the authors' class name (a live view of :mod:`mmsparse.families`)
OFFICIAL_CLASSES = LiveMapping(_official_classes, "the authors' class name -> build(official_kwargs)")


def model_from_official(official_class: str, official_kwargs: dict[str, Any] | None = None,
                        state_dict: dict[str, Any] | None = None) -> nn.Module:
    """The mmsparse module, in eval mode, equal to the authors' ``official_class(**official_kwargs)``.

    ``state_dict`` (the authors' keys) is converted and loaded strictly: every tensor, BN buffers included,
    must find its place (else ``KeyError``). An unknown class or argument raises ``ValueError``; an official
    option mmsparse does not implement, ``NotImplementedError``.
    """
    classes = _official_classes()
    if official_class not in classes:
        raise ValueError(f'official_class={official_class!r} is not supported; choose one of {sorted(classes)}')
    module, convert_fn = classes[official_class](dict(official_kwargs or {}))
    if state_dict is not None:
        sd = convert_fn(unwrap_state_dict(state_dict))
        missing, unexpected = module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise KeyError(f'{official_class}: converted state dict does not match the mmsparse module; '
                           f'missing {list(missing)[:20]}, unexpected {list(unexpected)[:20]}')
    return module.eval()
