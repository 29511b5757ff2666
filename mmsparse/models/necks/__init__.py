"""Necks with sparse attention, for mmdet and mmseg (registered in both through mmsparse's registry)."""
from .level_attention import MultiLevelSparseAttn, build_level_blocks
from .sparse_attn_fpn import SparseAttnFPN

__all__ = ['SparseAttnFPN', 'MultiLevelSparseAttn', 'build_level_blocks']
