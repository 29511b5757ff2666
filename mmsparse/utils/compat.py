"""One call for each torch API whose form changed between torch 2.1 and 2.13 (the supported range).

- :func:`autocast_state`: device-generic since torch 2.4, per-device functions before.
- :func:`load_restricted`: ``torch.load(weights_only=True)`` with extra allowed globals; no torch version ever
  unpickles an unlisted global.
- :func:`flex_attention_available` / :func:`require_flex_attention`: FlexAttention arrived in torch 2.5.
"""
from __future__ import annotations

import codecs
import os
import pickle
import types
from typing import IO, Any, Iterable

import torch

__all__ = ['TORCH_VERSION', 'MIN_TORCH', 'autocast_state', 'autocast_enabled', 'load_restricted',
           'flex_attention_available',
           'require_flex_attention']

#: the oldest torch mmsparse supports (mmcv 2.1.0's prebuilt CUDA wheels are for torch 2.1)
MIN_TORCH = (2, 1)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split('+')[0].split('.')[:2]:
        digits = ''.join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


#: ``(major, minor)`` of the installed torch
TORCH_VERSION = _version_tuple(torch.__version__)


#: torch >= 2.4 has the device-generic ``is_autocast_enabled(device)`` / ``get_autocast_dtype(device)``
_DEVICE_GENERIC_AUTOCAST = hasattr(torch, 'get_autocast_dtype')


def autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    """``(enabled, dtype)`` of autocast on ``device_type`` ('cpu', 'cuda' or 'xpu') for the calling thread."""
    if _DEVICE_GENERIC_AUTOCAST:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    if device_type == 'cpu':
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    if device_type == 'cuda':
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    if device_type == 'xpu' and hasattr(torch, 'is_autocast_xpu_enabled'):
        return torch.is_autocast_xpu_enabled(), torch.get_autocast_xpu_dtype()  # type: ignore[attr-defined]
    raise ValueError(f"autocast_state: device_type={device_type!r} is not supported by torch {torch.__version__}; "
                     "choose one of ['cpu', 'cuda', 'xpu']")


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``torch.is_autocast_enabled(device_type)`` of torch >= 2.4)."""
    return autocast_state(device_type)[0]


# ----------------------------------------------------------------------------------------------------------
# torch.load with an allowlist


def _global_name(entry: Any) -> tuple[str, Any]:
    """The ``module.name`` pickle writes for an allowlist entry (an object, or ``(object, name)``)."""
    if isinstance(entry, tuple):
        return entry[1], entry[0]
    return f'{entry.__module__}.{entry.__qualname__}', entry


def _restricted_pickle_module(extra_globals: Iterable[Any]) -> types.ModuleType:
    """A pickle-module stand-in for ``torch.load(pickle_module=...)`` that resolves only allowed globals."""
    from torch import _weights_only_unpickler
    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    # protocol-2 pickles write bytes (numpy scalars' payload) as _codecs.encode(str, 'latin1'); torch >= 2.4 allows it
    allowed['_codecs.encode'] = codecs.encode
    allowed.update(_global_name(entry) for entry in extra_globals)

    class RestrictedUnpickler(pickle.Unpickler):

        def find_class(self, module: str, name: str) -> Any:
            full_name = f'{module}.{name}'
            if full_name not in allowed:
                raise pickle.UnpicklingError(f'Weights only load failed: {full_name} is not an allowed global')
            return allowed[full_name]

    module: Any = types.ModuleType('mmsparse_restricted_pickle')  # a stand-in for the pickle module
    module.Unpickler = RestrictedUnpickler
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()
    module.UnpicklingError = pickle.UnpicklingError
    return module


def load_restricted(path: str | os.PathLike | IO[bytes], map_location: Any = 'cpu',
                    extra_globals: Iterable[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` that may also resolve ``extra_globals``, on every supported torch.

    Args:
        extra_globals: objects, or ``(object, 'module.name')`` pairs binding a pickled name to a stand-in.
    """
    extra_globals = list(extra_globals)
    if TORCH_VERSION >= (2, 6):  # scoped allowlist, ``(object, name)`` pairs included
        # torch's context manager removes what it was given on exit, also entries that were allowlisted
        # globally before (``mmsparse`` allowlists mmengine's objects at import): hand it only the new ones
        already = set(torch.serialization.get_safe_globals())
        with torch.serialization.safe_globals([g for g in extra_globals if g not in already]):
            return torch.load(path, map_location=map_location, weights_only=True)
    # torch < 2.6: the weights-only unpickler has no allowlist (< 2.4) or builds no listed class and takes no pairs,
    # so the allowlist (torch's own weights-only globals plus the extras) is enforced by the unpickler handed to
    # torch; weights_only must then be False for torch to accept a pickle_module, which resolves nothing else
    return torch.load(path, map_location=map_location, weights_only=False,
                      pickle_module=_restricted_pickle_module(extra_globals))


# ----------------------------------------------------------------------------------------------------------
# FlexAttention


def flex_attention_available() -> tuple[bool, str]:
    """``(True, '')`` if FlexAttention can be imported (torch >= 2.5), else ``(False, reason)``."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError as err:
        return False, f'torch {torch.__version__} has no FlexAttention ({err})'
    return True, ''


def require_flex_attention(owner: str) -> None:
    """Raise ``RuntimeError`` naming ``owner`` and the alternatives when FlexAttention is missing."""
    ok, reason = flex_attention_available()
    if not ok:
        raise RuntimeError(f"{owner}: impl='flex' needs FlexAttention (torch >= 2.5): {reason}; "
                           "use impl='fast' or impl='reference', or upgrade torch")
