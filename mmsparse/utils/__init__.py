from .checkpoint import allow_mmengine_checkpoint_objects

__all__ = ['allow_mmengine_checkpoint_objects']
