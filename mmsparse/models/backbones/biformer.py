"""BiFormer (Zhu et al., CVPR 2023) as an mmdet 3 / mmseg 1 backbone.

Read top to bottom: the MLP and the block, the backbone, then ``arch_zoo``. Numerics follow the authors'
``models/biformer.py`` + ``ops/bra_legacy.py`` (stages 1-3: Bi-Level Routing Attention; stage 4: global
attention with LePE) and their dense wrapper ``BiFormer_mm`` (one LayerNorm2d per output, applied to a copy:
the un-normalised map feeds the next stage).

Module names follow the mmsparse skeleton (``stem``, ``stages.i.downsample``, ``stages.i.blocks.j``, ``norm{i}``;
``mmsparse.converters.biformer`` maps the official ones). One naming rule is kept on purpose because the
official recipes exempt every parameter whose name contains ``norm`` from weight decay: the block LNs
(``norm1``/``norm2``) and the output norms (``norm{i}``) contain ``norm``, the stem/downsample BNs
(``stem.*.bn``, ``stages.*.downsample.bn``) do not.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import DropPath

from mmsparse.converters import biformer as biformer_keys
from mmsparse.models.layers import LayerNorm2d, drop_path_rates, per_stage
from mmsparse.ops import BRA_IMPLS, BiLevelRoutingAttention, GlobalAttentionLePE
from mmsparse.ops.checks import (DEFAULT_IMPL, IMPLS, check_each, check_layer_cfg, check_positive_int,
                                 check_positive_number)
from mmsparse.ops.impl import ImplOperator
from mmsparse.registry import MODELS
from .base import BackboneStage, SparseBackbone, resolve_arch

__all__ = ['BiFormer', 'BiFormerBlock']

#: ``topks`` value that selects global attention + LePE instead of BRA (the official convention)
GLOBAL_ATTENTION = -2


class BiFormerBlock(ImplOperator, nn.Module):
    """One BiFormer block, NCHW in and out.

    ``x = x + DW3(x)`` (conditional position encoding, outside both residual branches), then
    ``x = x + DropPath(Attn(norm1(x)))`` and ``x = x + DropPath(MLP(norm2(x)))`` with channel LayerNorms
    (eps 1e-6) and a ``Linear(C, rC) -> GELU -> Linear(rC, C)`` MLP, stored as 1x1 convolutions.

    With ``impl='fast'`` the block runs on channels-last memory: the LayerNorms, the attention and the MLP (two
    GEMMs with the 1x1 convolutions' weights) see the (N, H, W, C) view of the map, so no permute copies the
    map and no 1x1 convolution falls back to im2col on CPU. Same maths as ``'reference'`` (layer by layer in
    NCHW, as the authors write it); the output then has channels-last strides, which
    :meth:`~mmsparse.models.backbones.base.SparseBackbone.out_norm` turns into a contiguous map.
    The attention is called as a module (its forward hooks fire); ``norm1``, ``norm2`` and ``mlp`` are not (their
    parameters are used directly), so hooks on them need ``impl='reference'``.

    Args:
        embed_dims (int): Channels C.
        topk (int): ``> 0``: Bi-Level Routing Attention with this top-k; ``-2``: global attention + LePE.
        num_heads (int): BRA heads (``qk_dim // head_dim`` in the official models).
        n_win (int): BRA regions per side.
        qk_dim (int, optional): BRA q/k channels. Default: ``embed_dims``.
        qk_scale (float, optional): BRA scale override. Default: ``qk_dim ** -0.5``.
        global_num_heads (int): Heads of the global attention. Default: 8 (fixed in the official code).
        mlp_ratio (float): MLP hidden ratio. Default: 3.
        side_dwconv (int): LePE kernel. Default: 5.
        auto_pad (bool): BRA auto padding. Default: True.
        drop_path (float): Stochastic depth rate. Default: 0.
        impl (str): ``'fast'`` or ``'reference'``: the block's memory layout (above) and the attention's path.

    Shapes:
        input and output (N, C, H, W); with ``impl='fast'`` the output has channels-last strides.
    """

    def __init__(self, embed_dims: int, topk: int, num_heads: int, n_win: int, qk_dim: int | None = None,
                 qk_scale: float | None = None, global_num_heads: int = 8, mlp_ratio: float = 3,
                 side_dwconv: int = 5, auto_pad: bool = True, drop_path: float = 0.,
                 impl: str = DEFAULT_IMPL) -> None:
        super().__init__()
        self.impl = impl
        self.pos_embed = nn.Conv2d(embed_dims, embed_dims, 3, padding=1, groups=embed_dims)
        self.norm1 = LayerNorm2d(embed_dims, eps=1e-6)
        if isinstance(topk, int) and not isinstance(topk, bool) and topk > 0:
            self.attn: nn.Module = BiLevelRoutingAttention(embed_dims, num_heads=num_heads, n_win=n_win, topk=topk,
                                                           qk_dim=qk_dim, qk_scale=qk_scale, side_dwconv=side_dwconv,
                                                           auto_pad=auto_pad, impl=impl)
        elif topk == GLOBAL_ATTENTION:
            self.attn = GlobalAttentionLePE(embed_dims, num_heads=global_num_heads, side_dwconv=side_dwconv,
                                            impl=impl)
        else:
            raise ValueError(f'topk={topk!r} is not supported; use a positive int (routing attention) or '
                             f'{GLOBAL_ATTENTION} (global attention + LePE)')
        self.norm2 = LayerNorm2d(embed_dims, eps=1e-6)
        check_positive_number(mlp_ratio, 'mlp_ratio')
        hidden = int(mlp_ratio * embed_dims)
        self.mlp = nn.Sequential(OrderedDict(
            fc1=nn.Conv2d(embed_dims, hidden, 1), act=nn.GELU(), fc2=nn.Conv2d(hidden, embed_dims, 1)))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == 'reference':
            x = x + self.pos_embed(x)
            x = x + self.drop_path(self.attn(self.norm1(x)))
            x = x + self.drop_path(self.mlp(self.norm2(x)))
            return x
        x = x.contiguous(memory_format=torch.channels_last)  # a no-op from the second block of a stage on
        x = x + self.pos_embed(x)
        t = x.permute(0, 2, 3, 1)  # (N, H, W, C), contiguous: a view, not a copy
        # through the module (not forward_nhwc) so that forward hooks on the attention see every call
        attn = self.attn(self._layer_norm(self.norm1, t).permute(0, 3, 1, 2), channels_last_output=True)
        t = t + self.drop_path(attn.permute(0, 2, 3, 1))
        t = t + self.drop_path(self._mlp_nhwc(self._layer_norm(self.norm2, t)))
        return t.permute(0, 3, 1, 2)

    @staticmethod
    def _layer_norm(norm: nn.LayerNorm, t: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(t, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def _mlp_nhwc(self, t: torch.Tensor) -> torch.Tensor:
        mlp: Any = self.mlp
        fc1, fc2 = mlp.fc1, mlp.fc2
        t = mlp.act(F.linear(t, fc1.weight.flatten(1), fc1.bias))
        return F.linear(t, fc2.weight.flatten(1), fc2.bias)


@MODELS.register_module()
class BiFormer(SparseBackbone):
    """BiFormer backbone: a 4-stage pyramid (strides 4/8/16/32) of Bi-Level Routing Attention blocks.

    Layout: ``stem`` (two 3x3 stride-2 convs with BN, GELU between) -> ``stages[0].blocks`` ->
    ``stages[1].downsample`` (3x3 stride-2 conv + BN) -> ``stages[1].blocks`` -> ... Stages 0-2 use BRA
    (``topks[i] > 0``), stage 3 global attention with LePE (``topks[3] == -2``). Output ``i`` is
    ``norm{i}(stage i output)``, a normalised copy; the raw map continues to the next stage (as the
    authors' ``BiFormer_mm``).

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'`` (aliases ``'t'``, ``'s'``, ``'b'``), or a dict
            with ``embed_dims`` and ``depths`` (4 entries each) and optionally ``head_dim`` (BRA head dim,
            default 32), ``mlp_ratios`` (default 3), ``qk_dims`` (default ``embed_dims``) and
            ``global_num_heads`` (default 8).
        in_channels (int): Input channels. Default: 3.
        n_win (int): BRA regions per side: 7 for 224 classification, 16 in the COCO recipes, 8 for ADE20K.
            Default: 7.
        topks (Sequence[int]): Per-stage top-k; ``-2`` means global attention. Default: (1, 4, 16, -2).
        auto_pad (bool): Let BRA pad inputs whose size does not divide by ``n_win`` (the authors' dense
            behaviour); False raises on such sizes. Default: True.
        side_dwconv (int): LePE kernel size. Default: 5.
        qk_scale (float, optional): BRA scale override. Default: None (``qk_dim ** -0.5``).
        drop_path_rate (float): Maximum stochastic depth rate, linear over all blocks. Default: 0.
        out_indices (Sequence[int]): Stages whose outputs are returned. Default: (0, 1, 2, 3).
        frozen_stages (int): Freeze the stem and stages ``0 .. frozen_stages-1`` (-1: none). Default: -1.
        norm_eval (bool): Keep BN layers (stem/downsample) in eval mode while training. Default: False.
        norm_cfg (dict): Norm of the stem and downsampling convs; ``dict(type='SyncBN')`` for segmentation.
            Default: ``dict(type='BN')``.
        out_norm_cfg (dict, optional): Norm applied to each returned map (``norm{i}``). ``None`` returns the
            raw stage outputs. Default: ``dict(type='LN2d', eps=1e-6)`` (the authors' dense recipe).
        with_cp (bool): Gradient checkpointing per block. Default: False.
        impl (str): ``'fast'`` (default) or ``'reference'`` (the authors-exact paths of every operator; same
            routing and outputs up to float rounding), or ``'flex'`` (BRA through FlexAttention, the stage-4
            global attention on ``'fast'``). Also a property: setting it after building switches every operator.
        init_cfg (dict | list[dict], optional): e.g. ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``;
            the authors' raw ``{'model': ...}`` files are converted on the fly.
        pretrained (str, optional): Deprecated (mmseg style, what stock mmseg models pass): a checkpoint,
            mapped to ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``. Default: None.

    Shapes:
        - input: (N, in_channels, H, W), any H, W when ``auto_pad`` is True.
        - output: tuple of (N, C_i, ceil(H/2^(i+2)), ...) maps for ``i`` in ``out_indices``, with
          ``C = embed_dims`` (e.g. 64/128/256/512 for T and S).
    """

    official_converter = staticmethod(biformer_keys.convert_state_dict)
    upgrade_state_dict = staticmethod(biformer_keys.upgrade_state_dict)

    arch_zoo = {
        'tiny': dict(embed_dims=[64, 128, 256, 512], depths=[2, 2, 8, 2]),
        'small': dict(embed_dims=[64, 128, 256, 512], depths=[4, 4, 18, 4]),
        'base': dict(embed_dims=[96, 192, 384, 768], depths=[4, 4, 18, 4]),
    }
    arch_aliases = {'t': 'tiny', 's': 'small', 'b': 'base'}
    impls = tuple(BRA_IMPLS)

    def __init__(self,
                 arch: str | dict = 'tiny',
                 in_channels: int = 3,
                 n_win: int = 7,
                 topks: Sequence[int] = (1, 4, 16, -2),
                 auto_pad: bool = True,
                 side_dwconv: int = 5,
                 qk_scale: float | None = None,
                 drop_path_rate: float = 0.,
                 out_indices: int | Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 norm_cfg: dict = dict(type='BN'),
                 out_norm_cfg: dict | None = dict(type='LN2d', eps=1e-6),
                 with_cp: bool = False,
                 impl: str = DEFAULT_IMPL,
                 init_cfg: dict | list[dict] | None = None,
                 pretrained: str | None = None) -> None:
        super().__init__(init_cfg=init_cfg, pretrained=pretrained)
        self.setup_skeleton(out_indices, frozen_stages, norm_eval, with_cp, impl)
        arch = resolve_arch(arch, self.arch_zoo, self.arch_aliases, ('embed_dims', 'depths'),
                            ('head_dim', 'mlp_ratios', 'qk_dims', 'global_num_heads'))
        n = self.num_stages
        embed_dims = per_stage(arch['embed_dims'], 'arch["embed_dims"]', n, int)
        depths = per_stage(arch['depths'], 'arch["depths"]', n, int)
        mlp_ratios = per_stage(arch.get('mlp_ratios', 3), 'arch["mlp_ratios"]', n)
        qk_dims = per_stage(arch.get('qk_dims', embed_dims), 'arch["qk_dims"]', n, int)
        topks = per_stage(topks, 'topks', n, int)
        head_dim = check_positive_int(arch.get('head_dim', 32), 'arch["head_dim"]')
        global_num_heads = check_positive_int(arch.get('global_num_heads', 8), 'arch["global_num_heads"]')
        for name, values in (('embed_dims', embed_dims), ('depths', depths), ('qk_dims', qk_dims)):
            check_each(values, check_positive_int, f'arch["{name}"]')
        check_each(mlp_ratios, check_positive_number, 'arch["mlp_ratios"]')
        self.in_channels = check_positive_int(in_channels, 'in_channels')
        check_layer_cfg(norm_cfg, 'norm_cfg', 'BN')
        check_positive_int(n_win, 'n_win')
        for i, (topk, qk_dim) in enumerate(zip(topks, qk_dims)):
            if topk > 0 and qk_dim % head_dim:
                raise ValueError(f'arch head_dim={head_dim} must divide qk_dims[{i}]={qk_dim}')
        self.embed_dims = embed_dims
        self.depths = depths
        self.n_win = n_win
        self.topks = topks

        # stem: conv-BN-GELU-conv-BN, stride 4; stages[i].downsample (conv-BN, no norm before the conv) starts
        # stage i > 0. The convs keep their bias (it is in the official weights), so ConvModule's
        # "unnecessary conv bias" warning is silenced.
        def conv_bn(cin, cout, act_cfg=None):
            return ConvModule(cin, cout, 3, stride=2, padding=1, bias=True, norm_cfg=norm_cfg, act_cfg=act_cfg)

        dpr = drop_path_rates(drop_path_rate, depths)
        block_impl = impl if impl in IMPLS else DEFAULT_IMPL  # 'flex' reaches the BRAs through self.impl below
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='Unnecessary conv bias')
            self.stem = nn.Sequential(conv_bn(in_channels, embed_dims[0] // 2, dict(type='GELU')),
                                      conv_bn(embed_dims[0] // 2, embed_dims[0]))
            self.stages = nn.ModuleList()
            for i in range(n):
                blocks = [
                    BiFormerBlock(embed_dims[i], topk=topks[i], num_heads=qk_dims[i] // head_dim, n_win=n_win,
                                  qk_dim=qk_dims[i], qk_scale=qk_scale, global_num_heads=global_num_heads,
                                  mlp_ratio=mlp_ratios[i], side_dwconv=side_dwconv, auto_pad=auto_pad,
                                  drop_path=dpr[i][j], impl=block_impl) for j in range(depths[i])
                ]
                downsample = conv_bn(embed_dims[i - 1], embed_dims[i]) if i > 0 else None
                self.stages.append(BackboneStage(blocks, downsample, with_cp=self.with_cp))
        self.finish_skeleton(out_norm_cfg, embed_dims)
        self.impl = impl

    def init_default_weights(self) -> None:
        """Official init: trunc-normal(0.02) Linear layers (and the MLP's 1x1 convs), unit LayerNorms."""
        for m in self.modules():
            # the only 1x1 convs are the MLP's, which are Linear layers in the official model
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
