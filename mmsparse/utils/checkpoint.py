"""Make mmengine 0.10.7 checkpoints load on torch >= 2.6.

torch 2.6 made ``torch.load`` default to ``weights_only=True``. mmengine 0.10.7 calls ``torch.load`` without
that argument, and the checkpoints its Runner writes pickle a few non-tensor objects: the message hub's
``HistoryBuffer`` logs (numpy arrays inside) and numpy scalars in the runtime info. Loading such a file for
``--resume`` or ``load_from`` then fails with ``UnpicklingError: Weights only load failed``.

The narrow fix is to add exactly those classes to torch's allowlist for the restricted unpickler
(``torch.serialization.add_safe_globals``). ``weights_only`` stays on, so a checkpoint that pickles anything
else (arbitrary code) is still refused. We do not patch ``torch.load`` and never pass ``weights_only=False``.

One entry needs care: ``HistoryBuffer`` pickles its statistics methods (``HistoryBuffer.min`` ...) by
qualified name, which pickle writes as ``getattr(HistoryBuffer, 'min')``. Allowing the builtin ``getattr``
would let a file read any attribute of any allowed object, so the name ``getattr`` is instead bound, for the
restricted unpickler only, to :func:`_history_buffer_getattr`, which resolves nothing but HistoryBuffer's
registered statistics methods.
"""
import torch

_DONE = False


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
    """Allowlist :func:`mmengine_checkpoint_globals` for ``torch.load(weights_only=True)``. Idempotent."""
    global _DONE
    if _DONE or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
    _DONE = True
