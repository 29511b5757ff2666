"""The skeleton the three backbones share (the mmpretrain layout) and its OpenMMLab plumbing.

Every backbone is ``stem`` -> ``stages[0..3]`` (``stages[i].downsample`` where stage ``i`` starts with one,
then ``stages[i].blocks``) with an optional output norm ``norm{i}`` per returned stage. This class holds what
does not depend on the family: ``arch`` resolution, ``out_indices``, output norms (``out_norm_cfg=None``: none
at all), ``frozen_stages``, ``norm_eval``, ``with_cp``, ``impl``, loud pretrained loading (dict or list
``init_cfg``) and the upgrade of checkpoints written by older mmsparse layouts. The forward is one loop here:
the stem, then each stage's :meth:`BackboneStage.forward` up to the last returned stage.
"""
from __future__ import annotations

import copy
import os.path as osp
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmsparse.ops.checks import IMPLS, check_bool, check_impl, check_layer_cfg, check_nchw
from mmsparse.ops.impl import ImplModel
from mmsparse.utils.checkpoint import load_pretrained

__all__ = ['SparseBackbone', 'BackboneStage', 'resolve_arch', 'check_out_indices', 'match_param_strides']


def resolve_arch(arch: str | dict, arch_zoo: dict[str, dict], aliases: dict[str, str],
                 required_keys: Sequence[str], optional_keys: Sequence[str] = (), name: str = 'arch') -> dict:
    """Return a copy of the arch dict for ``arch`` (a zoo name, an alias, or a dict).

    A dict must hold every key of ``required_keys`` and nothing outside ``required_keys + optional_keys``.
    """
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
        unknown = set(arch) - set(required_keys) - set(optional_keys)
        if unknown:
            raise ValueError(f'{name} dict has unknown keys {sorted(unknown)}; accepted keys are '
                             f'{sorted(set(required_keys) | set(optional_keys))}')
        return copy.deepcopy(dict(arch))
    raise TypeError(f'{name} must be a variant name (str) or a dict, got {type(arch).__name__}')


def check_out_indices(out_indices: int | Sequence[int], num_stages: int) -> tuple[int, ...]:
    """Normalise ``out_indices`` (int or sequence, negative allowed) to a sorted tuple of stage indices."""
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        out_indices = [out_indices]
    if not isinstance(out_indices, (list, tuple)) or not out_indices:
        raise TypeError(f'out_indices must be an int or a non-empty sequence of ints, got {out_indices!r}')
    result = []
    for idx in out_indices:
        if isinstance(idx, bool) or not isinstance(idx, int) or not -num_stages <= idx < num_stages:
            raise ValueError(f'out_indices entries must be ints in [-{num_stages}, {num_stages - 1}], '
                             f'got {out_indices!r}')
        result.append(idx % num_stages)
    return tuple(sorted(set(result)))


def _split_pretrained(init_cfg):
    """``init_cfg`` (None, dict or list of dicts) -> (the Pretrained entry or None, the other entries or None)."""
    cfgs = [] if init_cfg is None else list(init_cfg) if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    pretrained = [c for c in cfgs if isinstance(c, dict) and c.get('type') == 'Pretrained']
    if len(pretrained) > 1:
        raise ValueError(f'init_cfg has {len(pretrained)} Pretrained entries; give one checkpoint')
    others = [c for c in cfgs if c not in pretrained]
    return (pretrained[0] if pretrained else None), (others or None)


#: checkpoint schemes of other model zoos (mmengine's loaders): their weights belong to other architectures
FOREIGN_ZOOS = ('open-mmlab://', 'openmmlab://', 'torchvision://', 'mmcls://', 'mmpretrain://', 'modelzoo://')

#: what the missing-weights and foreign-weights errors say about training without pretrained weights
FROM_SCRATCH_HINT = ('to train from scratch instead, remove the checkpoint (init_cfg=None, and model.pretrained=None '
                     'where the config sets it)')


