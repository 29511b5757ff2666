"""All mmsparse models; importing this module registers them in :data:`mmsparse.registry.MODELS`."""
from . import layers  # noqa: F401  (registers LayerNorm2d as a norm layer)
from .backbones import *  # noqa: F401,F403
from .necks import *  # noqa: F401,F403
from .plugins import *  # noqa: F401,F403
from ..ops import *  # noqa: F401,F403
