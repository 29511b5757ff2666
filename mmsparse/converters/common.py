"""Family-independent part of the converters: unwrapping, dispatch, safe file loading, reporting.

A family module (``mmsparse.converters.<family>``) provides:

``convert_state_dict(state_dict) -> OrderedDict``
    Official backbone keys (already unwrapped, ``module.`` stripped) to mmsparse backbone keys. It drops the
    classification-only keys and raises :class:`UnmappedKeysError` for keys it does not know.
``OFFICIAL_CLASSES: dict[str, callable]``
    ``name -> build(official_kwargs) -> (module, convert_fn)`` where ``convert_fn(state_dict)`` maps that
    class's official state dict onto the module's keys.
``convert_dense_state_dict(state_dict) -> OrderedDict`` (optional)
    Full official detector/segmentor state dict (``backbone.*`` plus neck/head keys) to mmsparse's.
"""
import argparse
import importlib
import re
from collections import OrderedDict

import torch

FAMILIES = ('biformer', 'cloformer', 'stvit')


class UnmappedKeysError(KeyError):
    """Raised when an official state dict holds keys the converter does not know how to map."""

    def __init__(self, family, keys):
        self.family = family
        self.keys = list(keys)
        shown = ', '.join(self.keys[:20]) + (' ...' if len(self.keys) > 20 else '')
        super().__init__(f'{family}: {len(self.keys)} key(s) cannot be mapped to mmsparse: {shown}')

    def __str__(self):
        return self.args[0]


def _family_module(family):
    fam = str(family).lower()
    if fam not in FAMILIES:
        raise ValueError(f'family={family!r} is not supported; choose one of {list(FAMILIES)}')
    return importlib.import_module(f'mmsparse.converters.{fam}')


def family_of_class(official_class):
    """Name of the family whose converter knows ``official_class`` (e.g. ``'BiFormer_mm'`` -> ``'biformer'``)."""
    known = {}
    for fam in FAMILIES:
        for name in getattr(_family_module(fam), 'OFFICIAL_CLASSES', {}):
            known[name] = fam
    if official_class not in known:
        raise ValueError(f'official_class={official_class!r} is not supported; choose one of {sorted(known)}')
    return known[official_class]


def unwrap_state_dict(ckpt, use_ema=False):
    """Return the state dict inside an official / mmengine checkpoint, with a leading ``module.`` stripped.

    Accepts ``{'model': sd}`` (``{'model_ema': sd}`` with ``use_ema``), ``{'state_dict': sd}`` or a raw
    state dict.
    """
    if not isinstance(ckpt, dict):
        raise TypeError(f'expected a checkpoint dict, got {type(ckpt).__name__}')
    keys = ['model_ema', 'model', 'state_dict'] if use_ema else ['model', 'state_dict']
    if use_ema and 'model_ema' not in ckpt:
        raise KeyError(f'use_ema=True but the checkpoint has no "model_ema" entry (it has {sorted(ckpt)[:10]})')
    sd = ckpt
    for key in keys:
        if key in ckpt and isinstance(ckpt[key], dict):
            sd = ckpt[key]
            break
    out = OrderedDict()
    for k, v in sd.items():
        if not torch.is_tensor(v):
            raise TypeError(f'state dict entry {k!r} is a {type(v).__name__}, not a tensor; '
                            'pass the model weights, not a whole training checkpoint')
        out[re.sub(r'^module\.', '', k)] = v
    return out


def convert(family, state_dict, use_ema=False):
    """Map the authors' ``family`` state dict (or checkpoint dict) to mmsparse backbone keys."""
    mod = _family_module(family)
    return mod.convert_state_dict(unwrap_state_dict(state_dict, use_ema=use_ema))


