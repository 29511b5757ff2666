"""mmsparse's registries, and registration of its models into mmdet's and mmseg's.

``MODELS`` is a child of mmengine's root registry with scope ``mmsparse`` (the mmpretrain pattern), so
``type='mmsparse.BiFormer'`` builds under any default scope. :func:`register_into_downstream` additionally
registers every mmsparse model under its plain name into ``mmdet.registry.MODELS`` and
``mmseg.registry.MODELS`` when those packages are importable, so ``type='BiFormer'`` works in stock configs
under ``default_scope='mmdet'`` or ``'mmseg'``. It never replaces a name those registries already hold.
"""
import importlib
import warnings

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmsparse', locations=['mmsparse.ops', 'mmsparse.models'])
#: training hooks (``type='mmsparse.ExactResumeHook'`` from any default scope)
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmsparse', locations=['mmsparse.engine'])

#: scopes whose model registry receives our plain names, in the order they are tried
DOWNSTREAM_SCOPES = ('mmdet', 'mmseg')


def register_in_root(name):
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


def _downstream_registry(scope):
    try:
        return importlib.import_module(f'{scope}.registry').MODELS
    except ImportError:
        return None


def register_into_downstream(scopes=DOWNSTREAM_SCOPES):
    """Register every module of :data:`MODELS` into the ``MODELS`` registry of each importable scope.

    Returns ``{scope: [names registered]}``. A name already present in a downstream registry is left alone
    (with a warning when it is a different class), so mmsparse never shadows ``FPN`` or similar.
    """
    done = {}
    for scope in scopes:
        registry = _downstream_registry(scope)
        if registry is None:
            continue
        added = []
        for name, cls in MODELS.module_dict.items():
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
