"""One switch for the implementation of every operator in a model: :func:`set_impl` and the ``impl`` attribute.

Every operator (:class:`ImplOperator`) runs one of several implementations of the same maths, chosen by its
``impl`` attribute; the shared vocabulary is :data:`~mmsparse.ops.checks.IMPLS` (``'reference'``, ``'fast'``)
and an operator may offer more (``BiLevelRoutingAttention`` also takes ``'flex'``). A model that contains
operators (a backbone, a neck with attention, a whole detector) is switched at once with :func:`set_impl`;
the backbones (:class:`ImplModel`) expose the same switch as their ``impl`` property::

    backbone.impl = 'reference'                  # every operator of the backbone
    set_impl(detector, 'fast')                   # every operator anywhere in the detector

A value is accepted when at least one operator of the model offers it. Operators that do not offer it (only
BRA offers ``'flex'``; BiFormer's stage-4 global attention does not) run their ``'fast'`` path.
"""
from .checks import DEFAULT_IMPL, IMPLS, check_impl

__all__ = ['ImplOperator', 'ImplModel', 'set_impl', 'accepted_impls']


class ImplOperator:
    """Mixin of an ``nn.Module`` operator with a validated ``impl`` attribute (one of :attr:`impls`).

    Subclasses set ``impls`` when they offer more than :data:`~mmsparse.ops.checks.IMPLS`, and extend the
    setter when a sub-module must follow (``SuperTokenAttention`` switches its refinement MHSA).
    """

    #: the implementations this operator offers
    impls = IMPLS

    @property
    def impl(self):
        return self._impl

    @impl.setter
    def impl(self, value):
        self._impl = check_impl(value, type(self).__name__, self.impls)


class ImplModel:
    """Mixin of a model (a backbone) whose ``impl`` property is :func:`set_impl` on itself.

    Reading returns the value last set; setting reaches every operator inside. The model sets it once at the
    end of its ``__init__``, after building its operators.
    """

    @property
    def impl(self):
        return self._impl

    @impl.setter
    def impl(self, value):
        set_impl(self, value)


def _operators(module):
    return [m for m in module.modules() if isinstance(m, ImplOperator)]


def accepted_impls(module):
    """The ``impl`` values :func:`set_impl` accepts for ``module``: every value one of its operators offers."""
    accepted = []
    for m in _operators(module):
        accepted += [name for name in m.impls if name not in accepted]
    return accepted


def set_impl(module, impl):
    """Switch every operator inside ``module`` (any ``nn.Module``, the module itself included) to ``impl``.

    Args:
        module (nn.Module): an operator, a backbone, a neck, a plug-in block or a whole detector / segmentor.
        impl (str): ``'reference'`` or ``'fast'``; ``'flex'`` where the model contains a
            ``BiLevelRoutingAttention`` (the model's other operators then run ``'fast'``).

    Returns:
        int: the number of operators switched.

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
