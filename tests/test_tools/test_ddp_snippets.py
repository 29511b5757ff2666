"""The stock-config snippets of README.md and docs/ (an mmsparse backbone replacing a stock mmdet / mmseg
backbone) train under 2-process DDP, read from the markdown itself; and tools/train.py names a backbone output
that nothing reads (the stop DDP would otherwise hit at its second iteration), in agreement with autograd."""
import inspect
import os
import re
import socket
import subprocess
import sys
import warnings

import pytest
import torch
from mmengine.config import Config

from mmsparse.apis import build_model, check_backbone_outputs, fake_data_sample, task_of
from mmsparse.models.backbones.base import SparseBackbone
from mmsparse.registry import MODELS
from tests.conftest import REPO, ensure_synthetic_data

DOCS = [REPO / 'README.md', *sorted((REPO / 'docs').rglob('*.md'))]
PYTHON_BLOCK = re.compile(r'^```python\n(.*?)^```', re.S | re.M)
BACKBONE_OVERRIDE = re.compile(r'backbone=dict\(\s*_delete_=True')
#: the documents that hold such snippets today (a parser that finds none there must fail, not pass)
EXPECTED_DOCS = {'README.md', 'docs/get_started.md', 'docs/visualization.md'}


def documented_snippets():
    """``{'<file>:<line>': code}`` of every python block that replaces a config's backbone."""
    found = {}
    for path in DOCS:
        text = path.read_text()
        for match in PYTHON_BLOCK.finditer(text):
            if BACKBONE_OVERRIDE.search(match.group(1)):
                line = text.count('\n', 0, match.start()) + 1
                found[f'{path.relative_to(REPO)}:{line}'] = match.group(1)
    return found


SNIPPETS = documented_snippets()


def load_snippet(code, folder):
    path = folder / 'snippet.py'
    path.write_text(code)
    return Config.fromfile(str(path)), path


def reduced_model(model_cfg, size):
    """Overrides of a snippet's model that keep what the snippet decides (the backbone's channels and outputs,
    the neck's and heads' input channels and levels) and shrink the rest: one block per backbone stage, no
    pretrained weights, 32-channel necks and heads (one stacked conv in a RetinaNet head), and mmseg's fixed
    input size (the stock 512 x 512 pads every image) set to ``size``."""
    cls = MODELS.get(model_cfg.backbone['type'])
    assert issubclass(cls, SparseBackbone), model_cfg.backbone['type']
    arch = model_cfg.backbone.get('arch', inspect.signature(cls).parameters['arch'].default)
    arch = dict(cls.arch_zoo[cls.arch_aliases.get(arch, arch)]) if isinstance(arch, str) else dict(arch)
    model = dict(backbone=dict(arch=dict(arch, _delete_=True, depths=[1] * cls.num_stages), init_cfg=None))
    if 'out_channels' in (model_cfg.get('neck') or {}):
        model['neck'] = dict(out_channels=32)
        if 'feat_channels' in (model_cfg.get('bbox_head') or {}):
            model['bbox_head'] = dict(in_channels=32, feat_channels=32, stacked_convs=1)
    for head, channels in (('decode_head', 32), ('auxiliary_head', 16)):
        if 'channels' in (model_cfg.get(head) or {}):
            model[head] = dict(channels=channels)
    if 'size' in (model_cfg.get('data_preprocessor') or {}):
        model['data_preprocessor'] = dict(size=size)
    return model


def reduced(cfg, size):
    """A copy of ``cfg`` with :func:`reduced_model` applied."""
    cfg = Config(cfg.to_dict())
    cfg.merge_from_dict(dict(model=reduced_model(cfg.model, size)))
    return cfg


