from .biformer import BiFormer, BiFormerBlock
from .cloformer import CloFormer
from .stvit import STViT, STViTBlock

__all__ = ['BiFormer', 'BiFormerBlock', 'CloFormer', 'STViT', 'STViTBlock']
