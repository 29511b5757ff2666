from .biformer import *  # noqa: F401,F403
from .cloformer import *  # noqa: F401,F403
from .stvit import *  # noqa: F401,F403
