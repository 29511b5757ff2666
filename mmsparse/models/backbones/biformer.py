"""BiFormer (Zhu et al., CVPR 2023) as an mmdet 3 / mmseg 1 backbone.

Read top to bottom: the MLP and the block, the backbone, then ``arch_zoo``. Numerics follow the authors'
``models/biformer.py`` + ``ops/bra_legacy.py`` (stages 1-3: Bi-Level Routing Attention; stage 4: global
attention with LePE) and their dense wrapper ``BiFormer_mm`` (one LayerNorm2d per output, applied to a copy:
the un-normalised map feeds the next stage).

Module names differ from the official ones (``mmsparse.converters.biformer`` maps them); two naming rules
are kept on purpose because the official recipes exempt every parameter whose name contains ``norm`` from
weight decay: the block LNs (``norm1``/``norm2``) and the output norms (``out_norms``) contain ``norm``, the
stem/downsample BNs (``stem.*.bn``, ``downsamples.*.bn``) do not.
"""
import warnings
from collections import OrderedDict

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, build_norm_layer
from mmcv.cnn.bricks import DropPath

from mmsparse.models.backbones.base import SparseBackbone, check_out_indices, resolve_arch
from mmsparse.models.layers import LayerNorm2d
from mmsparse.ops.routing_attention import (BRA_IMPLS, DEFAULT_BRA_IMPL, BiLevelRoutingAttention,
                                            GlobalAttentionLePE)
from mmsparse.registry import MODELS

__all__ = ['BiFormer', 'BiFormerBlock']

#: ``topks`` value that selects global attention + LePE instead of BRA (the official convention)
GLOBAL_ATTENTION = -2


class BiFormerBlock(nn.Module):
    """One BiFormer block, NCHW in and out.

    ``x = x + DW3(x)`` (conditional position encoding, outside both residual branches), then
    ``x = x + DropPath(Attn(norm1(x)))`` and ``x = x + DropPath(MLP(norm2(x)))`` with channel LayerNorms
    (eps 1e-6) and a ``Linear(C, rC) -> GELU -> Linear(rC, C)`` MLP written as 1x1 convolutions.

    Args:
        dim (int): Channels C.
        topk (int): ``> 0``: Bi-Level Routing Attention with this top-k; ``-2``: global attention + LePE.
        num_heads (int): BRA heads (``qk_dim // head_dim`` in the official models).
        n_win (int): BRA regions per side.
        qk_dim (int, optional): BRA q/k channels. Default: ``dim``.
        qk_scale (float, optional): BRA scale override. Default: ``qk_dim ** -0.5``.
        global_num_heads (int): Heads of the global attention. Default: 8 (fixed in the official code).
        mlp_ratio (float): MLP hidden ratio. Default: 3.
        side_dwconv (int): LePE kernel. Default: 5.
        auto_pad (bool): BRA auto padding. Default: True.
        drop_path (float): Stochastic depth rate. Default: 0.
        attn_impl (str): BRA algorithm, see :data:`mmsparse.ops.routing_attention.BRA_IMPLS`.

    Shapes:
        input and output (N, C, H, W).
    """

    def __init__(self, dim, topk, num_heads, n_win, qk_dim=None, qk_scale=None, global_num_heads=8,
                 mlp_ratio=3, side_dwconv=5, auto_pad=True, drop_path=0., attn_impl=DEFAULT_BRA_IMPL):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(dim, num_heads=num_heads, n_win=n_win, topk=topk, qk_dim=qk_dim,
                                                qk_scale=qk_scale, side_dwconv=side_dwconv, auto_pad=auto_pad,
                                                impl=attn_impl)
        elif topk == GLOBAL_ATTENTION:
            self.attn = GlobalAttentionLePE(dim, num_heads=global_num_heads, side_dwconv=side_dwconv)
        else:
            raise ValueError(f'topk={topk!r} is not supported; use a positive int (routing attention) or '
                             f'{GLOBAL_ATTENTION} (global attention + LePE)')
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        hidden = int(mlp_ratio * dim)
        self.mlp = nn.Sequential(OrderedDict(
            fc1=nn.Conv2d(dim, hidden, 1), act=nn.GELU(), fc2=nn.Conv2d(hidden, dim, 1)))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


