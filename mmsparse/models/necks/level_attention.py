"""Sparse attention on selected levels of a feature pyramid, as a neck of its own or in front of any neck."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from mmengine.model import BaseModule, ModuleDict

from mmsparse.models.plugins import ATTN_TYPES, SparseAttnBlock
from mmsparse.registry import MODELS

__all__ = ['MultiLevelSparseAttn', 'LevelBlocks', 'build_level_blocks']


class LevelBlocks(ModuleDict):
    """``{str(level): SparseAttnBlock}``: the attention step both necks share."""
    # why mmengine's ModuleDict: its init_weights reaches the blocks, which re-zero their layer scales

    def attend(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Apply the block of each level that has one; other levels pass through."""
        return [self[str(i)](x) if str(i) in self else x for i, x in enumerate(feats)]


def build_level_blocks(channels: Sequence[int], attn_levels: int | Sequence[int],
                       attn_cfg: dict | Sequence[dict] | None, block_cfg: dict | None, owner: str) -> LevelBlocks:
    """The :class:`LevelBlocks` of the chosen levels, keyed by the level index as a string.

    Args:
        channels: channels of every level.
        attn_levels: levels that get a block (distinct, in ``[0, len(channels))``).
        attn_cfg: the operator config, shared by all levels or one per ``attn_levels`` entry (e.g. a super-token
            size per resolution); required when ``attn_levels`` is not empty.
        block_cfg: further :class:`SparseAttnBlock` arguments (``embed_dims``, ``ffn_ratio``, ...), shared.
        owner: class name used in error messages.

    Raises:
        TypeError, ValueError: an argument of the wrong type or value (the message names ``owner``).
    """
    if isinstance(attn_levels, int) and not isinstance(attn_levels, bool):
        attn_levels = (attn_levels, )
    if not isinstance(attn_levels, (list, tuple)):
        raise TypeError(f'{owner}: attn_levels must be an int or a sequence of ints, got {attn_levels!r}')
    levels = list(attn_levels)
    valid = range(len(channels))
    if any(isinstance(lv, bool) or not isinstance(lv, int) or lv not in valid for lv in levels) \
            or len(set(levels)) != len(levels):
        raise ValueError(f'{owner}: attn_levels must be distinct ints in [0, {len(channels) - 1}] '
                         f'(the levels with attention), got {attn_levels!r}')
    if levels and attn_cfg is None:
        raise ValueError(f'{owner}: attn_levels={attn_levels!r} needs attn_cfg=dict(type=...), type one of '
                         f'{sorted(ATTN_TYPES)}')
    if isinstance(attn_cfg, (list, tuple)):
        if len(attn_cfg) != len(levels):
            raise ValueError(f'{owner}: attn_cfg as a list needs one dict per attn_levels entry '
                             f'({len(levels)}), got {len(attn_cfg)}')
        per_level = list(attn_cfg)
    else:
        per_level = [attn_cfg] * len(levels)
    if block_cfg is not None and not isinstance(block_cfg, dict):
        raise TypeError(f'{owner}: block_cfg must be a dict of SparseAttnBlock arguments, got {block_cfg!r}')
    block_cfg = copy.deepcopy(dict(block_cfg or {}))
    for key in ('type', '_scope_'):
        block_cfg.pop(key, None)
    for key in ('in_channels', 'attn_cfg'):
        if key in block_cfg:
            raise ValueError(f'{owner}: block_cfg must not set {key!r}; the neck fills it in')
    return LevelBlocks({
        str(level): SparseAttnBlock(in_channels=channels[level], attn_cfg=cfg, **block_cfg)
        for level, cfg in zip(levels, per_level)
    })


@MODELS.register_module()
class MultiLevelSparseAttn(BaseModule):
    """Residual sparse attention on selected levels of a multi-level feature tuple; other levels pass through.

    A neck by itself or in front of another, with mmengine's list syntax:
    ``neck=[dict(type='MultiLevelSparseAttn', ...), dict(type='CSPNeXtPAFPN', ...)]`` (an ``nn.Sequential``).
    Its :class:`~mmsparse.models.plugins.SparseAttnBlock` blocks are the identity at initialisation, so a
    pretrained detector is unchanged until fine-tuned.

    Args:
        in_channels: channels of every input level.
        attn_levels: indices of the levels that get a block.
        attn_cfg: operator config (``type`` a key of :data:`~mmsparse.models.plugins.ATTN_TYPES`), shared or one
            per ``attn_levels`` entry.
        block_cfg: further :class:`SparseAttnBlock` arguments (``embed_dims``, ``ffn_ratio``...).

    Shapes:
        inputs: tuple of (N, in_channels[i], H_i, W_i); outputs: a tuple of the same shapes.
    """

    def __init__(self, in_channels: Sequence[int], attn_levels: int | Sequence[int],
                 attn_cfg: dict | Sequence[dict], block_cfg: dict | None = None,
                 init_cfg: dict | list[dict] | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(in_channels, (list, tuple)) or not in_channels:
            raise TypeError(f'MultiLevelSparseAttn: in_channels must be a non-empty list of ints, got {in_channels!r}')
        self.in_channels = list(in_channels)
        self.attn_blocks = build_level_blocks(self.in_channels, attn_levels, attn_cfg, block_cfg,
                                              'MultiLevelSparseAttn')

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'MultiLevelSparseAttn expects {len(self.in_channels)} levels, got {len(inputs)}')
        return tuple(self.attn_blocks.attend(inputs))
