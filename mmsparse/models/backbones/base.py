"""What the three backbones share: arch resolution, stage freezing, ``norm_eval``, ``with_cp`` and
loud pretrained loading. Each backbone keeps its own layers; this class only holds the OpenMMLab plumbing.
"""
import copy

import torch.utils.checkpoint as cp
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm


def resolve_arch(arch, arch_zoo, aliases, required_keys, name='arch'):
    """Return a copy of the arch dict for ``arch`` (a zoo name, an alias, or a dict with ``required_keys``)."""
    if isinstance(arch, str):
        key = aliases.get(arch.lower(), arch.lower())
        if key not in arch_zoo:
            names = sorted(set(arch_zoo) | set(aliases))
            raise ValueError(f'{name}={arch!r} is not a known variant; choose one of {names} or pass a dict')
        return copy.deepcopy(arch_zoo[key])
    if isinstance(arch, dict):
        missing = set(required_keys) - set(arch)
        if missing:
            raise ValueError(f'{name} dict is missing the keys {sorted(missing)}; it needs {sorted(required_keys)}')
        return copy.deepcopy(arch)
    raise TypeError(f'{name} must be a variant name (str) or a dict, got {type(arch).__name__}')


def check_out_indices(out_indices, num_stages):
    """Normalise ``out_indices`` (int or sequence, negative allowed) to a sorted tuple of stage indices."""
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    if not isinstance(out_indices, (list, tuple)) or not out_indices:
        raise TypeError(f'out_indices must be an int or a non-empty sequence of ints, got {out_indices!r}')
    result = []
    for idx in out_indices:
        if not isinstance(idx, int) or not -num_stages <= idx < num_stages:
            raise ValueError(f'out_indices entries must be ints in [-{num_stages}, {num_stages - 1}], '
                             f'got {out_indices!r}')
        result.append(idx % num_stages)
    return tuple(sorted(set(result)))


class SparseBackbone(BaseModule):
    """Base class for the mmsparse backbones.

    Subclasses set ``self.num_stages``, ``self.frozen_stages``, ``self.norm_eval``, ``self.with_cp`` and
    implement :meth:`stage_modules` (the modules to freeze for stage ``i``; ``i = -1`` is the stem).
    ``frozen_stages = k`` freezes the stem and stages ``0 .. k-1`` (``-1``: nothing).
    """

    #: family name used by :mod:`mmsparse.converters` to convert official checkpoints on the fly
    converter_family = None

    def stage_modules(self, i):
        raise NotImplementedError

    def check_frozen_stages(self, frozen_stages):
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be an int in [-1, {self.num_stages}], got {frozen_stages!r}')
        return frozen_stages

    def _freeze_stages(self):
        for i in range(-1, self.frozen_stages):
            for m in self.stage_modules(i):
                if m is None:
                    continue
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def run_block(self, block, *args):
        """Run ``block`` with gradient checkpointing when ``with_cp`` is set and gradients are needed."""
        if self.with_cp and self.training and any(getattr(a, 'requires_grad', False) for a in args):
            return cp.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def init_weights(self):
        """Initialise, then load an ``init_cfg=dict(type='Pretrained', ...)`` loudly.

        A Pretrained init_cfg is handled by :func:`mmsparse.converters.load_pretrained`, which also accepts
        the authors' raw checkpoints, reports how many keys matched, and raises when almost nothing did
        (mmengine's own loader would only warn).
        """
        init_cfg = self.init_cfg
        pretrained = isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'
        if not pretrained:
            super().init_weights()
            return
        from mmsparse.converters import load_pretrained
        self.init_cfg = None
        try:
            super().init_weights()
        finally:
            self.init_cfg = init_cfg
        load_pretrained(self, init_cfg['checkpoint'], prefix=init_cfg.get('prefix'),
                        family=self.converter_family, logger=MMLogger.get_current_instance())
        self._is_init = True


