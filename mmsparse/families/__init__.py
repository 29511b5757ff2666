"""The one list of mmsparse's model families.

Each family is a :class:`FamilySpec` (its backbone, its operators, its key maps, ...). BiFormer, CloFormer and
STViT are registered by :mod:`.biformer`, :mod:`.cloformer` and :mod:`.stvit`, imported on the first look-up
(importing this package imports no model, so it is safe from any layer). Everything that used to enumerate the
families reads this list at call time: ``SparseAttnBlock``'s ``attn_cfg`` types, the FPN necks, the converter
entry point, :mod:`mmsparse.testing` and :mod:`mmsparse.visualization`. A family registered later with
:func:`register_family` is therefore seen by all of them.
"""
from __future__ import annotations

import importlib

import torch.nn as nn

from .spec import FamilySpec, LiveMapping, OperatorCase, OperatorSpec

__all__ = [
    'FamilySpec', 'OperatorSpec', 'OperatorCase', 'LiveMapping', 'register_family', 'unregister_family',
    'get_family', 'list_families', 'family_of', 'operator_spec', 'plugin_operators'
]

#: the built-in families, in their listing order (modules of this package)
BUILTIN = ('biformer', 'cloformer', 'stvit')

_FAMILIES: dict[str, FamilySpec] = {}
_builtin_loaded = False


def _load_builtin() -> None:
    global _builtin_loaded
    if _builtin_loaded:
        return
    _builtin_loaded = True  # before the imports: they call register_family
    try:
        for name in BUILTIN:
            importlib.import_module(f'{__name__}.{name}')
    except BaseException:
        _builtin_loaded = False
        raise


def _families() -> dict[str, FamilySpec]:
    _load_builtin()
    return _FAMILIES


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add ``spec`` to the list; its name and its operators' type names must be new. Returns ``spec``."""
    if not isinstance(spec, FamilySpec):
        raise TypeError(f'register_family expects a FamilySpec, got {type(spec).__name__}')
    families = _families()
    if spec.name in families:
        if families[spec.name] == spec:
            return spec  # the same spec again (a re-imported module)
        raise KeyError(f'family {spec.name!r} is already registered; unregister_family({spec.name!r}) first')
    taken = {op.name: fam.name for fam in families.values() for op in fam.operators}
    for op in spec.operators:
        if op.name in taken:
            raise KeyError(f'family {spec.name!r}: operator type {op.name!r} already belongs to family '
                           f'{taken[op.name]!r}')
    families[spec.name] = spec
    return spec


def unregister_family(name: str) -> FamilySpec:
    """Remove the family ``name`` (tests register temporary ones); returns its spec."""
    return _FAMILIES.pop(get_family(name).name)


def get_family(name: str) -> FamilySpec:
    """The spec of family ``name`` (case-insensitive); ValueError naming the registered ones."""
    families = _families()
    key = str(name).lower()
    if key not in families:
        raise ValueError(f'family={name!r} is not registered; choose one of {list(families)}')
    return families[key]


def list_families() -> list[str]:
    """Names of the registered families, the built-in ones first."""
    return list(_families())


def operator_spec(module_or_cls: nn.Module | type) -> OperatorSpec | None:
    """The :class:`OperatorSpec` of an operator instance or class (exact class first, then subclasses)."""
    cls = module_or_cls if isinstance(module_or_cls, type) else type(module_or_cls)
    ops = [op for fam in _families().values() for op in fam.operators]
    for op in ops:
        if op.cls is cls:
            return op
    return next((op for op in ops if issubclass(cls, op.cls)), None)


def family_of(module: nn.Module | type) -> str | None:
    """Name of the family whose operator ``module`` is (``None`` for anything else)."""
    spec = operator_spec(module)
    if spec is None:
        return None
    return next(fam.name for fam in _families().values() if spec in fam.operators)


def plugin_operators() -> dict[str, OperatorSpec]:
    """Plug-in attention type name -> :class:`OperatorSpec`, over every family."""
    return {op.name: op for fam in _families().values() for op in fam.operators if op.plugin_defaults is not None}
