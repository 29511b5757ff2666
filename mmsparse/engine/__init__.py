"""Training-time machinery registered in mmsparse's HOOKS (scope ``mmsparse``): :class:`ExactResumeHook` and
:class:`StopOnNonFiniteHook`."""
from __future__ import annotations

from .nonfinite import NonFiniteTrainingError, StopOnNonFiniteHook
from .resume import ExactResumeHook, get_rng_state, latest_complete_checkpoint, set_rng_state

__all__ = [
    'ExactResumeHook', 'get_rng_state', 'set_rng_state', 'latest_complete_checkpoint', 'StopOnNonFiniteHook',
    'NonFiniteTrainingError'
]
