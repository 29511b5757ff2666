"""Checkpoint loading: mmengine 0.10.7 checkpoints on torch >= 2.6, and the one ``torch.load`` policy of mmsparse.

Loads stay ``weights_only`` (no arbitrary pickled code); only the few non-tensor objects mmengine's Runner
pickles are allowlisted.
"""
# why: torch 2.6 made torch.load default to weights_only=True; mmengine 0.10.7 calls it without that argument and
# its checkpoints pickle HistoryBuffer logs (numpy arrays) and numpy scalars, so --resume / load_from failed with
# "Weights only load failed". We allowlist exactly those (add_safe_globals) rather than patch torch.load; on
# torch < 2.6 compat.load_restricted enforces the same list in its own unpickler.
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from .compat import TORCH_VERSION, load_restricted


def _numpy_globals() -> list[Any]:
    import numpy as np
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    objs: list[Any] = [np.ndarray, np.dtype, _reconstruct, scalar]
    # dtype classes are pickled by class (np.dtypes.Float64DType, ...) since numpy 1.25
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        objs += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return objs


def _history_buffer_getattr(obj: Any, name: str) -> Callable:
    """``getattr`` as seen by the restricted unpickler: only ``HistoryBuffer.<statistics method>``."""
    # why: HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, 'min'); allowing the builtin
    # getattr would let a file read any attribute of any allowed object
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in HistoryBuffer._statistics_methods:
        return HistoryBuffer._statistics_methods[name]
    raise RuntimeError(f'refusing getattr({obj!r}, {name!r}) while loading a checkpoint: only '
                       'HistoryBuffer statistics methods are allowed')


def mmengine_checkpoint_globals() -> list[Any]:
    """The classes an mmengine Runner checkpoint may contain besides tensors and plain containers."""
    from mmengine.logging import HistoryBuffer
    HistoryBuffer()  # populates HistoryBuffer._statistics_methods with the built-in statistics
    restricted_getattr: list[Any] = [(_history_buffer_getattr, name)
                                     for name in ('__builtin__.getattr', 'builtins.getattr')]
    return [HistoryBuffer] + restricted_getattr + _numpy_globals()


def allow_mmengine_checkpoint_objects() -> None:
    """Allowlist :func:`mmengine_checkpoint_globals` for ``torch.load(weights_only=True)``. Idempotent.

    A no-op before torch 2.6 (``torch.load`` then defaults to ``weights_only=False``).
    """
    if TORCH_VERSION < (2, 6):
        return
    # checked against torch's list rather than remembered: other code may have removed entries since
    allowed = set(torch.serialization.get_safe_globals())
    missing = [g for g in mmengine_checkpoint_globals() if g not in allowed]
    if missing:
        torch.serialization.add_safe_globals(missing)


# ----------------------------------------------------------------------------------------------------------
# Reading checkpoint files and loading pretrained backbones: the one torch.load policy of mmsparse


class CheckpointFileError(ValueError):
    """A file that cannot be read as a checkpoint (not a torch file, truncated, or pickling code)."""


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = 'cpu') -> Any:
    """Load a checkpoint file without executing arbitrary pickled code.

    Unpickles only tensors, containers, :func:`mmengine_checkpoint_globals` and ``argparse.Namespace`` (the
    authors' ``args``). URLs (``http(s)://``, ``s3://``, ``open-mmlab://`` ...) go through mmengine's loaders.
    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointFileError` for one that is not a
    checkpoint.
    """
    import argparse
    import os.path as osp

    from mmengine.runner.checkpoint import CheckpointLoader
    path = str(path)
    if '://' in path:
        return CheckpointLoader.load_checkpoint(path, map_location=map_location)
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint file {path!r} does not exist')
    allow_mmengine_checkpoint_objects()
    try:
        return load_restricted(path, map_location, [argparse.Namespace] + mmengine_checkpoint_globals())
    except Exception as err:  # torch raises several types for truncated / foreign / unsafe files
        raise CheckpointFileError(
            f'{path!r} is not a readable checkpoint: expected a file written by torch.save holding a state dict '
            f'(or {{"state_dict": ...}} / {{"model": ...}}) of tensors; torch.load said: '
            f'{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}') from err


