"""CloFormer backbone for dense prediction (mmdet / mmseg), numerically equal to the authors' code.

Reference: Fan et al., "Rethinking Local Perception in Lightweight Vision Transformer" (arXiv 2303.17803),
official code qhfan/CloFormer ``9181f69`` (classification only; there is no official dense version).

Layout, top to bottom: conv stem (stride 4) -> 4 stages of ``EfficientBlock`` (GroupNorm(1, C) -> AttnConv
residual, then GroupNorm(1, C) -> ConvFFN residual). The *last* block of stages 1-3 has stride 2 and widens to the
next stage, so the authors downsample at the end of a stage. Dense outputs are therefore tapped inside that block,
after the attention residual and before the stride-2 FFN / shortcut (the authors' successor FAT does the same);
stage 4 emits its output. Channels are the stage widths, strides 4/8/16/32 (ceil division for odd sizes).

Containers follow the mmsparse skeleton (``stem``, ``stages.i.blocks.j``, output norms ``norm{i}``); inside them
the names equal the authors' (``stem.conv1.conv.0``, ``stages.i.blocks.j.attn.qkvs.0`` ...), so
``mmsparse.converters.cloformer`` only renames the containers. CloFormer has no separate downsampling layer: the
last block of stages 0-2 carries the stride (see :class:`EfficientBlock`), so no ``stages[i].downsample`` exists.
Any input size runs: every conv is 'same' or stride-2-with-ceil, and the only size-sensitive op (the global
branch's pooling) pads internally, see :mod:`mmsparse.ops.attn_conv`. Nothing pads the network input, so the
GroupNorm statistics are those of the true map.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath

from mmsparse.converters import cloformer as cloformer_keys
from mmsparse.models.layers import drop_path_rates, per_stage
from mmsparse.ops import AttnConv
from mmsparse.ops.checks import (DEFAULT_IMPL, check_each, check_layer_cfg, check_odd_kernel, check_positive_int,
                                 check_positive_number, check_rate)
from mmsparse.ops.impl import ImplOperator
from mmsparse.registry import MODELS
from .base import BackboneStage, SparseBackbone, resolve_arch

__all__ = ['CloFormer']


def _gn(channels: int) -> nn.GroupNorm:
    # GroupNorm(1, C): one mean/var over (C, H, W) per sample -- not a per-pixel channel LayerNorm
    return nn.GroupNorm(1, channels, eps=1e-5)


class ConvBNReLU(nn.Module):
    """3x3 conv (bias) -> norm -> ReLU, stored as ``conv.{0,1,2}`` like the authors' ``BasicBlock``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_cfg: dict) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1),
            build_norm_layer(norm_cfg, out_channels)[1],
            nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvStem(nn.Module):
    """Stride-4 stem: two stride-2 and two stride-1 conv-BN-ReLU, a 1x1 conv and GroupNorm(1, C).

    Input (B, in_channels, H, W); output (B, channels, ceil(H/4), ceil(W/4)).
    """

    def __init__(self, in_channels: int, channels: int, norm_cfg: dict) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, channels // 2, 2, norm_cfg)
        self.conv2 = ConvBNReLU(channels // 2, channels, 2, norm_cfg)
        self.conv3 = ConvBNReLU(channels, channels, 1, norm_cfg)
        self.conv4 = ConvBNReLU(channels, channels, 1, norm_cfg)
        self.conv5 = nn.Conv2d(channels, channels, 1)
        self.layernorm = _gn(channels)  # the authors' name; it is a GroupNorm(1, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.layernorm(self.conv5(x))


class CloFormerFFN(nn.Module):
    """CloFormer's strided conv-FFN: PW (C -> hidden) -> GELU -> DW k x k with the block's stride -> dropout ->
    PW (hidden -> out) -> dropout."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, kernel_size: int, stride: int,
                 drop: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_channels, hidden_channels, 1)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden_channels, hidden_channels, kernel_size, stride, kernel_size // 2,
                                groups=hidden_channels)
        self.fc2 = nn.Conv2d(hidden_channels, out_channels, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.dwconv(self.act(self.fc1(x))))
        return self.drop(self.fc2(x))


class EfficientBlock(ImplOperator, nn.Module):
    """CloFormer block: ``mid = x + DropPath(AttnConv(GN1(x)))``; ``out = Shortcut(mid) + DropPath(FFN(GN2(mid)))``.

    With ``stride=2`` the shortcut is a dense k x k stride-2 conv -> norm -> 1x1 conv to ``out_channels`` and the
    FFN's depthwise conv carries the stride; with ``stride=1`` the shortcut is the identity.

    Args:
        embed_dims (int): input channels C.
        out_channels (int): output channels (must equal ``embed_dims`` when ``stride=1``).
        num_heads, group_split, kernel_sizes, window_size: see :class:`~mmsparse.ops.AttnConv`.
        mlp_kernel_size (int): kernel of the FFN depthwise conv and of the stride-2 shortcut conv (odd).
        mlp_ratio (float): FFN hidden width = ``int(embed_dims * mlp_ratio)``.
        stride (int): 1 or 2.
        drop_path (float): stochastic-depth rate of both residual branches.
        attn_drop, drop (float): AttnConv dropout and FFN / projection dropout.
        qkv_bias (bool): biases of AttnConv's projections.
        norm_cfg (dict): norm of the stride-2 shortcut.
        impl (str): ``'fast'`` or ``'reference'``: the AttnConv path (see :class:`~mmsparse.ops.AttnConv`), and
            for ``'fast'`` the FFN on channels-last memory (same maths; oneDNN's depthwise backward is several
            times faster there than on NCHW, which made it two thirds of a CloFormer-S training step on CPU).

    Shapes:
        input (B, C, H, W) -> ``(mid, out)``: mid (B, C, H, W), out (B, out_channels, ceil(H/s), ceil(W/s)).
    """

    def __init__(self, embed_dims: int, out_channels: int, num_heads: int, group_split: Sequence[int],
                 kernel_sizes: Sequence[int], window_size: int, mlp_kernel_size: int, mlp_ratio: float, stride: int,
                 drop_path: float = 0., attn_drop: float = 0., drop: float = 0., qkv_bias: bool = True,
                 norm_cfg: dict = dict(type='BN'), impl: str = DEFAULT_IMPL) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, got {stride!r}')
        if stride == 1 and out_channels != embed_dims:
            raise ValueError(f'a stride-1 block keeps its width: out_channels={out_channels} != '
                             f'embed_dims={embed_dims}')
        check_odd_kernel(mlp_kernel_size, 'mlp_kernel_size')
        check_positive_number(mlp_ratio, 'mlp_ratio')
        self.stride = stride
        self.impl = impl
        self.norm1 = _gn(embed_dims)
        self.attn = AttnConv(embed_dims, num_heads, group_split, kernel_sizes, window_size, attn_drop=attn_drop,
                             proj_drop=drop, qkv_bias=qkv_bias, impl=impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = _gn(embed_dims)
        self.mlp = CloFormerFFN(embed_dims, int(embed_dims * mlp_ratio), out_channels, mlp_kernel_size, stride,
                                drop)
        if stride == 2:
            self.downsample: nn.Module = nn.Sequential(
                # dense (groups=1) conv, as in the authors' code -- not depthwise
                nn.Conv2d(embed_dims, embed_dims, mlp_kernel_size, 2, mlp_kernel_size // 2),
                build_norm_layer(norm_cfg, embed_dims)[1],
                nn.Conv2d(embed_dims, out_channels, 1))
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mid = x + self.drop_path(self.attn(self.norm1(x)))
        ffn_in = self.norm2(mid)
        if self.impl != 'reference':
            ffn_in = ffn_in.contiguous(memory_format=torch.channels_last)
        out = self.downsample(mid) + self.drop_path(self.mlp(ffn_in))
        return mid, out


class CloFormerStage(BackboneStage):
    """A CloFormer stage: blocks only (the last block of stages 0-2 carries the stride). Its feature is that
    block's ``mid``, tapped before the stride; a stage whose last block keeps the resolution emits its output.
    Same module names as :class:`BackboneStage`."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            mid, x = self.run_block(block, x)
        return x, (mid if self.blocks[-1].stride == 2 else x)


@MODELS.register_module()
class CloFormer(SparseBackbone):
    """CloFormer backbone (Fan et al., 2023) returning four NCHW maps at strides 4, 8, 16, 32.

    Args:
        arch (str | dict): ``'xxs'``, ``'xs'``, ``'s'`` (aliases ``'cloformer_xxs'`` ...) or a dict with keys
            ``embed_dims``, ``depths``, ``num_heads``, ``group_splits``, ``kernel_sizes``, ``window_sizes``,
            ``mlp_kernel_sizes``, ``mlp_ratios`` (one entry per stage, meaning as in the authors' constructor).
            Default: ``'xxs'``.
        in_channels (int): image channels. Default: 3.
        drop_path_rate (float): stochastic depth, ``linspace(0, rate, total blocks)`` in block order. The
            authors trained with 0.0 (xxs) and 0.06 (xs, s). Default: 0.
        attn_drop_rate (float): AttnConv dropout. Default: 0.
        drop_rate (float): FFN and AttnConv projection dropout. Default: 0.
        qkv_bias (bool): biases of AttnConv's q/k/v and proj convs (True in every published variant).
        out_indices (int | Sequence[int]): stages to output. Default: (0, 1, 2, 3).
        frozen_stages (int): freeze the stem and stages ``0 .. frozen_stages-1`` (with their output norms);
            -1 freezes nothing. Default: -1.
        norm_eval (bool): keep BatchNorms (stem, stride-2 shortcuts) in eval mode during training. Default: False.
        with_cp (bool): gradient checkpointing per block. Default: False.
        norm_cfg (dict): norm of the stem convs and stride-2 shortcuts (the authors hard-code SyncBN; set
            ``dict(type='SyncBN')`` in multi-GPU configs). Default: ``dict(type='BN')``.
        out_norm_cfg (dict | None): norm applied to each output (``norm{i}``; ``None``: no norm). The default
            ``dict(type='GN', num_groups=1)`` is the GroupNorm(1, C) used everywhere else in CloFormer (and by
            the authors' successor FAT for its dense outputs); ``None`` returns the raw taps.
        impl (str): AttnConv path, ``'fast'`` (fused projections, channels-last, SDPA) or ``'reference'``
            (the authors' layer-by-layer maths). Default: ``'fast'``. Also a property: setting it after
            building switches every operator.
        init_cfg (dict | list[dict] | None): e.g. ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``;
            raw official files are converted on the fly.
        pretrained (str, optional): Deprecated (mmseg style, what stock mmseg models pass): a checkpoint,
            mapped to ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``. Default: None.

    Shapes:
        input (B, in_channels, H, W), any H, W. Output ``i`` has ``embed_dims[i]`` channels and size
        ``(ceil(H / 2**(i+2)), ceil(W / 2**(i+2)))`` (exactly the strided-conv sizes).
    """

    official_converter = staticmethod(cloformer_keys.convert_state_dict)
    upgrade_state_dict = staticmethod(cloformer_keys.upgrade_state_dict)

    arch_zoo = {
        'xxs': dict(embed_dims=[32, 64, 128, 256], depths=[2, 2, 6, 2], num_heads=[4, 4, 8, 16],
                    group_splits=[[3, 1], [2, 2], [4, 4], [4, 12]]),
        'xs': dict(embed_dims=[48, 96, 160, 352], depths=[2, 2, 6, 2], num_heads=[3, 6, 10, 22],
                   group_splits=[[2, 1], [3, 3], [5, 5], [7, 15]]),
        's': dict(embed_dims=[64, 128, 224, 448], depths=[2, 2, 6, 2], num_heads=[4, 8, 14, 28],
                  group_splits=[[3, 1], [4, 4], [7, 7], [7, 21]]),
    }
    for _a in arch_zoo.values():  # shared by every published variant
        _a.update(kernel_sizes=[[3], [5], [7], [9]], window_sizes=[8, 4, 2, 1], mlp_kernel_sizes=[5, 5, 5, 5],
                  mlp_ratios=[4, 4, 4, 4])
    del _a
    arch_aliases = {'cloformer_xxs': 'xxs', 'cloformer_xs': 'xs', 'cloformer_s': 's'}
    arch_keys = ('embed_dims', 'depths', 'num_heads', 'group_splits', 'kernel_sizes', 'window_sizes',
                 'mlp_kernel_sizes', 'mlp_ratios')

    def __init__(self, arch: str | dict = 'xxs', in_channels: int = 3, drop_path_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_rate: float = 0., qkv_bias: bool = True,
                 out_indices: int | Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False,
                 with_cp: bool = False, norm_cfg: dict = dict(type='BN'),
                 out_norm_cfg: dict | None = dict(type='GN', num_groups=1), impl: str = DEFAULT_IMPL,
                 init_cfg: dict | list[dict] | None = None, pretrained: str | None = None) -> None:
        super().__init__(init_cfg=init_cfg, pretrained=pretrained)
        arch = resolve_arch(arch, self.arch_zoo, self.arch_aliases, self.arch_keys)
        n = self.num_stages
        for key in self.arch_keys:
            arch[key] = per_stage(arch[key], f'arch["{key}"]', n, (int, float, list, tuple))
        for key in ('embed_dims', 'depths', 'num_heads', 'window_sizes'):
            check_each(arch[key], check_positive_int, f'arch["{key}"]')
        check_each(arch['mlp_kernel_sizes'], check_odd_kernel, 'arch["mlp_kernel_sizes"]')
        check_each(arch['mlp_ratios'], check_positive_number, 'arch["mlp_ratios"]')
        self.setup_skeleton(out_indices, frozen_stages, norm_eval, with_cp, impl)
        self.in_channels = check_positive_int(in_channels, 'in_channels')
        attn_drop_rate = check_rate(attn_drop_rate, 'attn_drop_rate')
        drop_rate = check_rate(drop_rate, 'drop_rate')
        check_layer_cfg(norm_cfg, 'norm_cfg', 'BN')
        self.arch = arch
        self.embed_dims = list(arch['embed_dims'])

        self.stem = ConvStem(in_channels, self.embed_dims[0], norm_cfg)
        dpr = drop_path_rates(drop_path_rate, arch['depths'])
        self.stages = nn.ModuleList()
        for i, depth in enumerate(arch['depths']):
            dim = self.embed_dims[i]
            blocks = []
            for j in range(depth):
                # the last block of every stage but the last halves the resolution and widens to the next stage
                stride = 2 if j == depth - 1 and i < n - 1 else 1
                out_channels = self.embed_dims[i + 1] if stride == 2 else dim
                blocks.append(EfficientBlock(
                    dim, out_channels, arch['num_heads'][i], arch['group_splits'][i], arch['kernel_sizes'][i],
                    arch['window_sizes'][i], arch['mlp_kernel_sizes'][i], arch['mlp_ratios'][i], stride,
                    drop_path=dpr[i][j], attn_drop=attn_drop_rate, drop=drop_rate, qkv_bias=qkv_bias,
                    norm_cfg=norm_cfg, impl=impl))
            self.stages.append(CloFormerStage(blocks, with_cp=self.with_cp))
        self.finish_skeleton(out_norm_cfg, self.embed_dims)
        self.impl = impl

    def unused_modules(self) -> list[nn.Module]:
        """Also the strided half of the last returned stage's last block: it only feeds the next stage."""
        stages: Any = self.stages
        last = stages[self.out_indices[-1]].blocks[-1]
        tail = [last.norm2, last.mlp, last.downsample] if last.stride == 2 else []
        return super().unused_modules() + tail
