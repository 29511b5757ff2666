"""mmsparse's registries, and registration of its models into mmdet's and mmseg's.

``MODELS`` is a child of mmengine's root registry with scope ``mmsparse`` (the mmpretrain pattern), so
``type='mmsparse.BiFormer'`` builds under any default scope. :func:`register_into_downstream` additionally
registers the public models (:data:`DOWNSTREAM_MODELS`: backbones, plug-in / neck types, plug-in operators)
under their plain names into ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS`` when those packages are
installed, so ``type='BiFormer'`` works in stock configs under ``default_scope='mmdet'`` or ``'mmseg'``. It
imports only their ``registry`` modules (cheap), never replaces a name those registries already hold, and leaves
the internal blocks (``STViTBlock``, ``TokenMHSA``, ``GlobalAttentionLePE``, ...) in mmsparse's registry only,
where ``type='mmsparse.TokenMHSA'`` builds them. ``LN2d`` reaches every scope through mmengine's root registry
(:func:`register_in_root`); the hooks stay ``mmsparse.``-scoped; ``SyntheticADE20KDataset`` is registered into
mmseg's ``DATASETS`` by :mod:`mmsparse.datasets`.
"""
import importlib
import warnings
from typing import Callable, Dict, Iterable, List, Optional, TypeVar

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

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

_T = TypeVar('_T')


def register_in_root(name: str) -> Callable[[_T], _T]:
    """Class decorator: also register the class under ``name`` in mmengine's *root* ``MODELS``.

    For the few modules that third-party builders look up without a scope: mmcv's ``build_norm_layer`` (our
    ``'LN2d'``) and ``build_plugin_layer`` (``SparseAttnBlock`` in a ResNet built from plain Python). Re-importing
    the same class is fine; a different class already holding ``name`` is an error, never silently replaced.
    """

    def wrap(cls):
        existing = MMENGINE_MODELS.module_dict.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__,
                                                                                     cls.__qualname__):
            raise KeyError(f'mmengine\'s root MODELS already holds another {name!r} ({existing.__module__})')
        MMENGINE_MODELS.register_module(name=name, module=cls, force=True)
        return cls

    return wrap


def _downstream_registry(scope: str) -> Optional[Registry]:
    try:
        return importlib.import_module(f'{scope}.registry').MODELS
    except ImportError:
        return None


def register_into_downstream(scopes: Iterable[str] = DOWNSTREAM_SCOPES,
                             names: Iterable[str] = DOWNSTREAM_MODELS) -> Dict[str, List[str]]:
    """Register the modules of :data:`MODELS` listed in ``names`` into the ``MODELS`` of each importable scope.

    Returns ``{scope: [names registered]}``. A name already present in a downstream registry is left alone
    (with a warning when it is a different class), so mmsparse never shadows ``FPN`` or similar. A listed name
    that mmsparse's registry lacks is skipped.
    """
    done = {}
    for scope in scopes:
        registry = _downstream_registry(scope)
        if registry is None:
            continue
        added = []
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
