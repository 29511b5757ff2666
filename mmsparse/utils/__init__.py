from __future__ import annotations

from .checkpoint import allow_mmengine_checkpoint_objects
from .complexity import flop_count

__all__ = ['allow_mmengine_checkpoint_objects', 'flop_count']