def convert_checkpoint(family, ckpt, use_ema=False):
    """Convert an official checkpoint to an mmengine ``{'state_dict': ...}`` dict of tensors.

    Classification checkpoints become backbone weights under ``backbone.``; official detection /
    segmentation checkpoints (keys starting with ``backbone.``) become whole-model checkpoints when the family
    has a dense converter.
    """
    sd = unwrap_state_dict(ckpt, use_ema=use_ema)
    mod = _family_module(family)
    if any(k.startswith('backbone.') for k in sd):
        if not hasattr(mod, 'convert_dense_state_dict'):
            raise ValueError(f'{family}: no converter for full detection / segmentation checkpoints')
        out = mod.convert_dense_state_dict(sd)
    else:
        out = OrderedDict(('backbone.' + k, v) for k, v in mod.convert_state_dict(sd).items())
    return {'state_dict': out, 'meta': {'converted_from': str(family), 'mmsparse_converter': 1}}


def model_from_official(official_class, official_kwargs=None, state_dict=None):
    """Build the mmsparse module equivalent to the authors' ``official_class(**official_kwargs)``.

    If ``state_dict`` (the authors' keys) is given, it is converted and loaded strictly, so every tensor,
    BN buffers included, must find its place. Returns the module in eval mode.
    """
    family = family_of_class(official_class)
    builder = _family_module(family).OFFICIAL_CLASSES[official_class]
    module, convert_fn = builder(dict(official_kwargs or {}))
    if state_dict is not None:
        sd = convert_fn(unwrap_state_dict(state_dict))
        missing, unexpected = module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise KeyError(f'{official_class}: converted state dict does not match the mmsparse module; '
                           f'missing {list(missing)[:20]}, unexpected {list(unexpected)[:20]}')
    return module.eval()


def load_checkpoint_file(path, map_location='cpu'):
    """Load a checkpoint file without executing arbitrary pickled code.

    ``weights_only=True`` is always used. The authors' training checkpoints also pickle an
    ``argparse.Namespace`` (``args``); that one class is allowed, nothing else.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    if '://' in str(path):  # http(s)://, s3:// ... go through mmengine's loaders
        return CheckpointLoader.load_checkpoint(path, map_location=map_location)
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_pretrained(module, checkpoint, prefix=None, family=None, logger=None, min_match=0.5):
    """Load pretrained weights into ``module`` and say exactly what did and did not load.

    ``checkpoint`` is a path or an already loaded dict: an mmsparse-converted file, a full mmdet/mmseg
    checkpoint (use ``prefix='backbone.'``), or the authors' raw file (converted on the fly with ``family``).
    Raises when fewer than ``min_match`` of the module's parameters and buffers were loaded.
    """
    from mmengine.logging import print_log
    ckpt = load_checkpoint_file(checkpoint) if isinstance(checkpoint, str) else checkpoint
    sd = unwrap_state_dict(ckpt)
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items() if k.startswith(prefix))
        if not sd:
            raise KeyError(f'no key of {checkpoint!r} starts with prefix {prefix!r}')
    own = module.state_dict()
    if family is not None and not set(sd) & set(own):
        sd = convert(family, sd)  # the authors' raw keys
    mismatched = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    for k in mismatched:
        sd.pop(k)
    missing, unexpected = module.load_state_dict(sd, strict=False)
    loaded = len(own) - len(missing) - len(mismatched)
    name = checkpoint if isinstance(checkpoint, str) else '<state dict>'
    print_log(f'Loaded {loaded}/{len(own)} tensors of {type(module).__name__} from {name}', logger=logger)
    for title, keys in (('missing', missing), ('unexpected', unexpected), ('shape-mismatched', mismatched)):
        if keys:
            print_log(f'{len(keys)} {title} key(s): {", ".join(list(keys)[:30])}'
                      + (' ...' if len(keys) > 30 else ''), logger=logger, level=30)
    if loaded < min_match * len(own):
        raise RuntimeError(f'only {loaded}/{len(own)} tensors of {type(module).__name__} matched {name}; '
                           'is it the right checkpoint / prefix / family?')
    return missing, unexpected
