"""One way from a config to a model: :func:`load_config` and :func:`build_model`."""
# why one way: every tool turning a config (and checkpoint) into a module goes through here (like mmdet's
# init_detector), so they agree on scope, pretrained weights, SyncBN on CPU, initialisation and checkpoint loader
from __future__ import annotations

import copy
import importlib
import os
import os.path as osp
import warnings
from typing import TYPE_CHECKING

from mmsparse.utils.quiet import quiet_pkg_resources
from .inference import drop_pretrained
from .runner import sync_bn_to_bn

if TYPE_CHECKING:
    import torch
    import torch.nn as nn
    from mmengine.config import Config
    from mmengine.registry import Registry

#: what :func:`build_model` can build from a config: the whole ``model``, or its ``model.backbone``
PARTS = ('model', 'backbone')
#: default scopes a config may have (a config without one is built in ``'mmdet'``, as mmsparse's own configs)
SCOPES = ('mmdet', 'mmseg', 'mmsparse')


def load_config(config: str | os.PathLike | Config, cfg_options: dict | None = None) -> Config:
    """The config at a path (or a ``Config`` as given), with ``cfg_options`` merged into it.

    Loading imports the config's ``custom_imports`` (mmsparse's configs register mmsparse this way).

    Raises:
        FileNotFoundError: ``config`` is a path to no file.
        TypeError: ``config`` is neither a path nor a ``Config``.
    """
    from mmengine.config import Config
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not osp.isfile(path):
            raise FileNotFoundError(f'config: no such file: {path}')
        with quiet_pkg_resources():  # mmengine re-imports pkg_resources for each package a config names
            config = Config.fromfile(path)
    elif not isinstance(config, Config):
        raise TypeError(f'config must be a file path or an mmengine Config, got {type(config).__name__}')
    if cfg_options:
        config.merge_from_dict(cfg_options)
    return config


def _registry(scope: str) -> Registry:
    """The ``MODELS`` registry of ``scope``, with its package's modules registered."""
    # imported here: importing mmsparse.apis must not import mmdet or mmseg
    if scope == 'mmsparse':
        from mmsparse.registry import MODELS
        return MODELS
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    return importlib.import_module(f'{scope}.registry').MODELS


def _quiet_init_weights(model: nn.Module) -> None:
    """``model.init_weights()`` without mmengine's INFO line per parameter."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model.init_weights()  # type: ignore[operator]  # the caller checked hasattr
    finally:
        logger.setLevel(level)


def _load_backbone_checkpoint(backbone: nn.Module, checkpoint: str) -> None:
    """Load a full mmdet / mmseg checkpoint, an mmsparse backbone file or the authors' raw one into ``backbone``.

    Raises ``ValueError`` naming the keys that did not fit.
    """
    from mmsparse.utils.checkpoint import load_checkpoint_file, load_pretrained, unwrap_state_dict
    state = unwrap_state_dict(load_checkpoint_file(checkpoint))
    prefix = 'backbone.' if any(k.startswith('backbone.') for k in state) else None
    try:
        load_pretrained(backbone, state, prefix=prefix)
    except (KeyError, RuntimeError) as err:  # the message names the missing / unexpected keys
        raise ValueError(f'checkpoint {checkpoint}: {err}') from err


def _dataset_meta(cfg: Config, ckpt_meta: dict) -> dict | None:
    """The checkpoint's ``dataset_meta`` (as mmdet's ``init_detector``), else the config's test-set metainfo."""
    if ckpt_meta.get('dataset_meta'):
        return ckpt_meta['dataset_meta']
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    metainfo = dataset.get('metainfo')
    return dict(metainfo) if metainfo else None


def build_model(config: str | os.PathLike | Config,
                checkpoint: str | None = None,
                *,
                part: str = 'model',
                cfg_options: dict | None = None,
                pretrained: bool = False,
                impl: str | None = None,
                device: str | torch.device = 'cpu',
                seed: int | None = None) -> nn.Module:
    """Build a config's model (or its backbone) in eval mode, initialised or loaded from a checkpoint.

    Args:
        config: a config file or a loaded ``Config`` (left unchanged, ``cfg_options`` aside).
        checkpoint: a path or URL; None runs ``init_weights()``. ``part='model'``: an mmengine checkpoint
            (non-strict, as ``init_detector``); ``part='backbone'``: also a full mmdet / mmseg checkpoint, an
            mmsparse backbone file or the authors' raw file (strict).
        part: ``'model'`` or ``'backbone'`` (the config's ``model.backbone``).
        pretrained: keep ``Pretrained`` ``init_cfg`` / ``model.pretrained`` (downloads); dropped by default.
        impl: switch every mmsparse operator to it (:func:`mmsparse.set_impl`).
        device: on CPU, SyncBN is built as BN (it has no CPU implementation).
        seed: seeds the initialisation (mmengine's ``set_random_seed``).

    Returns:
        The module in eval mode with ``cfg`` attached, and for ``part='model'`` ``dataset_meta`` (the
        checkpoint's, else the config's test set's) where there is one.

    Raises:
        FileNotFoundError: no such config or checkpoint file.
        ValueError: an unknown ``part`` or scope, a config without ``model.backbone`` (``part='backbone'``), a
            checkpoint that does not fit the backbone, or an ``impl`` that no operator of the model offers.
    """
    import torch
    from mmengine.registry import DefaultScope
    if part not in PARTS:
        raise ValueError(f'part={part!r} is not known; choose one of {list(PARTS)}')
    if checkpoint is not None and not osp.isfile(checkpoint) and '://' not in checkpoint:
        raise FileNotFoundError(f'checkpoint: no such file: {checkpoint}')
    cfg = load_config(config, cfg_options)
    scope = cfg.get('default_scope') or 'mmdet'
    if scope not in SCOPES:
        raise ValueError(f'default_scope={scope!r} in the config; mmsparse builds models of {list(SCOPES)}')

    model_cfg = copy.deepcopy(cfg.get('model'))  # the caller's config stays as it was
    if not model_cfg:
        raise ValueError('the config has no model')
    if not pretrained:
        drop_pretrained(model_cfg)
    if part == 'backbone':
        model_cfg = model_cfg.get('backbone')
        if not model_cfg:
            raise ValueError('part=\'backbone\': the config has no model.backbone')
        model_cfg.pop('_delete_', None)
    on_cpu = torch.device(device).type == 'cpu'
    if on_cpu:
        sync_bn_to_bn(model_cfg)

    if seed is not None:
        from mmengine.runner import set_random_seed
        set_random_seed(seed)
    with DefaultScope.overwrite_default_scope(scope):
        model = _registry(scope).build(model_cfg)
    if on_cpu:
        from mmengine.model import revert_sync_batchnorm
        model = revert_sync_batchnorm(model)  # SyncBN a module builds by its own default

    ckpt_meta: dict = {}
    if checkpoint is None:
        if hasattr(model, 'init_weights'):
            _quiet_init_weights(model)
    elif part == 'backbone':
        _load_backbone_checkpoint(model, checkpoint)
    else:
        from mmengine.runner import load_checkpoint
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
        ckpt_meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    if part == 'model':
        dataset_meta = _dataset_meta(cfg, ckpt_meta)
        if dataset_meta is not None:
            model.dataset_meta = dataset_meta
    model.cfg = cfg
    if impl is not None:
        from mmsparse.ops import set_impl
        set_impl(model, impl)  # names the accepted values when no operator offers ``impl``
    model.to(device)
    model.eval()  # not chained: some modules' train() (mmdet's ResNet) returns None
    return model