def unwrap_state_dict(ckpt: Any, use_ema: bool = False) -> OrderedDict[str, torch.Tensor]:
    """Return the state dict inside an official / mmengine checkpoint, with a leading ``module.`` stripped.

    Accepts ``{'model': sd}`` (``{'model_ema': sd}`` with ``use_ema``), ``{'state_dict': sd}`` or a raw
    state dict. Raises ``TypeError`` unless every value is a tensor, ``KeyError`` for ``use_ema`` without
    ``model_ema``.
    """
    import re
    if not isinstance(ckpt, dict):
        raise TypeError(f'expected a checkpoint dict, got {type(ckpt).__name__}')
    keys = ['model_ema', 'model', 'state_dict'] if use_ema else ['model', 'state_dict']
    if use_ema and 'model_ema' not in ckpt:
        raise KeyError(f'use_ema=True but the checkpoint has no "model_ema" entry (it has {sorted(ckpt)[:10]})')
    sd = ckpt
    for key in keys:
        if key in ckpt and isinstance(ckpt[key], dict):
            sd = ckpt[key]
            break
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in sd.items():
        if not torch.is_tensor(v):
            raise TypeError(f'state dict entry {k!r} is a {type(v).__name__}, not a tensor; '
                            'pass the model weights, not a whole training checkpoint')
        out[re.sub(r'^module\.', '', k)] = v
    return out


def _shown(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    return ', '.join(keys[:limit]) + (f' ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def _convert_foreign_keys(module: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict none of whose keys is the module's: the authors' keys (``official_converter``) or, when
    those do not apply, an older mmsparse layout (``upgrade_state_dict``)."""
    converter = getattr(module, 'official_converter', None)
    upgrade = getattr(module, 'upgrade_state_dict', None)
    if converter is not None:
        try:
            return converter(sd)
        except (KeyError, ValueError) as err:  # UnmappedKeysError is a KeyError
            if upgrade is None:
                raise
            upgraded = upgrade(sd)
            if not set(upgraded) & set(module.state_dict()):
                raise err
            return upgraded
    return upgrade(sd) if upgrade is not None else sd


def load_pretrained(module: nn.Module, checkpoint: str | dict, prefix: str | None = None, logger: Any = None,
                    allow_partial: bool = False) -> tuple[list[str], list[str], list[str]]:
    """Load pretrained weights into ``module``, logging what did and did not load.

    Returns ``(missing, unexpected, mismatched)`` keys.

    Args:
        checkpoint: a path / URL or a loaded dict: an mmsparse file, a whole mmdet / mmseg checkpoint (with
            ``prefix='backbone.'``), an older mmsparse layout (``module.upgrade_state_dict``) or the authors'
            file (``module.official_converter``, used when no key is the module's).
        allow_partial: load what matches and warn, instead of raising ``RuntimeError`` on any missing,
            unexpected or mis-shaped key. BatchNorm's ``num_batches_tracked`` never counts; the keys of
            ``module.dense_only_keys()`` (output norms) may be absent and keep their initialisation.
    """
    from mmengine.logging import print_log
    name = str(checkpoint) if isinstance(checkpoint, str) else '<state dict>'
    ckpt = load_checkpoint_file(checkpoint) if isinstance(checkpoint, str) else checkpoint
    sd: dict[str, torch.Tensor] = unwrap_state_dict(ckpt)
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        stripped = OrderedDict((k[len(prefix):], v) for k, v in sd.items() if k.startswith(prefix))
        if not stripped:
            tops = sorted({k.split('.')[0] + '.' for k in sd})
            raise KeyError(f'no key of {name} starts with prefix {prefix!r}; its top-level prefixes are '
                           f'{_shown(tops, 10)}')
        sd = stripped
    own = module.state_dict()
    if not set(sd) & set(own):
        sd = _convert_foreign_keys(module, sd)
    counted = [k for k in own if not k.endswith('num_batches_tracked')]
    dense_only: set[str] = (set(module.dense_only_keys())  # type: ignore[operator]  # duck-typed backbones
                            if hasattr(module, 'dense_only_keys') else set())
    mismatched = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    fresh = [k for k in counted if k in dense_only and k not in sd]
    missing = [k for k in counted if (k not in sd and k not in dense_only) or k in mismatched]
    unexpected = [k for k in sd if k not in own]
    loadable = OrderedDict((k, v) for k, v in sd.items() if k in own and k not in mismatched)
    module.load_state_dict(loadable, strict=False)
    loaded = len(counted) - len(missing) - len(fresh)
    lines = [f'{len(keys)} {title} key(s): {_shown(keys)}'
             for title, keys in (('missing', missing), ('unexpected', unexpected),
                                 ('shape-mismatched', [f'{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}'
                                                       for k in mismatched])) if keys]
    if lines and not allow_partial:
        raise RuntimeError(f'{name} does not fit {type(module).__name__}: loaded {loaded}/{len(counted)} '
                           'tensors; ' + '; '.join(lines) + '. Pass allow_partial=True (in an init_cfg: '
                           "dict(type='Pretrained', ..., allow_partial=True)) to load a partial checkpoint.")
    print_log(f'Loaded {loaded}/{len(counted)} tensors of {type(module).__name__} from {name}', logger=logger)
    if fresh:
        print_log(f'{len(fresh)} dense output-norm tensor(s) not in the checkpoint keep their initialisation: '
                  f'{_shown(fresh)}', logger=logger)
    for line in lines:
        print_log(line, logger=logger, level=30)
    return missing, unexpected, mismatched
