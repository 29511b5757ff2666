"""One switch for the implementation of every operator in a model: :func:`set_impl` and the ``impl`` attribute.

Every operator (:class:`ImplOperator`) offers :data:`~mmsparse.ops.checks.IMPLS` (``'reference'``, ``'fast'``)
and maybe more (``BiLevelRoutingAttention`` also takes ``'flex'``)::

    backbone.impl = 'reference'                  # every operator of the backbone
    set_impl(detector, 'fast')                   # every operator anywhere in the detector

A value is accepted when one operator of the model offers it; operators that do not offer it run ``'fast'``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

from .checks import DEFAULT_IMPL, IMPLS, check_impl

__all__ = ['ImplOperator', 'ImplModel', 'set_impl', 'accepted_impls']


class ImplOperator:
    """Mixin of an ``nn.Module`` operator with a validated ``impl`` attribute (one of :attr:`impls`).

    Subclasses may widen ``impls`` and extend the setter when a sub-module must follow.
    """

    #: the implementations this operator offers
    impls: tuple[str, ...] = IMPLS
    _impl: str

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        self._impl = check_impl(value, type(self).__name__, self.impls)


class ImplModel:
    """Mixin of a model (a backbone) whose ``impl`` property is :func:`set_impl` on itself.

    Reading returns the value last set; set it once at the end of ``__init__``, after building the operators.
    """

    _impl: str

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        set_impl(self, value)  # type: ignore[arg-type]  # why: ImplModel is mixed into an nn.Module


def _operators(module: nn.Module) -> list[Any]:
    return [m for m in module.modules() if isinstance(m, ImplOperator)]


def accepted_impls(module: nn.Module) -> list[str]:
    """The ``impl`` values :func:`set_impl` accepts for ``module``: every value one of its operators offers."""
    accepted: list[str] = []
    for m in _operators(module):
        accepted += [name for name in m.impls if name not in accepted]
    return accepted


def set_impl(module: nn.Module, impl: str) -> int:
    """Switch every operator inside ``module`` (any ``nn.Module``, the module itself included) to ``impl``.

    Args:
        impl: ``'reference'`` or ``'fast'``; ``'flex'`` where the model contains a ``BiLevelRoutingAttention``
            (its other operators then run ``'fast'``).

    Returns:
        The number of operators switched.

    Raises:
        ValueError: ``module`` contains no operator, or no operator of it offers ``impl`` (the message names
            the accepted values).
    """
    ops = _operators(module)
    name = type(module).__name__
    if not ops:
        # a typo is reported as such before the missing operators
        if not isinstance(impl, str) or impl not in IMPLS + ('flex', ):
            raise ValueError(f'set_impl: impl={impl!r} is not known; choose one of {list(IMPLS)} '
                             "(BiLevelRoutingAttention also takes 'flex')")
        raise ValueError(f'set_impl: {name} contains no mmsparse operator, so impl={impl!r} would change nothing')
    accepted = accepted_impls(module)
    if not isinstance(impl, str) or impl not in accepted:
        extra = ''
        if impl == 'flex':
            extra = " ('flex' is offered by BiLevelRoutingAttention only, and this model has none)"
        raise ValueError(f'set_impl: impl={impl!r} is not known for {name}; choose one of {accepted}{extra}')
    for m in ops:
        m.impl = impl if impl in m.impls else DEFAULT_IMPL
    for m in module.modules():
        if isinstance(m, ImplModel):
            m._impl = impl if impl in accepted_impls(m) else DEFAULT_IMPL
    return len(ops)
