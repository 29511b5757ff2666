from .synthetic import (SYNTHETIC_ADE_CLASSES, SYNTHETIC_COCO_CLASSES, make_synthetic_ade20k,
                        make_synthetic_coco)

__all__ = ['SYNTHETIC_COCO_CLASSES', 'SYNTHETIC_ADE_CLASSES', 'make_synthetic_coco', 'make_synthetic_ade20k']