def training_config(snippet_cfg, snippet_path):
    """A config that inherits the snippet with :func:`reduced_model`: 6 synthetic images at about 96 px,
    3 iterations of 1 (detection) or 2 (segmentation: UPerNet's 1x1 pooling BN) images a process."""
    model = reduced_model(snippet_cfg.model, (96, 96))
    if task_of(snippet_cfg) == 'mmseg':
        data = f"""
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(
    data_root='{REPO}/data/synthetic_ade20k/ADEChallengeData2016', indices=12, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='Resize', scale=(96, 96), keep_ratio=False), dict(type='PackSegInputs')]))
train_cfg = dict(max_iters=3)
"""
    else:
        masks = bool((snippet_cfg.model.get('roi_head') or {}).get('mask_head'))
        data = f"""
train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(
    data_root='{REPO}/data/synthetic_coco/', metainfo=dict(classes=('disc', 'square', 'triangle', 'ring')),
    indices=6, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask={masks}),
        dict(type='Resize', scale=(96, 96), keep_ratio=True), dict(type='PackDetInputs')]))
train_cfg = dict(max_epochs=1)
"""
    return f"""_base_ = '{snippet_path}'
model = {model!r}
val_cfg = None
val_dataloader = None
val_evaluator = None
default_hooks = dict(checkpoint=None, logger=dict(interval=1))
{data}"""


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def dist_train(config, work_dir):
    """``bash tools/dist_train.sh CONFIG 2`` on CPU (gloo); returns (exit status, stdout + stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHON=sys.executable, PORT=str(free_port()), OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', str(work_dir)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def distinct_snippets():
    """The snippets, one per model config (the Pretrained weights aside): equal models are trained once."""
    import tempfile
    from pathlib import Path
    seen, kept = {}, []
    with tempfile.TemporaryDirectory() as folder:
        for name, code in SNIPPETS.items():
            cfg, _ = load_snippet(code, Path(folder))
            model = cfg.model.to_dict()
            model['backbone'].pop('init_cfg', None)
            key = (re.search(r'^_base_ = (.*)$', code, re.M).group(1), repr(sorted(model.items())))
            if key not in seen:
                seen[key] = name
                kept.append(name)
    return kept


def test_snippets_are_found_in_the_docs():
    assert {name.split(':')[0] for name in SNIPPETS} >= EXPECTED_DOCS, sorted(SNIPPETS)
    for name, code in SNIPPETS.items():
        assert re.search(r"^_base_ = '(mmdet|mmseg)::", code, re.M), f'{name}: name the stock config it changes'


@pytest.mark.slow
@pytest.mark.parametrize('name', distinct_snippets())
def test_documented_snippet_trains_three_iterations_under_ddp(name, tmp_path):
    ensure_synthetic_data()
    snippet_cfg, snippet_path = load_snippet(SNIPPETS[name], tmp_path)
    config = tmp_path / 'train.py'
    config.write_text(training_config(snippet_cfg, snippet_path))
    code, log = dist_train(config, tmp_path / 'work')
    assert code == 0, f'{name}:\n{log[-5000:]}'
    assert 'Distributed training: True' in log
    assert re.search(r'\(train\) .*\[3/3\]', log), log[-3000:]  # past the second iteration, where DDP checks
    assert 'never reads' not in log


# --------------------------------------------------------------- the check of unread backbone outputs

RETINANET = """_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
model = dict(backbone=dict(_delete_=True, type='mmsparse.BiFormer', arch='small', n_win=16{backbone}),
             neck=dict(in_channels={channels}{neck}))
"""
UPERNET = """_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
model = dict(pretrained=None, backbone=dict(_delete_=True, type='mmsparse.STViT', arch='small'{backbone}),
             decode_head=dict(in_channels={channels}{neck}), auxiliary_head=dict(in_channels=320))
