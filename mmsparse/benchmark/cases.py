"""Benchmark cases: what is measured, and building one model of a case with a given implementation.

A *case* is a plain dict (what the JSON output and the suite files hold):

* ``kind='layer'``: ``name`` (a key of :data:`LAYERS`), ``shape`` ``[N, C, H, W]``, optional ``layer_args``;
* ``kind='backbone'``: ``name`` (a key of :data:`BACKBONES`), ``batch``, ``input_size`` ``[H, W]``, optional
  ``layer_args`` (constructor overrides, e.g. ``n_win=8`` for BiFormer at 512, as in the authors' ADE20K recipe);
* ``kind='config'``: ``name`` (an mmdet / mmseg config path, relative to the repository root or absolute),
  ``batch``, ``input_size``;

and for every kind ``mode`` (one of :data:`MODES`), optionally ``device``, ``dtype``, ``threads``, ``warmup``,
``repeats`` and ``sweep`` (the name of the size-sweep plot the case belongs to); layer and backbone cases may
set ``compile: true`` (the module runs through ``torch.compile``, default inductor backend; the first warm-up
run compiles, so such a case needs ``warmup >= 1``).

Implementations are ``'reference'`` and ``'fast'`` (:data:`IMPLS`) for every operator family. Layers and
backbones are built with ``impl=...``; a config's model is built by :func:`mmsparse.apis.build_model`, which
switches it with :func:`mmsparse.set_impl` (reaching the operators wherever they sit: backbone, plug-ins, neck).
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Any, Callable

import torch
import torch.nn as nn
import yaml

from mmsparse.families import LiveMapping
from mmsparse.ops.checks import IMPLS
from mmsparse.ops.checks import check_impl as _check_impl
from . import REPO

MODES = ('fwd', 'fwdbwd', 'train')
#: what a case may run: the shared implementations and BRA's ``'flex'`` (BRA layers, BiFormer and models holding
#: BRA; any other operator rejects it, naming what it accepts)
ALL_IMPLS = IMPLS + ('flex', )
KINDS = ('layer', 'backbone', 'config')
SUITE_DIR = osp.join(REPO, 'tools/analysis_tools/suites')


def _layers() -> dict[str, tuple[type, dict]]:
    from mmsparse.families import get_family, list_families
    return {op.short: (op.cls, dict(op.bench_kwargs)) for name in list_families()
            for op in get_family(name).operators if op.bench_kwargs is not None}


def _backbones() -> dict[str, tuple[str, dict]]:
    from mmsparse.families import get_family, list_families
    return {preset: (spec.backbone.__name__, dict(kwargs)) for spec in map(get_family, list_families())
            for preset, kwargs in spec.presets.items()}


#: layer name -> (operator class, default kwargs), from each family's operators (their ``bench_kwargs``); a
#: case's ``layer_args`` override the kwargs
LAYERS = LiveMapping(_layers, 'benchmark layer name -> (operator class, default kwargs)')
#: backbone preset -> (registered type, kwargs), from each family's ``presets``
BACKBONES = LiveMapping(_backbones, 'benchmark backbone preset -> (registered type, kwargs)')

#: keys a case of each kind must have, and those it may have
_REQUIRED = {'layer': {'name', 'shape'}, 'backbone': {'name', 'batch', 'input_size'},
             'config': {'name', 'batch', 'input_size'}}
_OPTIONAL = {'kind', 'mode', 'device', 'dtype', 'threads', 'warmup', 'repeats', 'sweep', 'layer_args', 'compile'}


class Built:
    """One model of a case, ready to run: ``module``, ``args`` (its inputs, on its device) and ``run(mode)``."""

    def __init__(self, module: nn.Module, args: tuple, run: Callable[[nn.Module, tuple, str], None]) -> None:
        self.module, self.args, self._run = module, args, run

    def run(self, mode: str) -> None:
        """One step of the case (a config's ``'train'`` step includes its own optimizer step), without the grad
        mode and autocast that :func:`.measure.one_run` adds."""
        self._run(self.module, self.args, mode)


def check_case(case: dict) -> None:
    """Raise ``ValueError`` naming what is wrong with a case dict (unknown kind, name, mode or key)."""
    kind = case.get('kind')
    if kind not in KINDS:
        raise ValueError(f'case kind must be one of {list(KINDS)}, got {kind!r} in {case}')
    missing = _REQUIRED[kind] - set(case)
    unknown = set(case) - _REQUIRED[kind] - _OPTIONAL
    if missing or unknown:
        raise ValueError(f'{kind} case {case}: ' + '; '.join(
            f'{what} keys {sorted(keys)}' for what, keys in (('missing', missing), ('unknown', unknown)) if keys))
    presets = {'layer': LAYERS, 'backbone': BACKBONES}.get(kind)
    if presets is not None and case['name'] not in presets:
        raise ValueError(f'{kind} {case["name"]!r} is not known; choose one of {sorted(presets)}')
    if case.get('mode', 'fwdbwd') not in MODES:
        raise ValueError(f'mode={case["mode"]!r} is not known; choose one of {list(MODES)}')
    if kind == 'layer' and len(case['shape']) != 4:
        raise ValueError(f'a layer case needs shape [N, C, H, W], got {case["shape"]!r}')
    if case.get('compile', False) not in (True, False):
        raise ValueError(f'compile must be true or false, got {case["compile"]!r} in {case}')
    if case.get('compile') and kind == 'config':
        raise ValueError(f'compile applies to layer and backbone cases, not to a whole config ({case["name"]})')
    if case.get('compile') and case.get('warmup', 1) < 1:
        raise ValueError('a compile case needs warmup >= 1: the first run compiles and must not be timed')


def check_impl(impl: str | None) -> None:
    """``None`` (as built) or one of :data:`ALL_IMPLS`; the operators' own check gives the error."""
    if impl is not None:
        _check_impl(impl, 'benchmark', ALL_IMPLS)


def build(case: dict, impl: str | None = None, device: str | torch.device = 'cpu') -> Built:
    """A :class:`Built` model of ``case`` with implementation ``impl`` (``None``: as built, i.e. the default).

    Weights from ``torch.manual_seed(0)``, inputs from a fixed seed; to compare implementations, copy the first
    one's state dict into the others (:func:`measure.build_all` does).

    Raises:
        ValueError: a bad case (:func:`check_case`) or implementation.
    """
    import mmsparse  # noqa: F401  (registers everything)
    check_case(case)
    check_impl(impl)
    device = torch.device(device)
    torch.manual_seed(0)
    if case['kind'] == 'config':
        return _build_config(case, impl, device)
    with_impl = {} if impl is None else dict(impl=impl)
    if case['kind'] == 'layer':
        cls, defaults = LAYERS[case['name']]
        shape = tuple(case['shape'])
        module = cls(embed_dims=shape[1], **{**defaults, **case.get('layer_args', {})}, **with_impl)
    else:
        from mmsparse.registry import MODELS
        typ, kwargs = BACKBONES[case['name']]
        module = MODELS.build(dict(type=f'mmsparse.{typ}', **{**kwargs, **case.get('layer_args', {})}, **with_impl))
        module.init_weights()
        shape = (case['batch'], 3, *case['input_size'])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    module = module.to(device)
    if not case.get('compile'):
        return Built(module, (x.to(device), ), run_tensor_model)
    # ``Built.module`` stays the eager module (same parameters): FLOP counting and train()/eval() act on it
    compiled = torch.compile(module)
    return Built(module, (x.to(device), ), lambda _, args, mode: run_tensor_model(compiled, args, mode))


def run_tensor_model(module: Callable[..., Any], args: tuple, mode: str) -> None:
    """Forward, and for ``fwdbwd`` the backward of a scalar touching every output."""
    outs = module(*args)
    if mode == 'fwd':
        return
    outs = outs if isinstance(outs, (tuple, list)) else (outs, )
    # float() so that the backward starts in float32 under autocast
    sum(o.float().square().mean() for o in outs).backward()


def _build_config(case: dict, impl: str | None, device: torch.device) -> Built:
    """A whole mmdet / mmseg model from a config, its own AdamW, and synthetic data samples of the case's size."""
    from mmsparse.apis import build_model, fake_data_sample, task_of
    # random weights time the same, and nothing is downloaded (build_model drops Pretrained init)
    model: Any = build_model(config_path(case['name']), impl=impl, device=device)  # an mmdet / mmseg BaseModel
    cfg = model.cfg
    task = task_of(cfg)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch, (h, w) = case['batch'], case['input_size']
    g = torch.Generator().manual_seed(1)
    num_classes = _num_classes(cfg.model)
    data = dict(inputs=[torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for _ in range(batch)],
                data_samples=[fake_data_sample(task, h, w, num_classes, g) for _ in range(batch)])
    # the data preprocessor moves the batch to the model's device
    data = model.data_preprocessor(data, training=case.get('mode') == 'train')

    def run(m: Any, args: tuple, mode: str) -> None:
        data = args[0]
        if mode == 'fwd':
            m.extract_feat(data['inputs'])
            return
        losses = m(**data, mode='loss')
        loss = sum(x.sum() for k, v in losses.items() if 'loss' in k
                   for x in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(x, torch.Tensor))
        loss.backward()  # type: ignore[union-attr]  # a Tensor: every mmdet / mmseg model has losses
        if mode == 'train':
            optim.step()  # this model's own optimizer: with --compare each copy steps its own weights
            optim.zero_grad(set_to_none=True)

    return Built(model, (data, ), run)


def config_path(name: str) -> str:
    """``name`` if absolute, else relative to the repository root."""
    return name if osp.isabs(name) else osp.join(REPO, name)


def _num_classes(model_cfg: Any) -> int:
    """Classes of the model's (first) head, for synthetic labels in range."""
    heads = [(model_cfg.get('roi_head') or {}).get('bbox_head'), model_cfg.get('bbox_head'),
             model_cfg.get('decode_head')]
    for head in heads:
        head = head[0] if isinstance(head, list) else head
        if isinstance(head, dict) and 'num_classes' in head:
            return head['num_classes']
    return 1


def load_suite(path_or_name: str) -> list[tuple[dict, list]]:
    """``[(case, impls), ...]`` from a suite file: a path, or the name of a file in ``tools/analysis_tools/suites``.

    A suite is YAML (or JSON): ``cases`` (case dicts, each optionally with its own ``impls``), optional ``impls``
    (every case's default; ``[reference, fast]`` if absent), ``description`` and ``anchors`` (for YAML anchors
    the cases reuse; otherwise ignored). Raises ``ValueError`` for a missing or malformed suite.
    """
    path = path_or_name
    if not osp.exists(path):
        path = osp.join(SUITE_DIR, path_or_name if path_or_name.endswith(('.yaml', '.yml', '.json'))
                        else path_or_name + '.yaml')
    if not osp.exists(path):
        names = sorted(osp.splitext(f)[0] for f in os.listdir(SUITE_DIR))
        raise ValueError(f'suite {path_or_name!r}: no such file, and not one of the suites {names} in {SUITE_DIR}')
    with open(path) as f:
        suite = yaml.safe_load(f)
    unknown = set(suite) - {'cases', 'impls', 'description', 'anchors'}
    if unknown or not isinstance(suite.get('cases'), list):
        raise ValueError(f'suite {path}: needs a list "cases" (and may have impls, description, anchors); '
                         f'unknown keys {sorted(unknown)}')
    default_impls = suite.get('impls', list(IMPLS))
    out = []
    for case in suite['cases']:
        case = dict(case)
        impls = case.pop('impls', default_impls)
        for impl in impls:
            check_impl(impl)
        check_case(case)
        out.append((case, list(impls)))
    return out
