"""Dataset classes registered into mmseg (imported only when mmseg is installed)."""
from mmseg.datasets import ADE20KDataset
from mmseg.registry import DATASETS

from .synthetic import SYNTHETIC_ADE_CLASSES


@DATASETS.register_module()
class SyntheticADE20KDataset(ADE20KDataset):
    """mmseg's ADE20K dataset class (same layout, ``.jpg`` / ``.png`` suffixes, ``reduce_zero_label=True``)
    with the synthetic data's five classes, since mmseg only accepts class subsets of ADE20K's own names."""
    METAINFO = dict(
        classes=SYNTHETIC_ADE_CLASSES,
        palette=[[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3]])
