"""What mmsparse knows about one model family: :class:`FamilySpec` and its :class:`OperatorSpec` entries.

A spec only *names* existing classes and functions; the code of an operator, a backbone or a key map stays in
:mod:`mmsparse.ops`, :mod:`mmsparse.models` and :mod:`mmsparse.converters`. Every table that used to list the
three families (plug-in attention types, converter families, the authors' classes, the operators the
visualization records) is derived from the registered specs (:mod:`mmsparse.families`).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

__all__ = ['OperatorCase', 'OperatorSpec', 'FamilySpec', 'LiveMapping']

#: ``explain(op, x, query_yx) -> dict`` (see :attr:`OperatorSpec.explain`)
ExplainFn = Callable[..., dict]


@dataclass(frozen=True)
class OperatorCase:
    """One timed run of an operator: constructor kwargs and an NCHW input shape.

    Attributes:
        kwargs (dict): constructor arguments besides ``embed_dims`` (which is ``shape[1]``).
        shape (tuple[int, int, int, int]): input on the accelerator.
        dry_shape (tuple[int, int, int, int], optional): a tiny CPU input that checks the same code path.
    """
    kwargs: dict
    shape: tuple
    dry_shape: tuple | None = None

    def __post_init__(self) -> None:
        for name in ('shape', 'dry_shape'):
            value = getattr(self, name)
            if value is not None and (len(value) != 4 or not all(isinstance(v, int) and v > 0 for v in value)):
                raise ValueError(f'OperatorCase {name} must be 4 positive ints [N, C, H, W], got {value!r}')


@dataclass(frozen=True)
class OperatorSpec:
    """An attention operator of a family (NCHW in and out, channels as ``embed_dims``).

    Attributes:
        cls (type): the ``nn.Module`` class.
        short (str): short name, the key of the benchmark's layer table (``'bra'``).
        plugin_defaults (dict, optional): defaults filled into a ``SparseAttnBlock`` / neck ``attn_cfg`` of
            this type; ``None`` when the operator is not offered as a plug-in (e.g. BiFormer's stage-4 global
            attention). The plug-in type name is ``cls.__name__``.
        bench_kwargs (dict, optional): constructor kwargs of the benchmark's layer case (``embed_dims`` from the
            shape); ``None`` when the operator has no layer case.
        device_cases (dict[str, OperatorCase]): the prepared device check's cases, name -> case.
        explain (callable, optional): ``explain(op, x, query_yx) -> dict`` with at least ``weights`` (a 2-D
            tensor over the input map or a coarser grid covering it) and ``caption``; ``None`` uses the
            operator's own ``explain(x, query_yx)`` method when it has one.
    """
    cls: type
    short: str
    plugin_defaults: dict | None = None
    bench_kwargs: dict | None = None
    device_cases: dict = field(default_factory=dict)
    explain: ExplainFn | None = None

    @property
    def name(self) -> str:
        """The type name of ``attn_cfg`` (the class name)."""
        return self.cls.__name__

    def plugin_cfg(self) -> dict:
        """A plug-in ``attn_cfg`` with the defaults (a fresh copy)."""
        if self.plugin_defaults is None:
            raise ValueError(f'{self.name} is not offered as a plug-in attention type')
        return dict(type=self.name, **copy.deepcopy(self.plugin_defaults))

    def explainer(self) -> ExplainFn | None:
        """``explain(op, x, query_yx)``: the hook, else the class's own method, else ``None``."""
        if self.explain is not None:
            return self.explain
        if callable(getattr(self.cls, 'explain', None)):
            return lambda op, x, query_yx: op.explain(x, query_yx)
        return None


@dataclass(frozen=True)
class FamilySpec:
    """A model family: its backbone, its operators and the tables that name it.

    Attributes:
        name (str): lower-case family name (``'biformer'``): the converter's ``family`` argument.
        backbone (type): the backbone class, registered in mmsparse's ``MODELS`` under its class name.
        operators (tuple[OperatorSpec, ...]): the family's attention operators.
        converter (module, optional): key maps of the authors' checkpoints (``convert_state_dict``,
            ``upgrade_state_dict``, optionally ``convert_dense_state_dict``); ``None`` when there are none.
        official (dict[str, callable], optional): the authors' class name -> ``build(kwargs) -> (module,
            convert_fn)`` (parity tests, :mod:`mmsparse.testing`).
        presets (dict[str, dict]): benchmark backbone presets, name -> backbone kwargs (``'biformer-s'``).
        detectors (dict[str, tuple[str, str]]): the device check's detector steps, name -> (config path,
            backbone preset).
        tiny (dict): a small backbone config (``type`` included) that builds and runs on CPU in a second.
        tiny_input (tuple[int, int]): an input size (H, W) ``tiny`` accepts.
    """
    name: str
    backbone: type
    operators: tuple = ()
    converter: ModuleType | None = None
    official: dict | None = None
    presets: dict = field(default_factory=dict)
    detectors: dict = field(default_factory=dict)
    tiny: dict = field(default_factory=dict)
    tiny_input: tuple = (64, 64)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.lower():
            raise ValueError(f'FamilySpec name must be a non-empty lower-case str, got {self.name!r}')
        if not isinstance(self.backbone, type):
            raise TypeError(f'FamilySpec {self.name}: backbone must be a class, got {self.backbone!r}')
        object.__setattr__(self, 'operators', tuple(self.operators))
        for op in self.operators:
            if not isinstance(op, OperatorSpec):
                raise TypeError(f'FamilySpec {self.name}: operators must be OperatorSpec, got {op!r}')
        if self.tiny and self.tiny.get('type') is None:
            raise ValueError(f'FamilySpec {self.name}: tiny must be a config dict with a "type" key')

    def tiny_cfg(self) -> dict:
        """A fresh copy of :attr:`tiny`."""
        return copy.deepcopy(self.tiny)


class LiveMapping(Mapping):
    """A read-only mapping recomputed from ``source()`` at every access.

    The old module-level tables (``ATTN_TYPES``, ``FAMILIES``, ``OFFICIAL_CLASSES``) are such views, so a
    family registered after import is seen by code that imported the table earlier.
    """

    def __init__(self, source: Callable[[], dict], doc: str = '') -> None:
        self._source = source
        self.__doc__ = doc or type(self).__doc__

    def __getitem__(self, key: Any) -> Any:
        return self._source()[key]

    def __iter__(self) -> Iterator:
        return iter(self._source())

    def __len__(self) -> int:
        return len(self._source())

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self._source()!r})'
