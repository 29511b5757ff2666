"""Argument and input checks shared by every mmsparse module; each error names the argument and accepted values."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

if TYPE_CHECKING:
    import torch

_T = TypeVar('_T')

#: the two implementations every operator and backbone offers (``impl`` argument)
IMPLS = ('reference', 'fast')
#: the implementation used unless told otherwise
DEFAULT_IMPL = 'fast'


def check_impl(impl: Any, owner: str, accepted: Sequence[str] = IMPLS) -> str:
    """Return ``impl`` if it is one of ``accepted``, else raise ``ValueError`` naming ``owner``."""
    if not isinstance(impl, str) or impl not in accepted:
        raise ValueError(f'{owner}: impl={impl!r} is not known; choose one of {list(accepted)}')
    return impl


def check_positive_int(value: Any, name: str) -> int:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int >= 1 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
    return value


def check_positive_number(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a number > 0 (bools rejected), else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f'{name} must be a positive number, got {value!r}')
    return float(value)


def check_number(value: Any, name: str, minimum: float | None = None) -> float:
    """Return ``value`` as a float if it is a number (bools rejected) and, when given, ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (minimum is not None and value < minimum):
        bound = '' if minimum is None else f' >= {minimum:g}'
        raise ValueError(f'{name} must be a number{bound}, got {value!r}')
    return float(value)


def check_odd_kernel(value: Any, name: str) -> int:
    """Return ``value`` if it is a positive odd int (a 'same'-size convolution kernel), else raise ``ValueError``."""
    check_positive_int(value, name)
    if value % 2 == 0:
        raise ValueError(f'{name} must be odd (a same-size convolution kernel), got {value!r}')
    return value


def check_each(values: Any, check: Callable[[Any, str], _T], name: str) -> list[_T]:
    """Apply ``check(entry, f'{name} entries')`` to every entry of the list/tuple ``values``; return a list.

    Raises ``TypeError`` unless ``values`` is a list or tuple.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise TypeError(f'{name} must be a list or tuple, got {values!r}')
    return [check(v, f'{name} entries') for v in values]


def check_rate(value: Any, name: str) -> float:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a number in [0, 1) (drop / drop-path rates)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f'{name} must be a float in [0, 1), got {value!r}')
    return float(value)


def check_scale(value: Any, name: str = 'qk_scale') -> float | None:
    """Return ``value`` if it is None (the default scale) or a positive number, else raise ``ValueError``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ValueError(f'{name} must be None (the default head_dim ** -0.5) or a positive number, got {value!r}')
    return value


def check_bool(value: Any, name: str) -> bool:
    """Raise ``TypeError`` naming ``name`` unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be True or False, got {value!r}')
    return value


def check_layer_cfg(cfg: Any, name: str, example: str) -> dict:
    """Raise ``TypeError`` naming ``name`` unless ``cfg`` is a dict with a ``type`` (``example``: e.g. 'BN')."""
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'{name} must be a dict with a "type" (e.g. dict(type="{example}")), got {cfg!r}')
    return cfg


def check_nchw(x: torch.Tensor, channels: int | None, owner: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a 4-D (N, channels, H, W) tensor (``channels=None``: any C)."""
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        expected = f'(N, {channels}, H, W)' if channels is not None else '(N, C, H, W)'
        raise ValueError(f'{owner} expects an NCHW tensor {expected}, got shape {tuple(x.shape)}')
