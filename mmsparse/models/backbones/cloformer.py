"""CloFormer backbone for dense prediction (mmdet / mmseg), numerically equal to the authors' code.

Reference: Fan et al., "Rethinking Local Perception in Lightweight Vision Transformer" (arXiv 2303.17803),
official code qhfan/CloFormer ``9181f69`` (classification only; there is no official dense version).

Layout, top to bottom: conv stem (stride 4) -> 4 stages of ``EfficientBlock`` (GroupNorm(1, C) -> AttnConv
residual, then GroupNorm(1, C) -> ConvFFN residual). The *last* block of stages 1-3 has stride 2 and widens to the
next stage, so the authors downsample at the end of a stage. Dense outputs are therefore tapped inside that block,
after the attention residual and before the stride-2 FFN / shortcut (the authors' successor FAT does the same);
stage 4 emits its output. Channels are the stage widths, strides 4/8/16/32 (ceil division for odd sizes).

Module names equal the authors' (``patch_embed.conv1.conv.0``, ``layers.i.blocks.j.attn.qkvs.0`` ...), so an
official state dict loads after dropping the classification keys; the per-output norms are ``norm0..norm3``.
Any input size runs: every conv is 'same' or stride-2-with-ceil, and the only size-sensitive op (the global
branch's pooling) pads internally, see :mod:`mmsparse.ops.attn_conv`. Nothing pads the network input, so the
GroupNorm statistics are those of the true map.
"""
import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath

from mmsparse.ops.attn_conv import AttnConv
from mmsparse.registry import MODELS
from .base import SparseBackbone, check_out_indices, resolve_arch

__all__ = ['CloFormer']


def _gn(channels):
    # GroupNorm(1, C): one mean/var over (C, H, W) per sample -- not a per-pixel channel LayerNorm
    return nn.GroupNorm(1, channels, eps=1e-5)


class ConvBNReLU(nn.Module):
    """3x3 conv (bias) -> norm -> ReLU, stored as ``conv.{0,1,2}`` like the authors' ``BasicBlock``."""

    def __init__(self, in_channels, out_channels, stride, norm_cfg):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1),
            build_norm_layer(norm_cfg, out_channels)[1],
            nn.ReLU(inplace=True))

    def forward(self, x):
        return self.conv(x)


class ConvStem(nn.Module):
    """Stride-4 stem: two stride-2 and two stride-1 conv-BN-ReLU, a 1x1 conv and GroupNorm(1, C).

    Input (B, in_channels, H, W); output (B, channels, ceil(H/4), ceil(W/4)).
    """

    def __init__(self, in_channels, channels, norm_cfg):
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, channels // 2, 2, norm_cfg)
        self.conv2 = ConvBNReLU(channels // 2, channels, 2, norm_cfg)
        self.conv3 = ConvBNReLU(channels, channels, 1, norm_cfg)
        self.conv4 = ConvBNReLU(channels, channels, 1, norm_cfg)
        self.conv5 = nn.Conv2d(channels, channels, 1)
        self.layernorm = _gn(channels)  # the authors' name; it is a GroupNorm(1, C)

    def forward(self, x):
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.layernorm(self.conv5(x))


class ConvFFN(nn.Module):
    """PW (C -> hidden) -> GELU -> DW k x k with the block's stride -> dropout -> PW (hidden -> out) -> dropout."""

    def __init__(self, in_channels, hidden_channels, out_channels, kernel_size, stride, drop=0.):
        super().__init__()
        self.fc1 = nn.Conv2d(in_channels, hidden_channels, 1)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden_channels, hidden_channels, kernel_size, stride, kernel_size // 2,
                                groups=hidden_channels)
        self.fc2 = nn.Conv2d(hidden_channels, out_channels, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.dwconv(self.act(self.fc1(x))))
        return self.drop(self.fc2(x))


