"""mmsparse: BiFormer, CloFormer and STViT for mmdet 3.x and mmseg 1.x.

Importing the package registers every public module in mmsparse's registry (scope ``mmsparse``) and, when
mmdet / mmseg are importable, under the same names in theirs. It also makes mmengine's checkpoint loading
work on torch >= 2.6 for the objects mmengine itself writes (see :mod:`mmsparse.utils.checkpoint`).
"""
from .version import __version__
from .utils.checkpoint import allow_mmengine_checkpoint_objects

allow_mmengine_checkpoint_objects()

from . import datasets, engine, models, ops  # noqa: E402,F401  (registers everything)
from .ops import set_impl  # noqa: E402
from .registry import register_into_downstream  # noqa: E402

register_into_downstream()

__all__ = ['__version__', 'set_impl']
