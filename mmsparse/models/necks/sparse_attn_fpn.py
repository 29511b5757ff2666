"""FPN with sparse attention on chosen pyramid levels, a drop-in replacement for mmdet's / mmseg's ``FPN``."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule

from mmsparse.ops.checks import check_positive_int
from mmsparse.registry import MODELS
from .level_attention import build_level_blocks

__all__ = ['SparseAttnFPN']

EXTRA_CONV_SOURCES = ('on_input', 'on_lateral', 'on_output')
ATTN_POSITIONS = ('lateral', 'output')


@MODELS.register_module()
class SparseAttnFPN(BaseModule):
    """Feature Pyramid Network with a :class:`~mmsparse.models.plugins.SparseAttnBlock` on selected levels.

    Otherwise mmdet 3.3's ``FPN`` (mmseg's computes the same): same arguments, module names and state-dict keys,
    so FPN checkpoints load, and with ``attn_levels=()`` it computes exactly what ``FPN`` computes. The blocks
    are the identity at initialisation, so the neck starts as a plain FPN.

    Args:
        start_level: first backbone level used.
        end_level: last backbone level used (inclusive); -1 means the last one.
        add_extra_convs: source of the extra (stride-2 conv) levels: ``False`` (max-pool the last output
            instead), ``True`` (= ``'on_input'``), ``'on_input'``, ``'on_lateral'`` or ``'on_output'``.
        relu_before_extra_convs: ReLU before every extra conv after the first.
        conv_cfg, norm_cfg, act_cfg: of the ConvModules.
        upsample_cfg: ``F.interpolate`` arguments of the top-down path.
        attn_levels: used levels (0 = backbone level ``start_level``) that get attention; () is a plain FPN.
        attn_cfg: operator config, ``type`` a key of :data:`~mmsparse.models.plugins.ATTN_TYPES` (looked up when
            the neck is built); one dict for all levels or one per ``attn_levels`` entry.
        block_cfg: further :class:`SparseAttnBlock` arguments (``embed_dims``, ``ffn_ratio``...).
        attn_position: ``'lateral'``: on a level's 1x1 lateral, before the top-down sum; ``'output'``: on its
            3x3 output.
        init_cfg: Xavier-uniform on the convs by default, as FPN.

    Shapes:
        inputs: tuple of ``len(in_channels)`` maps (N, in_channels[i], H_i, W_i), each level half the size of
        the previous; outputs: tuple of ``num_outs`` maps (N, out_channels, H'_j, W'_j).
    """
    # why 'lateral' by default: the refined coarse levels then propagate to the finer ones (like attention on C5
    # ahead of a YOLO / RT-DETR PAN). Why not a subclass of FPN: ``import mmsparse`` must not import all of
    # mmdet.models (and must work with mmseg alone).

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, start_level: int = 0,
                 end_level: int = -1, add_extra_convs: bool | str = False, relu_before_extra_convs: bool = False,
                 no_norm_on_lateral: bool = False, conv_cfg: dict | None = None, norm_cfg: dict | None = None,
                 act_cfg: dict | None = None, upsample_cfg: dict = dict(mode='nearest'),
                 attn_levels: int | Sequence[int] = (), attn_cfg: dict | Sequence[dict] | None = None,
                 block_cfg: dict | None = None, attn_position: str = 'lateral',
                 init_cfg: dict | list[dict] | None = dict(type='Xavier', layer='Conv2d',
                                                           distribution='uniform')) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(in_channels, (list, tuple)) or not in_channels:
            raise TypeError(f'SparseAttnFPN: in_channels must be a non-empty list of ints, got {in_channels!r}')
        self.in_channels = list(in_channels)
        self.out_channels = check_positive_int(out_channels, 'SparseAttnFPN: out_channels')
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.no_norm_on_lateral = no_norm_on_lateral
        self.upsample_cfg = dict(upsample_cfg)
        if not 0 <= start_level < self.num_ins:
            raise ValueError(f'SparseAttnFPN: start_level must be in [0, {self.num_ins - 1}], got {start_level}')
        if end_level in (-1, self.num_ins - 1):
            self.backbone_end_level = self.num_ins  # exclusive
            if num_outs < self.num_ins - start_level:
                raise ValueError(f'SparseAttnFPN: num_outs={num_outs} must be >= the {self.num_ins - start_level} '
                                 f'used backbone levels')
        else:
            if not start_level <= end_level < self.num_ins:
                raise ValueError(f'SparseAttnFPN: end_level must be -1 or in [{start_level}, {self.num_ins - 1}], '
                                 f'got {end_level}')
            self.backbone_end_level = end_level + 1
            if num_outs != end_level - start_level + 1:
                raise ValueError(f'SparseAttnFPN: with end_level={end_level}, num_outs must be '
                                 f'{end_level - start_level + 1} (no extra levels), got {num_outs}')
        self.start_level = start_level
        self.end_level = end_level
        if add_extra_convs is True:
            add_extra_convs = 'on_input'
        if add_extra_convs is not False and add_extra_convs not in EXTRA_CONV_SOURCES:
            raise ValueError(f'SparseAttnFPN: add_extra_convs must be a bool or one of {EXTRA_CONV_SOURCES}, '
                             f'got {add_extra_convs!r}')
        self.add_extra_convs = add_extra_convs
        if attn_position not in ATTN_POSITIONS:
            raise ValueError(f'SparseAttnFPN: attn_position must be one of {ATTN_POSITIONS}, got {attn_position!r}')
        self.attn_position = attn_position

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        lateral_norm = None if no_norm_on_lateral else norm_cfg
        for i in range(start_level, self.backbone_end_level):
            self.lateral_convs.append(ConvModule(in_channels[i], out_channels, 1, conv_cfg=conv_cfg,
                                                 norm_cfg=lateral_norm, act_cfg=act_cfg, inplace=False))
            self.fpn_convs.append(ConvModule(out_channels, out_channels, 3, padding=1, conv_cfg=conv_cfg,
                                             norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False))
        used = self.backbone_end_level - start_level
        num_extra = num_outs - used
        if add_extra_convs and num_extra > 0:
            for i in range(num_extra):
                src = in_channels[self.backbone_end_level - 1] if i == 0 and add_extra_convs == 'on_input' \
                    else out_channels
                self.fpn_convs.append(ConvModule(src, out_channels, 3, stride=2, padding=1, conv_cfg=conv_cfg,
                                                 norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False))

        self.attn_blocks = build_level_blocks([out_channels] * used, attn_levels, attn_cfg, block_cfg,
                                              'SparseAttnFPN')

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != self.num_ins:
            raise ValueError(f'SparseAttnFPN expects {self.num_ins} input levels, got {len(inputs)}')
        laterals = [conv(inputs[self.start_level + i]) for i, conv in enumerate(self.lateral_convs)]
        if self.attn_position == 'lateral':
            laterals = self.attn_blocks.attend(laterals)
        # top-down: each level receives the upsampled sum of the coarser ones
        for i in range(len(laterals) - 1, 0, -1):
            if 'scale_factor' in self.upsample_cfg:
                up = F.interpolate(laterals[i], **self.upsample_cfg)
            else:
                up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], **self.upsample_cfg)
            laterals[i - 1] = laterals[i - 1] + up
        used = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        if self.attn_position == 'output':
            outs = self.attn_blocks.attend(outs)

        if self.num_outs > used:
            if not self.add_extra_convs:
                # stride-2 subsampling (a 1x1 max-pool) of the last output, Faster R-CNN's P6
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                if self.add_extra_convs == 'on_input':
                    source = inputs[self.backbone_end_level - 1]
                elif self.add_extra_convs == 'on_lateral':
                    source = laterals[-1]
                else:
                    source = outs[-1]
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, self.num_outs):
                    prev = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](prev))
        return tuple(outs)
