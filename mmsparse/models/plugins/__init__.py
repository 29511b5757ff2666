"""Layers that plug into stock mmdet / mmseg models (ResNet ``plugins=``, necks)."""
from __future__ import annotations

from .sparse_attn_block import *  # noqa: F401,F403
from .sparse_attn_block import __all__  # noqa: F401