"""
#: (template, backbone args, in_channels, neck / decode-head args): the old README snippet, a RetinaNet without
#: output norms, UPerNet heads that skip the first and the last stage
BAD_COMBINATIONS = {
    'retinanet_four_outputs': (RETINANET, '', [64, 128, 256, 512], ''),
    'retinanet_no_output_norms': (RETINANET, ', out_norm_cfg=None', [64, 128, 256, 512], ''),
    'upernet_skips_stage_0': (UPERNET, '', [128, 320, 512], ', in_index=[1, 2, 3]'),
    'upernet_skips_stage_3': (UPERNET, '', [64, 128, 320], ', in_index=[0, 1, 2]'),
}


def bad_config(name, folder):
    template, backbone, channels, neck = BAD_COMBINATIONS[name]
    return load_snippet(template.format(backbone=backbone, channels=channels, neck=neck), folder)[0]


def parameters_without_gradient(cfg):
    """Backbone modules (``norm0``, ``stages.3``) whose trainable parameters get no gradient from one training
    step of the model (reduced depth), by autograd."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a step of a few 100 ms; more threads on a busy machine only add waiting
    try:
        model = build_model(reduced(cfg, (64, 64)), seed=0)
        model.train()
        task = task_of(cfg)
        generator = torch.Generator().manual_seed(0)
        samples = [fake_data_sample(task, 64, 64, num_classes=4, generator=generator) for _ in range(2)]
        data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8,
                                                                  generator=generator) for _ in samples],
                                            data_samples=samples), True)
        loss, _ = model.parse_losses(model.loss(data['inputs'], data['data_samples']))
        loss.backward()
    finally:
        torch.set_num_threads(threads)
    idle = set()
    for name, param in model.backbone.named_parameters():
        if param.requires_grad and param.grad is None:
            idle.add(name.split('.')[0] if name.startswith('norm') else '.'.join(name.split('.')[:2]))
    return idle


def named_parameters_in(message):
    found = re.search(r'Their parameters \(([^)]*)\) get no gradient', message)
    return set(found.group(1).split(', ')) if found else set()


@pytest.mark.parametrize('name', list(BAD_COMBINATIONS))
def test_unread_outputs_are_named_and_agree_with_autograd(name, tmp_path):
    cfg = bad_config(name, tmp_path)
    idle = parameters_without_gradient(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        check_backbone_outputs(cfg, distributed=False)
    messages = [str(w.message) for w in caught if 'never reads' in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in caught]
    assert named_parameters_in(messages[0]) == idle
    assert 'model.backbone.out_indices=' in messages[0]
    if idle:  # DDP would stop: under DDP the check stops first, with the same message
        with pytest.raises(SystemExit, match='DDP stops at the second iteration') as stop:
            check_backbone_outputs(cfg, distributed=True)
        assert named_parameters_in(str(stop.value)) == idle
        cfg.find_unused_parameters = True  # DDP then tolerates them: a warning again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        check_backbone_outputs(cfg, distributed=True)
    assert any('never reads' in str(w.message) for w in caught)


def test_fixed_snippet_passes_the_check(tmp_path):
    name = next(n for n in SNIPPETS if n.startswith('README.md'))
    cfg, _ = load_snippet(SNIPPETS[name], tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        check_backbone_outputs(cfg, distributed=True)
    assert parameters_without_gradient(cfg) == set()


def test_neck_channels_must_match_the_outputs(tmp_path):
    code = RETINANET.format(backbone=', out_indices=(1, 2, 3)', channels=[64, 128, 256, 512], neck='')
    cfg, _ = load_snippet(code, tmp_path)
    with pytest.raises(SystemExit, match=r'model.neck.in_channels has 4 entries .* 3 outputs'):
        check_backbone_outputs(cfg, distributed=False)


@pytest.mark.slow
def test_dist_train_stops_before_building_with_the_fix(tmp_path):
    """The old README snippet, trained as the documented ones are: a stop that names the fix for these channels,
    before any iteration (not DDP's own error at the second one)."""
    ensure_synthetic_data()
    snippet_cfg, snippet_path = load_snippet(RETINANET.format(backbone='', channels=[64, 128, 256, 512], neck=''),
                                             tmp_path)
    config = tmp_path / 'train.py'
    config.write_text(training_config(snippet_cfg, snippet_path))
    code, log = dist_train(config, tmp_path / 'work')
    assert code != 0
    assert ('model.backbone.out_indices=(1, 2, 3) with model.neck.in_channels=[128, 256, 512] and '
            'model.neck.start_level=0') in log, log[-3000:]
    assert '(train)' not in log and 'RuntimeError' not in log
