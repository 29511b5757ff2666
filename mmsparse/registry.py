"""mmsparse's registries, and registration of its public models into mmdet's and mmseg's.

``type='mmsparse.X'`` builds under any default scope; the public models (:data:`DOWNSTREAM_MODELS`) also build
as ``type='X'`` under ``default_scope='mmdet'`` / ``'mmseg'``. Internal blocks (``STViTBlock``, ``TokenMHSA``, ...)
and the hooks stay ``mmsparse.``-scoped; ``LN2d`` is in mmengine's root registry (:func:`register_in_root`);
``SyntheticADE20KDataset`` is registered into mmseg's ``DATASETS`` by :mod:`mmsparse.datasets`.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Callable, Iterable, TypeVar

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

# a child of mmengine's root registry with scope 'mmsparse' (the mmpretrain pattern)
MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmsparse', locations=['mmsparse.ops', 'mmsparse.models'])
#: training hooks (``type='mmsparse.ExactResumeHook'`` from any default scope)
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmsparse', locations=['mmsparse.engine'])

#: scopes whose model registry receives our plain names, in the order they are tried
DOWNSTREAM_SCOPES = ('mmdet', 'mmseg')
#: the model names users put in mmdet / mmseg configs without the ``mmsparse.`` prefix, and the only ones copied
#: into those registries (README.md, docs/ and configs/plugins/README.md use them so)
DOWNSTREAM_MODELS = frozenset({
    'BiFormer', 'CloFormer', 'STViT',  # backbones
    'SparseAttnBlock', 'SparseAttnFPN', 'MultiLevelSparseAttn',  # plug-in block and necks
    'BiLevelRoutingAttention', 'AttnConv', 'SuperTokenAttention',  # the operators SparseAttnBlock's attn_cfg takes
})

_T = TypeVar('_T', bound=type)


def register_in_root(name: str) -> Callable[[_T], _T]:
    """Class decorator: also register the class as ``name`` in mmengine's *root* ``MODELS``.

    Raises ``KeyError`` if another class already holds ``name`` (re-registering the same class is fine).
    """

    # why: mmcv's build_norm_layer ('LN2d') and build_plugin_layer (SparseAttnBlock in a plain-Python ResNet)
    # look names up without a scope

    def wrap(cls: _T) -> _T:
        existing = MMENGINE_MODELS.module_dict.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__,
                                                                                     cls.__qualname__):
            raise KeyError(f'mmengine\'s root MODELS already holds another {name!r} ({existing.__module__})')
        MMENGINE_MODELS.register_module(name=name, module=cls, force=True)
        return cls

    return wrap


def _downstream_registry(scope: str) -> Registry | None:
    try:
        return importlib.import_module(f'{scope}.registry').MODELS
    except ImportError:
        return None


def register_into_downstream(scopes: Iterable[str] = DOWNSTREAM_SCOPES,
                             names: Iterable[str] = DOWNSTREAM_MODELS) -> dict[str, list[str]]:
    """Register ``names`` of :data:`MODELS` into the ``MODELS`` of each importable scope; ``{scope: [added]}``.

    A name the downstream registry already holds is left alone (warning if it is another class), so mmsparse
    never shadows ``FPN`` and the like; a name mmsparse's registry lacks is skipped. Imports only the scopes'
    ``registry`` modules (cheap).
    """
    done: dict[str, list[str]] = {}
    for scope in scopes:
        registry = _downstream_registry(scope)
        if registry is None:
            continue
        added: list[str] = []
        for name in sorted(names):
            cls = MODELS.module_dict.get(name)
            if cls is None:
                continue
            existing = registry.module_dict.get(name)
            if existing is cls:
                continue
            if existing is not None:
                warnings.warn(f'mmsparse: {scope} already registers a model named {name!r}; '
                              f'use type="mmsparse.{name}" to get the mmsparse one.')
                continue
            registry.register_module(name=name, module=cls)
            added.append(name)
        done[scope] = added
    return done
