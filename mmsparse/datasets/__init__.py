from .synthetic import (SYNTHETIC_ADE_CLASSES, SYNTHETIC_COCO_CLASSES, make_synthetic_ade20k,
                        make_synthetic_coco)

__all__ = ['SYNTHETIC_COCO_CLASSES', 'SYNTHETIC_ADE_CLASSES', 'make_synthetic_coco', 'make_synthetic_ade20k']

try:  # mmseg dataset classes; mmsparse stays importable without mmseg
    from .registered import SyntheticADE20KDataset  # noqa: F401
    __all__.append('SyntheticADE20KDataset')
except ImportError:
    pass