def check_checkpoint(owner: str, checkpoint: Any, via_pretrained: bool) -> None:
    """Raise at build time when a Pretrained ``checkpoint`` cannot be an mmsparse backbone's weights.

    Stock mmseg configs set ``pretrained='open-mmlab://resnet50_v1c'`` on the EncoderDecoder, which mmseg
    forwards to the backbone; loading it would fail deep in the key matching, so the error names the override.
    """
    if not isinstance(checkpoint, str):
        return
    zoo = next((z for z in FOREIGN_ZOOS if checkpoint.startswith(z)), None)
    if zoo is None:
        return
    where = ('model.pretrained (a stock mmseg config sets it for its ResNet; mmseg passes it to the backbone): '
             'override it with model.pretrained=None, e.g. --cfg-options model.pretrained=None'
             if via_pretrained else 'the init_cfg Pretrained entry: point it at an mmsparse or official '
             f'{owner} checkpoint, or remove it')
    raise ValueError(f'{owner}: pretrained checkpoint {checkpoint!r} is from the {zoo} model zoo: the weights of '
                     f'another architecture, and cannot initialise {owner}. It comes from {where}')


class SparseBackbone(ImplModel, BaseModule):
    """Base class of the mmsparse backbones.

    A subclass calls :meth:`setup_skeleton` in ``__init__`` before building its modules, builds ``stem`` and
    ``stages`` (:class:`BackboneStage` each, given ``with_cp=self.with_cp``), then calls
    :meth:`finish_skeleton`. It names its key maps as class attributes: ``official_converter`` (the authors'
    keys -> ours) and ``upgrade_state_dict`` (an older mmsparse layout -> the current one), both plain functions
    of a state dict. What differs between families lives in their stages (:meth:`BackboneStage.forward`) and,
    where the stem is more than ``self.stem``, in :meth:`forward_stem`.

    ``frozen_stages = k`` freezes the stem and stages ``0 .. k-1`` with their output norms (``-1``: nothing).

    The forward stops after the last stage of ``out_indices``. Later stages are still built, so checkpoints keep
    their keys, but they never run and would get no gradient: DDP (without ``find_unused_parameters``) would fail
    on them at the second iteration. Their parameters (:meth:`unused_modules`) are therefore frozen
    (``requires_grad=False``) at build time; a user who sets ``requires_grad`` on them again needs
    ``find_unused_parameters=True`` under DDP.

    Gradients get the strides of their parameters (see :func:`match_param_strides`), which DDP's buckets need.

    ``impl`` is one switch for every operator inside (:class:`~mmsparse.ops.impl.ImplModel`): set it after
    building and each operator follows. A subclass sets ``self.impl = impl`` once its operators exist.
    """

    #: version 2: the ``stem`` / ``stages[i]`` / ``norm{i}`` layout; older checkpoints are upgraded on load
    _version = 2
    num_stages = 4
    official_converter: Callable[..., Any] | None = None
    upgrade_state_dict: Callable[..., Any] | None = None
    #: the ``impl`` values the backbone accepts at build time
    impls: tuple[str, ...] = IMPLS

    def __init__(self, init_cfg: dict | list[dict] | None = None, pretrained: str | None = None) -> None:
        # ``pretrained``: the deprecated mmseg-style argument; stock mmseg models (EncoderDecoder) pass their
        # ``pretrained=`` to the backbone. Mapped to a Pretrained init_cfg as mmseg's backbones do.
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError(f'{type(self).__name__}: init_cfg and pretrained cannot be set at the same time; '
                                 f'got init_cfg={init_cfg!r} and pretrained={pretrained!r}. Keep one: '
                                 "init_cfg=dict(type='Pretrained', checkpoint=...) is preferred")
            if not isinstance(pretrained, str):
                raise TypeError(f'{type(self).__name__}: pretrained must be a str (a checkpoint path or URL) or '
                                f'None, got {type(pretrained).__name__}')
            warnings.warn('DeprecationWarning: pretrained is deprecated, please use "init_cfg" instead')
            check_checkpoint(type(self).__name__, pretrained, via_pretrained=True)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        else:
            entry = _split_pretrained(init_cfg)[0]
            if entry is not None:
                check_checkpoint(type(self).__name__, entry.get('checkpoint'), via_pretrained=False)
        super().__init__(init_cfg=init_cfg)

    def setup_skeleton(self, out_indices: int | Sequence[int], frozen_stages: int, norm_eval: bool,
                       with_cp: bool, impl: str) -> None:
        """Check and store the options every family shares (before the modules are built)."""
        self.out_indices = check_out_indices(out_indices, self.num_stages)
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) \
                or not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be an int in [-1, {self.num_stages}] (-1: nothing frozen), '
                             f'got {frozen_stages!r}')
        check_bool(norm_eval, 'norm_eval')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self._impl = check_impl(impl, type(self).__name__, self.impls)

    @property
    def with_cp(self) -> bool:
        """Gradient checkpointing of each training block; setting it reaches every stage."""
        return self._with_cp

    @with_cp.setter
    def with_cp(self, value: bool) -> None:
        self._with_cp = check_bool(value, 'with_cp')
        for stage in getattr(self, 'stages', ()):  # none yet while setup_skeleton runs
            stage.with_cp = value

    def finish_skeleton(self, out_norm_cfg: dict | None, channels: Sequence[int]) -> None:
        """End of a subclass's ``__init__``: output norms, gradient-stride hooks, then freezing."""
        self.build_out_norms(out_norm_cfg, channels)
        match_param_strides(self)  # before freezing: hooks need parameters that require grad
        self._freeze_stages()

    def build_out_norms(self, out_norm_cfg: dict | None, channels: Sequence[int]) -> None:
        """Add ``norm{i}`` for each ``i`` in ``out_indices``; ``out_norm_cfg=None`` adds none."""
        if out_norm_cfg is None:
            return
        check_layer_cfg(out_norm_cfg, 'out_norm_cfg (or None)', 'LN2d')
        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm_layer(out_norm_cfg, channels[i])[1])

    def dense_only_keys(self) -> list[str]:
        """State-dict keys of the output norms: dense-task layers that classification checkpoints lack."""
        return [k for k in self.state_dict() if k.split('.')[0] in {f'norm{i}' for i in self.out_indices}]

    def out_norm(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Output ``i``: normed when the backbone has output norms, always a contiguous NCHW tensor (what
        mmdet / mmseg heads and mmcv's ops such as RoIAlign assume of a backbone's features)."""
        norm = getattr(self, f'norm{i}', None)
        return (x if norm is None else norm(x)).contiguous()

    def stage_modules(self, i: int) -> list[nn.Module | None]:
        """Modules frozen with stage ``i`` (``-1``: the stem)."""
        if i == -1:
            return [self.stem]
        return [self.stages[i], getattr(self, f'norm{i}', None)]

    def _freeze_stages(self) -> None:
        for i in range(-1, self.frozen_stages):
            for m in self.stage_modules(i):
                if m is None:
                    continue
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False
        for m in self.unused_modules():  # see the class docstring
            m.requires_grad_(False)

    def unused_modules(self) -> list[nn.Module]:
        """Modules that no output depends on: the stages after the last one in ``out_indices``."""
        return list(self.stages)[self.out_indices[-1] + 1:]

    def train(self, mode: bool = True) -> SparseBackbone:
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem; a family whose stem is more than ``self.stem`` overrides this."""
        return self.stem(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, in_channels, H, W) -> ``out_norm(i, feature_i)`` for each ``i`` in ``out_indices``.

        The stages run in order and stop after the last one in ``out_indices``.
        """
        check_nchw(x, self.in_channels, type(self).__name__)
        x = self.forward_stem(x)
        outs = []
        for i in range(self.out_indices[-1] + 1):
            x, feature = self.stages[i](x)
            if i in self.out_indices:
                outs.append(self.out_norm(i, feature))
        return tuple(outs)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The raw features (no output norm) of every stage, whatever ``out_indices`` says."""
        x = self.forward_stem(x)
        features = []
        for stage in self.stages:
            x, feature = stage(x)
            features.append(feature)
        return features

    def init_default_weights(self) -> None:
        """The family's own initialisation, run when no Pretrained checkpoint is given (none by default)."""

    def init_weights(self) -> None:
        """Initialise, then load a Pretrained ``init_cfg`` entry (dict or inside a list) last and loudly.

        The other init_cfg entries and the family's default initialisation run first, so they can never
        overwrite loaded weights. The checkpoint goes through :func:`mmsparse.utils.checkpoint.load_pretrained`
        (raw official files are converted on the fly; every key must load unless the entry sets
        ``allow_partial=True``).
        """
        init_cfg: Any = getattr(self, 'init_cfg')  # set by mmengine's BaseModule
        pretrained, others = _split_pretrained(init_cfg)
        self.init_cfg = others
        try:
            super().init_weights()
        finally:
            self.init_cfg = init_cfg
        if others is None:  # an explicit init_cfg replaces the family's default initialisation
            self.init_default_weights()
        if pretrained is None:
            return
        unknown = set(pretrained) - {'type', 'checkpoint', 'prefix', 'map_location', 'allow_partial'}
        if unknown or 'checkpoint' not in pretrained:
            raise ValueError(f'init_cfg Pretrained entry {pretrained!r}: needs "checkpoint" and accepts "prefix", '
                             f'"map_location", "allow_partial"; unknown keys {sorted(unknown)}')
        checkpoint = pretrained['checkpoint']
        if isinstance(checkpoint, str) and '://' not in checkpoint and not osp.isfile(checkpoint):
            raise FileNotFoundError(f'{type(self).__name__}: the pretrained checkpoint {checkpoint!r} (init_cfg / '
                                    f'pretrained) does not exist; download or convert it there '
                                    f'(tools/model_converters), or, {FROM_SCRATCH_HINT}')
        load_pretrained(self, checkpoint, prefix=pretrained.get('prefix'),
                        logger=MMLogger.get_current_instance(), allow_partial=pretrained.get('allow_partial', False))
        self._is_init = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        # checkpoints of the version-1 layout (no version recorded in older raw files either): upgrade the keys
        version = local_metadata.get('version', None)
        if (version is None or version < self._version) and self.upgrade_state_dict is not None:
            own = {k: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
            upgraded = type(self).upgrade_state_dict({k[len(prefix):]: v for k, v in own.items()})
            state_dict.update({prefix + k: v for k, v in upgraded.items()})
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


class BackboneStage(nn.Module):
    """One stage of the skeleton: an optional ``downsample`` (absent in a stage that starts at the previous
    stage's resolution) followed by ``blocks`` (a ModuleList), run block by block so that ``with_cp`` can
    checkpoint each one.

    :meth:`forward` returns ``(next_input, feature)``: what the next stage takes and what the backbone outputs
    (through its output norm) for this stage. Here both are the last block's output; a family whose feature is
    tapped elsewhere (CloFormer: inside the last, strided block) overrides :meth:`forward`.

    Args:
        blocks (Iterable[nn.Module]): the stage's blocks, in order.
        downsample (nn.Module, optional): run before the blocks.
        with_cp (bool): gradient checkpointing per block (the backbone's ``with_cp`` sets it).
    """

    def __init__(self, blocks: Iterable[nn.Module], downsample: nn.Module | None = None,
                 with_cp: bool = False) -> None:
        super().__init__()
        if downsample is not None:
            self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.with_cp = with_cp

    def run_downsample(self, x: torch.Tensor) -> torch.Tensor:
        downsample = getattr(self, 'downsample', None)
        return x if downsample is None else downsample(x)

    def run_block(self, block: nn.Module, *args: Any) -> Any:
        """Run ``block``, with gradient checkpointing when ``with_cp`` is set and the block trains.

        A block whose inputs need no gradient (the first trainable block after frozen stages) is checkpointed
        too: the non-reentrant checkpoint recomputes it for its own parameters' gradients.
        """
        if self.with_cp and self.training and torch.is_grad_enabled() and (
                any(getattr(a, 'requires_grad', False) for a in args)
                or any(p.requires_grad for p in block.parameters())):
            return cp.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.run_downsample(x)
        for block in self.blocks:
            x = self.run_block(block, x)
        return x, x


def _restride_grad(param: torch.Tensor) -> None:
    grad = param.grad
    if grad is None or grad.is_sparse or grad.stride() == param.stride():
        return
    if all(g == p or n == 1 for g, p, n in zip(grad.stride(), param.stride(), param.shape)):
        # strides differ only where the size is 1: the same memory, viewed with the parameter's strides
        param.grad = grad.as_strided(param.shape, param.stride(), grad.storage_offset())
    else:
        param.grad = torch.empty_strided(param.shape, param.stride(), dtype=grad.dtype,
                                         device=grad.device).copy_(grad)


def match_param_strides(module: nn.Module) -> None:
    """Give every gradient of ``module``'s parameters the parameter's strides once it is accumulated.

    A convolution on channels-last input returns its weight gradient in channels-last strides. For a depthwise
    (C, 1, k, k) or a 1x1 (O, I, 1, 1) weight they differ from the parameter's only in size-1 dimensions, which
    autograd accepts, but DDP compares strides exactly and warns "Grad strides do not match bucket view
    strides" on every rank. The hook makes the gradient a view with the parameter's strides (no copy, the same
    numbers). Only parameters with a size-1 dimension can be affected, so only they get the hook.
    """
    for p in module.parameters():
        if p.requires_grad and p.dim() > 1 and 1 in p.shape:
            p.register_post_accumulate_grad_hook(_restride_grad)
