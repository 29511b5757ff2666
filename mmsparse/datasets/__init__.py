"""The synthetic COCO / ADE20K-format data (:mod:`.synthetic`) and ``SyntheticADE20KDataset`` (:mod:`.registered`).

``type='SyntheticADE20KDataset'`` (``default_scope='mmseg'``) and ``from mmsparse.datasets import
SyntheticADE20KDataset`` both work; :mod:`.registered` is imported on first use.
"""
# why lazily: it subclasses mmseg's ADE20KDataset, and importing mmseg.datasets takes about a second (scipy, ftfy,
# mmcv.ops, ...), which `import mmsparse` should not pay
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any, List

from .synthetic import SYNTHETIC_ADE_CLASSES, SYNTHETIC_COCO_CLASSES, make_synthetic_ade20k, make_synthetic_coco

#: the module that defines and registers the mmseg dataset classes
REGISTERED = f'{__name__}.registered'
_LAZY = ('SyntheticADE20KDataset', )

__all__: List[str] = ['SYNTHETIC_COCO_CLASSES', 'SYNTHETIC_ADE_CLASSES', 'make_synthetic_coco', 'make_synthetic_ade20k']
if importlib.util.find_spec('mmseg') is not None:  # mmsparse stays importable without mmseg
    __all__ += list(_LAZY)


def register_lazily() -> bool:
    """Have mmseg's ``DATASETS`` import :mod:`.registered` when it imports its own datasets.

    Returns whether mmseg is installed. When ``mmseg.datasets`` is already imported (or its registry has
    already loaded its modules), :mod:`.registered` is imported right away: it then costs nothing more.
    """
    try:
        from mmseg.registry import DATASETS
    except ImportError:
        return False
    # mmengine's Registry has no public way to add an import location: ``get()`` imports ``_locations`` once
    # and then sets ``_imported`` (mmengine 0.10, the supported range).
    if getattr(DATASETS, '_imported', True) or 'mmseg.datasets' in sys.modules:
        importlib.import_module(REGISTERED)
    elif REGISTERED not in DATASETS._locations:
        DATASETS._locations = [*DATASETS._locations, REGISTERED]
    return True


def __getattr__(name: str) -> Any:
    """``mmsparse.datasets.SyntheticADE20KDataset``, imported on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(REGISTERED), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


register_lazily()
