"""Conversion of the authors' checkpoints and configurations to mmsparse modules.

- :func:`convert` maps an official state dict (classification ``{'model': ...}`` files too) to mmsparse
  backbone keys, dropping classification-only keys and raising on anything it cannot map.
- :func:`model_from_official` builds the mmsparse module equivalent to one of the authors' classes from the
  authors' constructor keyword arguments, and loads an official state dict into it.
- :func:`load_pretrained` is what a backbone's ``init_cfg=dict(type='Pretrained')`` runs.

One module per family (``biformer.py``, ``cloformer.py``, ``stvit.py``) defines ``convert_state_dict`` and
``OFFICIAL_CLASSES``; this package only dispatches and shares the unwrapping and reporting.
"""
from .common import (FAMILIES, UnmappedKeysError, convert, convert_checkpoint, family_of_class,
                     load_checkpoint_file, load_pretrained, model_from_official, unwrap_state_dict)

__all__ = [
    'FAMILIES', 'UnmappedKeysError', 'convert', 'convert_checkpoint', 'family_of_class', 'load_checkpoint_file',
    'load_pretrained', 'model_from_official', 'unwrap_state_dict'
]
