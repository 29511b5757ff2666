"""The authors' checkpoints -> mmsparse: pure key maps, one module per family, no model imports.

Each family module provides ``convert_state_dict(sd)`` (the authors' backbone keys -> mmsparse keys, raising
:class:`UnmappedKeysError` on anything unknown and :class:`ForeignStateDictError` when no key is the family's)
and ``upgrade_state_dict(sd)`` (an older mmsparse layout -> the current one), all through
:func:`~mmsparse.converters.common.apply_key_map`. BiFormer also converts whole detection / segmentation checkpoints
(``convert_dense_state_dict``). Each backbone names its functions directly (``official_converter``,
``upgrade_state_dict``); this package only offers them by family name to the command-line converter.
"""
from __future__ import annotations

import types
from collections import OrderedDict
from typing import Any

import torch

# the families package imports no model at import time; its specs (which name backbones) load on first look-up
from mmsparse.families import LiveMapping, get_family, list_families
from mmsparse.utils.checkpoint import unwrap_state_dict

from . import biformer, cloformer, stvit  # noqa: F401  (the built-in families' key maps)
from .common import ForeignStateDictError, UnmappedKeysError


def _converters() -> dict[str, types.ModuleType]:
    specs = (get_family(name) for name in list_families())
    return {spec.name: spec.converter for spec in specs if spec.converter is not None}


#: family name -> its converter module (the names ``tools/model_converters/official2mmsparse.py`` accepts): a live
#: view of the registered families (:mod:`mmsparse.families`) that have a converter
FAMILIES = LiveMapping(_converters, 'family name -> converter module')

__all__ = ['FAMILIES', 'UnmappedKeysError', 'ForeignStateDictError', 'family_module', 'convert', 'convert_checkpoint']


def family_module(family: str) -> types.ModuleType:
    """The converter module of ``family`` (case-insensitive); ``ValueError`` naming the accepted families."""
    fam, converters = str(family).lower(), _converters()
    if fam not in converters:
        raise ValueError(f'family={family!r} is not supported; choose one of {sorted(converters)}')
    return converters[fam]


def convert(family: str, state_dict: dict[str, Any], use_ema: bool = False) -> OrderedDict[str, torch.Tensor]:
    """Map the authors' ``family`` state dict (or checkpoint dict) to mmsparse backbone keys."""
    return family_module(family).convert_state_dict(unwrap_state_dict(state_dict, use_ema=use_ema))


def convert_checkpoint(family: str, ckpt: dict[str, Any], use_ema: bool = False) -> dict[str, Any]:
    """Convert an official checkpoint to an mmengine ``{'state_dict': ..., 'meta': ...}`` dict.

    Classification checkpoints become backbone weights under ``backbone.``; detection / segmentation ones (keys
    starting with ``backbone.``) whole-model checkpoints, if the family has a dense converter (else
    ``ValueError``).
    """
    sd = unwrap_state_dict(ckpt, use_ema=use_ema)
    mod = family_module(family)
    if any(k.startswith('backbone.') for k in sd):
        if not hasattr(mod, 'convert_dense_state_dict'):
            raise ValueError(f'{family}: no converter for full detection / segmentation checkpoints')
        out = mod.convert_dense_state_dict(sd)
    else:
        out = OrderedDict(('backbone.' + k, v) for k, v in mod.convert_state_dict(sd).items())
    return {'state_dict': out, 'meta': {'converted_from': str(family), 'mmsparse_converter': 2}}