class EfficientBlock(nn.Module):
    """CloFormer block: ``mid = x + DropPath(AttnConv(GN1(x)))``; ``out = Shortcut(mid) + DropPath(FFN(GN2(mid)))``.

    With ``stride=2`` the shortcut is a dense k x k stride-2 conv -> norm -> 1x1 conv to ``out_channels`` and the
    FFN's depthwise conv carries the stride; with ``stride=1`` the shortcut is the identity.

    Args:
        dim (int): input channels C.
        out_channels (int): output channels (must equal ``dim`` when ``stride=1``).
        num_heads, group_split, kernel_sizes, window_size: see :class:`~mmsparse.ops.AttnConv`.
        mlp_kernel_size (int): kernel of the FFN depthwise conv and of the stride-2 shortcut conv.
        mlp_ratio (float): FFN hidden width = ``int(dim * mlp_ratio)``.
        stride (int): 1 or 2.
        drop_path (float): stochastic-depth rate of both residual branches.
        attn_drop, drop (float): AttnConv dropout and FFN / projection dropout.
        qkv_bias (bool): biases of AttnConv's projections.
        norm_cfg (dict): norm of the stride-2 shortcut.
        attn_impl (str): global-attention implementation of AttnConv.
        mixer_impl (str): AttnConv path, ``'fast'`` or ``'reference'`` (see :class:`~mmsparse.ops.AttnConv`).

    Shapes:
        input (B, C, H, W) -> ``(mid, out)``: mid (B, C, H, W), out (B, out_channels, ceil(H/s), ceil(W/s)).
    """

    def __init__(self, dim, out_channels, num_heads, group_split, kernel_sizes, window_size, mlp_kernel_size,
                 mlp_ratio, stride, drop_path=0., attn_drop=0., drop=0., qkv_bias=True,
                 norm_cfg=dict(type='BN'), attn_impl='sdpa', mixer_impl='fast'):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, got {stride!r}')
        if stride == 1 and out_channels != dim:
            raise ValueError(f'a stride-1 block keeps its width: out_channels={out_channels} != dim={dim}')
        self.stride = stride
        self.norm1 = _gn(dim)
        self.attn = AttnConv(dim, num_heads, group_split, kernel_sizes, window_size, attn_drop=attn_drop,
                             proj_drop=drop, qkv_bias=qkv_bias, attn_impl=attn_impl, impl=mixer_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = _gn(dim)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), out_channels, mlp_kernel_size, stride, drop)
        if stride == 2:
            self.downsample = nn.Sequential(
                # dense (groups=1) conv, as in the authors' code -- not depthwise
                nn.Conv2d(dim, dim, mlp_kernel_size, 2, mlp_kernel_size // 2),
                build_norm_layer(norm_cfg, dim)[1],
                nn.Conv2d(dim, out_channels, 1))
        else:
            self.downsample = nn.Identity()

    def forward(self, x):
        mid = x + self.drop_path(self.attn(self.norm1(x)))
        out = self.downsample(mid) + self.drop_path(self.mlp(self.norm2(mid)))
        return mid, out


class CloStage(nn.Module):
    """One stage: a ModuleList ``blocks`` (kept as a module so the keys read ``layers.i.blocks.j``)."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


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
        out_norm_cfg (dict | None): norm applied to each output (``norm{i}``). The default
            ``dict(type='GN', num_groups=1)`` is the GroupNorm(1, C) used everywhere else in CloFormer (and by
            the authors' successor FAT for its dense outputs); ``None`` returns the raw taps.
        attn_impl (str): global-attention implementation, ``'sdpa'`` or ``'reference'``. Default: ``'sdpa'``.
        mixer_impl (str): AttnConv path, ``'fast'`` (fused projections, channels-last) or ``'reference'``.
            Default: ``'fast'``.
        init_cfg (dict | list[dict] | None): e.g. ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``;
            raw official files are converted on the fly.

    Shapes:
        input (B, in_channels, H, W), any H, W. Output ``i`` has ``embed_dims[i]`` channels and size
        ``(ceil(H / 2**(i+2)), ceil(W / 2**(i+2)))`` (exactly the strided-conv sizes).
    """

    converter_family = 'cloformer'

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

    def __init__(self, arch='xxs', in_channels=3, drop_path_rate=0., attn_drop_rate=0., drop_rate=0.,
                 qkv_bias=True, out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, with_cp=False,
                 norm_cfg=dict(type='BN'), out_norm_cfg=dict(type='GN', num_groups=1), attn_impl='sdpa',
                 mixer_impl='fast', init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = resolve_arch(arch, self.arch_zoo, self.arch_aliases, self.arch_keys)
        lengths = {key: len(arch[key]) for key in self.arch_keys}
        if len(set(lengths.values())) != 1:
            raise ValueError(f'every arch list needs one entry per stage, got the lengths {lengths}')
        num_stages = lengths['depths']
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}')
        if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
            raise TypeError(f'norm_cfg must be a dict with a "type" (e.g. dict(type="BN")), got {norm_cfg!r}')
        if out_norm_cfg is not None and (not isinstance(out_norm_cfg, dict) or 'type' not in out_norm_cfg):
            raise TypeError(f'out_norm_cfg must be None or a dict with a "type", got {out_norm_cfg!r}')
        self.arch = arch
        self.embed_dims = list(arch['embed_dims'])
        self.num_stages = num_stages
        self.out_indices = check_out_indices(out_indices, num_stages)
        self.frozen_stages = self.check_frozen_stages(frozen_stages)
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        self.patch_embed = ConvStem(in_channels, self.embed_dims[0], norm_cfg)
        dpr = torch.linspace(0, drop_path_rate, sum(arch['depths'])).tolist()
        self.layers = nn.ModuleList()
        cursor = 0
        for i, depth in enumerate(arch['depths']):
            dim = self.embed_dims[i]
            last = i == num_stages - 1
            blocks = []
            for j in range(depth):
                final = j == depth - 1
                stride = 2 if final and not last else 1
                out_channels = self.embed_dims[i + 1] if stride == 2 else dim
                blocks.append(EfficientBlock(
                    dim, out_channels, arch['num_heads'][i], arch['group_splits'][i], arch['kernel_sizes'][i],
                    arch['window_sizes'][i], arch['mlp_kernel_sizes'][i], arch['mlp_ratios'][i], stride,
                    drop_path=dpr[cursor + j], attn_drop=attn_drop_rate, drop=drop_rate, qkv_bias=qkv_bias,
                    norm_cfg=norm_cfg,
                    attn_impl=attn_impl, mixer_impl=mixer_impl))
            cursor += depth
            self.layers.append(CloStage(blocks))

        self.out_norm_cfg = out_norm_cfg
        for i in self.out_indices:
            norm = build_norm_layer(out_norm_cfg, self.embed_dims[i])[1] if out_norm_cfg else nn.Identity()
            self.add_module(f'norm{i}', norm)

        self._freeze_stages()

    def stage_modules(self, i):
        if i == -1:
            return [self.patch_embed]
        return [self.layers[i], getattr(self, f'norm{i}', None)]

    def forward(self, x):
        """x: (B, in_channels, H, W) -> tuple of (B, embed_dims[i], ceil(H/2^(i+2)), ceil(W/2^(i+2)))."""
        if x.dim() != 4:
            raise ValueError(f'CloFormer expects an NCHW tensor, got shape {tuple(x.shape)}')
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers):
            for blk in stage.blocks:
                mid, x = self.run_block(blk, x)
            if i in self.out_indices:
                # stages 1-3: full-resolution feature inside the stride-2 block; stage 4: its output
                tap = x if i == self.num_stages - 1 else mid
                outs.append(getattr(self, f'norm{i}')(tap))
        return tuple(outs)