@MODELS.register_module()
class BiFormer(SparseBackbone):
    """BiFormer backbone: a 4-stage pyramid (strides 4/8/16/32) of Bi-Level Routing Attention blocks.

    Layout: ``stem`` (two 3x3 stride-2 convs with BN, GELU between) -> ``layers[0]`` ->
    ``downsamples[0]`` (3x3 stride-2 conv + BN) -> ``layers[1]`` -> ... -> ``layers[3]``. Stages 0-2 use BRA
    (``topks[i] > 0``), stage 3 global attention with LePE (``topks[3] == -2``). Output ``i`` is
    ``out_norms[i](stage i output)``, a normalised copy; the raw map continues to the next stage (as the
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
        out_norm_cfg (dict, optional): Norm applied to each returned map. ``None`` returns the raw stage
            outputs. Default: ``dict(type='LN2d', eps=1e-6)``.
        with_cp (bool): Gradient checkpointing per block. Default: False.
        attn_impl (str): BRA algorithm: ``'sdpa'`` (fast, default) or ``'gather'`` (the reference that mirrors
            the authors' maths; same routing and outputs up to float rounding). Default: ``'sdpa'``.
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``;
            the authors' raw ``{'model': ...}`` files are converted on the fly.

    Shapes:
        - input: (N, in_channels, H, W), any H, W when ``auto_pad`` is True.
        - output: tuple of (N, C_i, ceil(H/2^(i+2)), ...) maps for ``i`` in ``out_indices``, with
          ``C = embed_dims`` (e.g. 64/128/256/512 for T and S).
    """

    converter_family = 'biformer'

    arch_zoo = {
        'tiny': dict(embed_dims=[64, 128, 256, 512], depths=[2, 2, 8, 2]),
        'small': dict(embed_dims=[64, 128, 256, 512], depths=[4, 4, 18, 4]),
        'base': dict(embed_dims=[96, 192, 384, 768], depths=[4, 4, 18, 4]),
    }
    arch_aliases = {'t': 'tiny', 's': 'small', 'b': 'base'}

    def __init__(self,
                 arch='tiny',
                 in_channels=3,
                 n_win=7,
                 topks=(1, 4, 16, -2),
                 auto_pad=True,
                 side_dwconv=5,
                 qk_scale=None,
                 drop_path_rate=0.,
                 out_indices=(0, 1, 2, 3),
                 frozen_stages=-1,
                 norm_eval=False,
                 norm_cfg=dict(type='BN'),
                 out_norm_cfg=dict(type='LN2d', eps=1e-6),
                 with_cp=False,
                 attn_impl=DEFAULT_BRA_IMPL,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = resolve_arch(arch, self.arch_zoo, self.arch_aliases, ('embed_dims', 'depths'))
        self.num_stages = 4
        embed_dims = self._per_stage(arch['embed_dims'], 'arch["embed_dims"]')
        depths = self._per_stage(arch['depths'], 'arch["depths"]')
        mlp_ratios = self._per_stage(arch.get('mlp_ratios', 3), 'arch["mlp_ratios"]')
        qk_dims = self._per_stage(arch.get('qk_dims', embed_dims), 'arch["qk_dims"]')
        head_dim = arch.get('head_dim', 32)
        global_num_heads = arch.get('global_num_heads', 8)
        topks = self._per_stage(topks, 'topks')
        if not isinstance(n_win, int) or n_win < 1:
            raise ValueError(f'n_win must be a positive int, got {n_win!r}')
        if not isinstance(drop_path_rate, (int, float)) or not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be a float in [0, 1), got {drop_path_rate!r}')
        if attn_impl not in BRA_IMPLS:
            raise ValueError(f'attn_impl={attn_impl!r} is not known; choose one of {sorted(BRA_IMPLS)}')
        for i, (topk, qk_dim) in enumerate(zip(topks, qk_dims)):
            if topk > 0 and qk_dim % head_dim:
                raise ValueError(f'arch head_dim={head_dim} must divide qk_dims[{i}]={qk_dim}')
        if not (out_norm_cfg is None or isinstance(out_norm_cfg, dict)):
            raise TypeError(f'out_norm_cfg must be a dict or None, got {type(out_norm_cfg).__name__}')

        self.embed_dims = embed_dims
        self.depths = depths
        self.n_win = n_win
        self.topks = topks
        self.out_indices = check_out_indices(out_indices, self.num_stages)
        self.frozen_stages = self.check_frozen_stages(frozen_stages)
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        # stem: conv-BN-GELU-conv-BN, stride 4; downsamples[i - 1] (conv-BN, no norm before the conv)
        # precedes stage i. The convs keep their bias (it is in the official weights), so ConvModule's
        # "unnecessary conv bias" warning is silenced.
        def conv_bn(cin, cout, act_cfg=None):
            return ConvModule(cin, cout, 3, stride=2, padding=1, bias=True, norm_cfg=norm_cfg, act_cfg=act_cfg)

        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='Unnecessary conv bias')
            self.stem = nn.Sequential(conv_bn(in_channels, embed_dims[0] // 2, dict(type='GELU')),
                                      conv_bn(embed_dims[0] // 2, embed_dims[0]))
            self.downsamples = nn.ModuleList(
                [conv_bn(embed_dims[i - 1], embed_dims[i]) for i in range(1, self.num_stages)])

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # cpu: also under meta
        # named 'layers' (official: 'stages'): no mmsparse key equals an official one, which is how
        # load_pretrained recognises a raw official file that needs converting
        self.layers = nn.ModuleList()
        cur = 0
        for i in range(self.num_stages):
            self.layers.append(nn.ModuleList([
                BiFormerBlock(embed_dims[i], topk=topks[i], num_heads=qk_dims[i] // head_dim, n_win=n_win,
                              qk_dim=qk_dims[i], qk_scale=qk_scale, global_num_heads=global_num_heads,
                              mlp_ratio=mlp_ratios[i], side_dwconv=side_dwconv, auto_pad=auto_pad,
                              drop_path=dpr[cur + j], attn_impl=attn_impl) for j in range(depths[i])
            ]))
            cur += depths[i]

        # ModuleDict keyed by stage index so that keys stay 'out_norms.<stage>' for any out_indices
        self.out_norms = None
        if out_norm_cfg is not None:
            self.out_norms = nn.ModuleDict(
                {str(i): build_norm_layer(out_norm_cfg, embed_dims[i])[1] for i in self.out_indices})

        self._freeze_stages()

    def _per_stage(self, value, name):
        """Broadcast a scalar to 4 stages or check that a sequence has 4 entries."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value] * self.num_stages
        if not isinstance(value, (list, tuple)) or len(value) != self.num_stages:
            raise ValueError(f'{name} must have {self.num_stages} entries (one per stage), got {value!r}')
        return list(value)

    def stage_modules(self, i):
        if i == -1:
            return [self.stem]
        mods = [self.layers[i]]
        if i > 0:
            mods.append(self.downsamples[i - 1])
        if self.out_norms is not None and str(i) in self.out_norms:
            mods.append(self.out_norms[str(i)])
        return mods

    def init_weights(self):
        """Official init (trunc-normal 0.02 Linear, unit LN) unless a Pretrained ``init_cfg`` is given."""
        super().init_weights()
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            return
        for m in self.modules():
            # the only 1x1 convs are the MLP's, which are Linear layers in the official model
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        outs = []
        x = self.stem(x)
        for i, blocks in enumerate(self.layers):
            if i > 0:
                x = self.downsamples[i - 1](x)
            for block in blocks:
                x = self.run_block(block, x)
            if i in self.out_indices:
                outs.append(self.out_norms[str(i)](x) if self.out_norms is not None else x)
        return tuple(outs)
