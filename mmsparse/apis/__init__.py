"""What the command-line tools under ``tools/`` do besides parsing arguments, importable by scripts and tests.

* :mod:`.model`: the one way from a config to a model, :func:`load_config` and :func:`build_model`.
* :mod:`.runner`: load a config for ``tools/train.py`` / ``tools/test.py`` and adapt it to the launcher and the
  machine (gloo and per-process BN without a GPU, float32 instead of AMP), and end a distributed run's process.
* :mod:`.checks`: stop early, with what to do, when a dataset, a pretrained checkpoint or torchvision is missing,
  or when a backbone output goes unused.
* :mod:`.inference`: the task of a config (mmdet or mmseg), pretrained-free model configs and fake data samples.

``import mmsparse.apis`` imports :mod:`mmsparse` (registering its modules), not mmdet or mmseg: those are
imported where a function needs them.
"""
from __future__ import annotations

from .checks import check_backbone_outputs, check_data, check_pretrained, check_torchvision
from .inference import TASKS, drop_pretrained, fake_data_sample, load_task_config, task_of
from .model import build_model, load_config
from .runner import (amp_fallback_on_cpu, finish_distributed, load_tool_config, prepare, revert_sync_bn_on_cpu,
                     run_tool)

__all__ = [
    'TASKS', 'task_of', 'load_task_config', 'drop_pretrained', 'fake_data_sample', 'check_data', 'check_pretrained',
    'check_torchvision', 'check_backbone_outputs', 'load_config', 'build_model', 'load_tool_config', 'prepare',
    'revert_sync_bn_on_cpu', 'amp_fallback_on_cpu', 'run_tool', 'finish_distributed'
]
