"""Dataset classes registered into mmseg (imported only when mmseg is installed)."""
from __future__ import annotations

from mmseg.datasets import ADE20KDataset
from mmseg.registry import DATASETS

from .synthetic import SYNTHETIC_ADE_CLASSES


@DATASETS.register_module()
class SyntheticADE20KDataset(ADE20KDataset):
    """mmseg's ADE20K dataset (same layout, ``.jpg`` / ``.png``, ``reduce_zero_label=True``) with the five
    synthetic classes."""

    # why a class: mmseg accepts only subsets of ADE20K's own class names in metainfo
    METAINFO = dict(
        classes=SYNTHETIC_ADE_CLASSES,
        palette=[[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3]])
