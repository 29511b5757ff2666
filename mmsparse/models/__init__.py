"""All mmsparse models; importing this module registers them in :data:`mmsparse.registry.MODELS`.

The attention operators live in :mod:`mmsparse.ops` (one public path per name); they register themselves there.
"""
from __future__ import annotations

from . import layers  # noqa: F401  (registers LayerNorm2d as norm type 'LN2d')
from .backbones import *  # noqa: F401,F403
from .necks import *  # noqa: F401,F403
from .plugins import *  # noqa: F401,F403
