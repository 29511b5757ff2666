"""Make mmengine 0.10.7 checkpoints load on torch >= 2.6.

torch 2.6 made ``torch.load`` default to ``weights_only=True``. mmengine 0.10.7 calls ``torch.load`` without
that argument, and the checkpoints its Runner writes pickle a few non-tensor objects: the message hub's
``HistoryBuffer`` logs (numpy arrays inside) and numpy scalars in the runtime info. Loading such a file for
``--resume`` or ``load_from`` then fails with ``UnpicklingError: Weights only load failed``.

The narrow fix is to add exactly those classes to torch's allowlist for the restricted unpickler
(``torch.serialization.add_safe_globals``). ``weights_only`` stays on, so a checkpoint that pickles anything
else (arbitrary code) is still refused. We do not patch ``torch.load``; on torch < 2.6, where that allowlist is
missing or narrower, :func:`mmsparse.utils.compat.load_restricted` enforces the same list in its own unpickler.

One entry needs care: ``HistoryBuffer`` pickles its statistics methods (``HistoryBuffer.min`` ...) by
qualified name, which pickle writes as ``getattr(HistoryBuffer, 'min')``. Allowing the builtin ``getattr``
would let a file read any attribute of any allowed object, so the name ``getattr`` is instead bound, for the
restricted unpickler only, to :func:`_history_buffer_getattr`, which resolves nothing but HistoryBuffer's
registered statistics methods.
"""
import torch

from .compat import TORCH_VERSION, load_restricted


def _numpy_globals():
    import numpy as np
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    objs = [np.ndarray, np.dtype, _reconstruct, scalar]
    # dtype classes are pickled by class (np.dtypes.Float64DType, ...) since numpy 1.25
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        objs += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return objs


def _history_buffer_getattr(obj, name):
    """``getattr`` as seen by the restricted unpickler: only ``HistoryBuffer.<statistics method>``."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in HistoryBuffer._statistics_methods:
        return HistoryBuffer._statistics_methods[name]
    raise RuntimeError(f'refusing getattr({obj!r}, {name!r}) while loading a checkpoint: only '
                       'HistoryBuffer statistics methods are allowed')


def mmengine_checkpoint_globals():
    """The classes an mmengine Runner checkpoint may contain besides tensors and plain containers."""
    from mmengine.logging import HistoryBuffer
    HistoryBuffer()  # populates HistoryBuffer._statistics_methods with the built-in statistics
    restricted_getattr = [(_history_buffer_getattr, name) for name in ('__builtin__.getattr', 'builtins.getattr')]
    return [HistoryBuffer] + restricted_getattr + _numpy_globals()


def allow_mmengine_checkpoint_objects():
    """Allowlist :func:`mmengine_checkpoint_globals` for ``torch.load(weights_only=True)``. Idempotent.

    Only torch >= 2.6 needs it (and takes the ``(object, name)`` pairs): before, ``torch.load`` defaults to
    ``weights_only=False``, so mmengine's own loads work unchanged.
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


def load_checkpoint_file(path, map_location='cpu'):
    """Load a checkpoint file without executing arbitrary pickled code.

    Only allowed globals are unpickled (``weights_only=True``, or its equivalent on torch < 2.6): besides
    tensors and containers, the objects of :func:`mmengine_checkpoint_globals` and the ``argparse.Namespace``
    (``args``) that the authors' training checkpoints pickle. URLs (``http(s)://``, ``s3://``,
    ``open-mmlab://`` ...) go through mmengine's loaders. A file that
    is missing or is not a checkpoint raises an error naming the file and what was expected.
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


def unwrap_state_dict(ckpt, use_ema=False):
    """Return the state dict inside an official / mmengine checkpoint, with a leading ``module.`` stripped.

    Accepts ``{'model': sd}`` (``{'model_ema': sd}`` with ``use_ema``), ``{'state_dict': sd}`` or a raw
    state dict. Every value must be a tensor.
    """
    import re
    from collections import OrderedDict
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
    out = OrderedDict()
    for k, v in sd.items():
        if not torch.is_tensor(v):
            raise TypeError(f'state dict entry {k!r} is a {type(v).__name__}, not a tensor; '
                            'pass the model weights, not a whole training checkpoint')
        out[re.sub(r'^module\.', '', k)] = v
    return out


def _shown(keys, limit=20):
    keys = list(keys)
    return ', '.join(keys[:limit]) + (f' ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def _convert_foreign_keys(module, sd):
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


def load_pretrained(module, checkpoint, prefix=None, logger=None, allow_partial=False):
    """Load pretrained weights into ``module`` and say exactly what did and did not load.

    ``checkpoint`` is a path/URL or an already loaded dict: an mmsparse-converted file, a full mmdet/mmseg
    checkpoint (with ``prefix='backbone.'``), an older mmsparse layout (upgraded through the module's
    ``upgrade_state_dict``) or the authors' raw file, converted on the fly with the module's
    ``official_converter`` when none of its keys is one of the module's.

    By default every parameter and buffer of ``module`` must be loaded with the right shape (BatchNorm's
    ``num_batches_tracked`` counters excepted, which carry no weights) and nothing may be left over; otherwise
    a ``RuntimeError`` lists the missing, unexpected and mis-shaped keys. The one exception are the keys the
    module names in ``dense_only_keys()`` (a backbone's per-output norms, which classification checkpoints
    cannot hold): they keep their initialisation, and the log says so. ``allow_partial=True`` loads what
    matches and warns with the same lists instead. Returns ``(missing, unexpected, mismatched)``.
    """
    from collections import OrderedDict

    from mmengine.logging import print_log
    name = str(checkpoint) if isinstance(checkpoint, str) else '<state dict>'
    ckpt = load_checkpoint_file(checkpoint) if isinstance(checkpoint, str) else checkpoint
    sd = unwrap_state_dict(ckpt)
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
    dense_only = set(module.dense_only_keys()) if hasattr(module, 'dense_only_keys') else set()
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
