"""Inspection of the sparse attention operators: what each one attends to, for one image.

:mod:`.attention` reads the maps from a built backbone (forward hooks, operators' attributes and methods),
:mod:`.drawing` draws them, :mod:`.maps` puts both together per stage and :mod:`.loading` builds the backbone
and the input from a config. ``tools/visualization/attention_map.py`` is the command line.
"""
from __future__ import annotations

from typing import Any

from . import attention
from .attention import (OperatorCall, attnconv_global_attention, attnconv_local_weights,
                        bra_channels, bra_layout, bra_token_attention, capture_operator_inputs, family_of,
                        feature_point, sta_association)
from .loading import default_points, load_backbone, preprocess, read_image, resize_for_model, scale_points
from .maps import StageMap, attention_maps

__all__ = [
    'OPERATOR_TYPES', 'OperatorCall', 'capture_operator_inputs', 'family_of', 'feature_point', 'bra_channels',
    'bra_layout', 'bra_token_attention', 'sta_association', 'attnconv_global_attention', 'attnconv_local_weights',
    'load_backbone', 'read_image', 'resize_for_model', 'preprocess', 'default_points', 'scale_points',
    'StageMap', 'attention_maps'
]


def __getattr__(name: str) -> Any:
    # OPERATOR_TYPES follows the registered families (see :func:`.attention.operator_types`)
    if name == 'OPERATOR_TYPES':
        return attention.operator_types()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
