"""mmsparse: BiFormer, CloFormer and STViT for mmdet 3.x and mmseg 1.x.

Importing the package registers every module in mmsparse's registry (scope ``mmsparse``) and, when mmdet / mmseg
are installed, the public ones (:data:`mmsparse.registry.DOWNSTREAM_MODELS`) under the same names in theirs. It
also makes mmengine's checkpoint loading work on torch >= 2.6 for the objects mmengine itself writes (see
:mod:`mmsparse.utils.checkpoint`). It stays cheap (no mmdet / mmseg models or datasets, no ONNX, no plotting:
those are imported where they are used) and sets no warnings filters or environment variables.
"""
from .version import __version__
from .utils.quiet import quiet_pkg_resources

with quiet_pkg_resources():  # the first import of mmengine
    from .utils.checkpoint import allow_mmengine_checkpoint_objects

allow_mmengine_checkpoint_objects()

from . import datasets, engine, models, ops  # noqa: E402,F401  (registers everything)
from .ops import set_impl  # noqa: E402
from .registry import register_into_downstream  # noqa: E402

register_into_downstream()


def _register_config_package() -> None:
    """Let mmengine resolve ``_base_ = 'mmsparse::biformer/...py'`` to ``mmsparse/.mim/configs``.

    mmengine accepts only the packages named in its ``MODULE2PACKAGE`` and locates them through pkg_resources,
    which for a PEP 660 editable install (``pip install -e .``) reports site-packages instead of the sources.
    Naming a module of the package (not the distribution) makes mmengine use the import system, which is right
    for regular, editable and ``PYTHONPATH`` installs alike.
    """
    from mmengine.config import utils
    utils.MODULE2PACKAGE.setdefault('mmsparse', 'mmsparse.version')


_register_config_package()

__all__ = ['__version__', 'set_impl']
