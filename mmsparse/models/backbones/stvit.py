"""STViT backbone (Huang et al., "Vision Transformer with Super Token Sampling", CVPR 2023) for dense tasks.

Numerically the authors' ``STViT`` (hhb072/STViT ``models/stvit.py``) without its classification head; the
module tree follows the mmsparse skeleton (``stem``, ``stages.i.{downsample,blocks}``, ``norm{i}``) and
``mmsparse.converters.stvit`` maps the official keys onto it.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath

from mmsparse.converters import stvit as stvit_keys
from mmsparse.models.layers import LayerScale2d, drop_path_rates, per_stage
from mmsparse.ops import SuperTokenAttention
from mmsparse.ops.checks import (DEFAULT_IMPL, check_each, check_layer_cfg, check_positive_int,
                                 check_positive_number, check_rate)
from mmsparse.registry import MODELS
from .base import BackboneStage, SparseBackbone, resolve_arch

__all__ = ['STViT', 'STViTBlock']


def _conv_act_norm(in_channels: int, out_channels: int, stride: int, norm_cfg: dict) -> nn.Sequential:
    """3×3 conv (with bias) -> GELU -> norm: the authors' stem order (activation *before* the norm)."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, 3, stride, 1),
        act=nn.GELU(),
        norm=build_norm_layer(norm_cfg, out_channels)[1]))


