"""Necks with sparse attention, for mmdet and mmseg (registered in both through mmsparse's registry)."""
from __future__ import annotations

from .level_attention import LevelBlocks, MultiLevelSparseAttn, build_level_blocks
from .sparse_attn_fpn import SparseAttnFPN

__all__ = ['SparseAttnFPN', 'MultiLevelSparseAttn', 'LevelBlocks', 'build_level_blocks']