class STViTFFN(nn.Module):
    """The authors' ``Mlp``: 1×1 conv -> GELU -> dropout -> ``h + DW3×3(h)`` -> 1×1 conv -> dropout.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, embed_dims: int, hidden_dims: int, drop: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(embed_dims, hidden_dims, 1)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden_dims, hidden_dims, 3, 1, 1, groups=hidden_dims)
        self.fc2 = nn.Conv2d(hidden_dims, embed_dims, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        x = x + self.dwconv(x)  # residual depthwise conv, no activation after it (HEAD semantics)
        return self.drop(self.fc2(x))


@MODELS.register_module()
class STViTBlock(nn.Module):
    """One STViT block (the authors' ``StokenAttentionLayer``).

    ``x = x + DW3×3(x)`` (conditional position encoding), then
    ``x = x + DropPath(γ1 · STA(LN2d(x)))`` and ``x = x + DropPath(γ2 · FFN(BN(x)))``.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads of the super-token MHSA.
        stoken_size (int | tuple[int, int]): super-token cell; 1 gives global MHSA.
        n_iter (int): association rounds.
        mlp_ratio (float): FFN hidden width / C.
        qkv_bias (bool), qk_scale (float | None): MHSA settings.
        drop (float): dropout in the FFN. attn_drop (float): attention dropout.
        drop_path (float): stochastic-depth rate.
        layer_scale (bool): learnable per-channel scales γ1, γ2 (:class:`LayerScale2d`).
        layer_scale_init_value (float): their initial value.
        norm_cfg (dict): the FFN pre-norm (the authors use BatchNorm).
        impl (str): ``'fast'`` or ``'reference'``, see :class:`SuperTokenAttention`.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, embed_dims: int, num_heads: int, stoken_size: int | tuple[int, int], n_iter: int = 1,
                 mlp_ratio: float = 4., qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.,
                 attn_drop: float = 0., drop_path: float = 0., layer_scale: bool = False,
                 layer_scale_init_value: float = 1e-6, norm_cfg: dict = dict(type='BN'),
                 impl: str = DEFAULT_IMPL) -> None:
        super().__init__()
        self.cpe = nn.Conv2d(embed_dims, embed_dims, 3, 1, 1, groups=embed_dims)
        self.norm1 = build_norm_layer(dict(type='LN2d', eps=1e-6), embed_dims)[1]
        self.attn = SuperTokenAttention(embed_dims, num_heads, stoken_size, n_iter, qkv_bias=qkv_bias,
                                        qk_scale=qk_scale, attn_drop=attn_drop, impl=impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = STViTFFN(embed_dims, int(embed_dims * mlp_ratio), drop)
        self.gamma1 = LayerScale2d(embed_dims, layer_scale_init_value) if layer_scale else nn.Identity()
        self.gamma2 = LayerScale2d(embed_dims, layer_scale_init_value) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe(x)  # the CPE output is the residual stream for both branches
        x = x + self.drop_path(self.gamma1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.gamma2(self.ffn(self.norm2(x))))


@MODELS.register_module()
class STViT(SparseBackbone):
    """STViT backbone returning dense features at strides 4, 8, 16 and 32.

    Every output is the last block's output of a stage, taken before the downsampling that feeds the next
    stage (spec §3.1), optionally followed by a per-output norm.

    Args:
        arch (str | dict): ``'small'``, ``'base'``, ``'large'`` (aliases ``'s'``, ``'b'``, ``'l'``) or a dict
            with ``embed_dims``, ``depths``, ``num_heads`` (4-lists) and optionally ``layer_scale`` (4 bools).
        in_channels (int): input channels. Default 3.
        stoken_size (int | sequence | None): super-token size per stage: 4 entries, each an int or an (h, w)
            pair; 1 means global attention. ``None`` keeps the trained ``[8, 4, 1, 1]``.
        n_iter (int | sequence[int]): association rounds, one per stage or one for all. Default 1.
        mlp_ratio (float): FFN expansion. Default 4.
        qkv_bias (bool), qk_scale (float | None): MHSA settings (authors: True, None).
        drop_rate (float): dropout after the stem and in the FFNs. attn_drop_rate (float): attention dropout.
        drop_path_rate (float): stochastic-depth rate, linearly increased over all blocks.
        layer_scale (bool | sequence[bool] | None): layer scale per stage; ``None`` takes the arch's
            (S: none; B, L: stages 3–4).
        layer_scale_init_value (float): initial γ. Default 1e-6.
        out_indices (int | sequence[int]): stages to output. Default (0, 1, 2, 3).
        frozen_stages (int): freeze the stem and stages ``0 .. frozen_stages-1`` (-1: none). Stage ``i``
            includes the downsampling that feeds it.
        norm_eval (bool): keep the BatchNorms in eval mode while training.
        with_cp (bool): gradient checkpointing per block.
        norm_cfg (dict): the stem, downsampling and FFN pre-norms; the authors use ``dict(type='BN')``
            (use ``SyncBN`` for multi-GPU dense training).
        out_norm_cfg (dict | None): norm added to every output. Default ``dict(type='LN2d', eps=1e-6)``: an
            mmsparse choice, not the authors' (their model has no dense outputs). The tapped features are raw
            residual streams whose scale grows with depth, so, as for Swin / ConvNeXt / BiFormer's dense
            backbone, a freshly initialised LN per output gives the neck inputs of a comparable scale.
            ``None`` returns the raw features (equal to the authors' model).
        impl (str): ``'fast'`` (default; fused SDPA, memory-efficient where available, which global attention
            at detection scale needs) or ``'reference'`` (the authors' numerics). Also a property: setting it
            after building switches every operator.
        init_cfg (dict | list | None): e.g. ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``;
            raw official checkpoints are converted on the fly.
        pretrained (str, optional): Deprecated (mmseg style, what stock mmseg models pass): a checkpoint,
            mapped to ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``. Default: None.

    Shapes:
        (B, in_channels, H, W) -> tuple of (B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2))) for i in out_indices.
    """

    arch_zoo = {
        'small': dict(embed_dims=[64, 128, 320, 512], depths=[3, 5, 9, 3], num_heads=[1, 2, 5, 8],
                      layer_scale=[False, False, False, False]),
        'base': dict(embed_dims=[96, 192, 384, 512], depths=[4, 6, 14, 6], num_heads=[2, 3, 6, 8],
                     layer_scale=[False, False, True, True]),
        'large': dict(embed_dims=[96, 192, 448, 640], depths=[4, 7, 19, 8], num_heads=[2, 3, 7, 10],
                      layer_scale=[False, False, True, True]),
    }
    arch_aliases = {'s': 'small', 'b': 'base', 'l': 'large'}
    official_converter = staticmethod(stvit_keys.convert_state_dict)
    upgrade_state_dict = staticmethod(stvit_keys.upgrade_state_dict)

    def __init__(self, arch: str | dict = 'small', in_channels: int = 3,
                 stoken_size: int | Sequence[int | tuple[int, int]] | None = None,
                 n_iter: int | Sequence[int] = 1, mlp_ratio: float = 4., qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0., layer_scale: bool | Sequence[bool] | None = None,
                 layer_scale_init_value: float = 1e-6, out_indices: int | Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 norm_cfg: dict = dict(type='BN'), out_norm_cfg: dict | None = dict(type='LN2d', eps=1e-6),
                 impl: str = DEFAULT_IMPL, init_cfg: dict | list[dict] | None = None,
                 pretrained: str | None = None) -> None:
        super().__init__(init_cfg=init_cfg, pretrained=pretrained)
        self.setup_skeleton(out_indices, frozen_stages, norm_eval, with_cp, impl)
        arch = resolve_arch(arch, self.arch_zoo, self.arch_aliases, ('embed_dims', 'depths', 'num_heads'),
                            ('layer_scale', ))
        n = self.num_stages
        dims, depths, heads = (per_stage(arch[k], f'arch["{k}"]', n, int) for k in ('embed_dims', 'depths',
                                                                                    'num_heads'))
        for key, values in (('embed_dims', dims), ('depths', depths), ('num_heads', heads)):
            check_each(values, check_positive_int, f'arch["{key}"]')
        stoken_size = per_stage([8, 4, 1, 1] if stoken_size is None else stoken_size, 'stoken_size', n,
                                (int, tuple, list))
        n_iter = per_stage(n_iter, 'n_iter', n, int)
        if layer_scale is None:
            layer_scale = arch.get('layer_scale', [False] * n)
        layer_scale = per_stage(layer_scale, 'layer_scale', n, bool)
        check_positive_number(mlp_ratio, 'mlp_ratio')
        self.in_channels = check_positive_int(in_channels, 'in_channels')
        check_layer_cfg(norm_cfg, 'norm_cfg', 'BN')
        drop_rate = check_rate(drop_rate, 'drop_rate')
        attn_drop_rate = check_rate(attn_drop_rate, 'attn_drop_rate')
        self.embed_dims = dims

        half = dims[0] // 2
        self.stem = nn.Sequential(
            _conv_act_norm(in_channels, half, 2, norm_cfg), _conv_act_norm(half, half, 1, norm_cfg),
            _conv_act_norm(half, dims[0], 2, norm_cfg), _conv_act_norm(dims[0], dims[0], 1, norm_cfg))
        self.stem_drop = nn.Dropout(drop_rate)

        rates = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList()
        for i in range(n):
            downsample = None
            if i > 0:
                downsample = nn.Sequential(OrderedDict(
                    conv=nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1), norm=build_norm_layer(norm_cfg, dims[i])[1]))
            blocks = [
                STViTBlock(dims[i], heads[i], stoken_size[i], n_iter[i], mlp_ratio, qkv_bias, qk_scale,
                           drop=drop_rate, attn_drop=attn_drop_rate, drop_path=rates[i][j],
                           layer_scale=layer_scale[i], layer_scale_init_value=layer_scale_init_value,
                           norm_cfg=norm_cfg, impl=impl) for j in range(depths[i])
            ]
            self.stages.append(BackboneStage(blocks, downsample, with_cp=self.with_cp))
        self.finish_skeleton(out_norm_cfg, dims)
        self.impl = impl

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem_drop(self.stem(x))  # the authors' dropout after the stem
