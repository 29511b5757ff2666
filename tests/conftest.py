"""What the tests share: repository paths, golden fixtures and tolerances, the authors' key lists, reduced
models, parity and autocast helpers, and the smoke run of a whole config.

Test modules import what they share from here (``from tests.conftest import ...``), never from one another.

Golden tensors from the authors' reference implementations and their official state-dict key lists live in
``tests/data`` (see its README). A parity test whose file is missing fails, naming the path: a clone that lost
them must not pass by skipping.
"""
import copy
import math
import os.path as osp
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmsparse.apis import drop_pretrained

#: the repository root (tools, configs and data are found from it; tools run with it as working directory)
REPO = Path(__file__).resolve().parents[1]


def load_tool(relpath):
    """Import the command-line tool ``relpath`` (e.g. ``'tools/check_env.py'``) as a module, by its file, as
    the tests of a tool call its functions; nothing is added to ``sys.path``."""
    import importlib.util
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(f'mmsparse_tool_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DATA_DIR = REPO / 'tests' / 'data'
FIXTURE_DIR = DATA_DIR / 'fixtures'
KEYS_DIR = DATA_DIR / 'keys'


def data_file(path):
    """``path`` if it is a file, else fail the calling test naming it (parity data never skips)."""
    path = Path(path)
    if not path.is_file():
        pytest.fail(f'test data file {path} is missing (tests/data ships with the repository; restore it from git)')
    return path


def load_fixture(name):
    """Load ``name`` (relative to ``tests/data/fixtures``), or fail the calling test naming the missing file."""
    return torch.load(data_file(FIXTURE_DIR / name), map_location='cpu', weights_only=True)


def key_list_path(name):
    """The official key list ``tests/data/keys/<name>.txt``, or fail the calling test naming the missing file."""
    return data_file(KEYS_DIR / f'{name}.txt')


def assert_close_to_reference(ours, ref, name='output', max_abs=1e-4, max_rel_l2=1e-5):
    """The fixtures' tolerance: max |ours - ref| < 1e-4 and ||ours - ref|| / ||ref|| < 1e-5."""
    assert ours.shape == ref.shape, f'{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}'
    diff = (ours.double() - ref.double())
    abs_err = diff.abs().max().item()
    rel = (diff.norm() / ref.double().norm().clamp_min(1e-30)).item()
    assert abs_err < max_abs and rel < max_rel_l2, f'{name}: max abs {abs_err:.3g}, rel L2 {rel:.3g}'


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


def assert_same_outputs_and_grads(model_a, model_b, x):
    """Train-mode forward + backward of two models with equal weights give equal outputs and gradients
    (used for ``with_cp``: checkpointing must not change the numbers)."""
    results = []
    for model in (model_a, model_b):
        model.train()
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        results.append(([o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters()}))
    (o1, g1), (o2, g2) = results
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)


# -------------------------------------------------- fast vs reference: outputs and every gradient

ATOL = 1e-4


def max_diff(a, b):
    return (a - b).abs().max().item()


def clone_params(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def run_fwd_bwd(module, x, seed=0):
    """Output, input gradient and parameter gradients for a fixed random cotangent."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    out = module(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    out.backward(g)
    return out.detach(), x.grad, clone_params(module)


def assert_impls_agree(module, x):
    """``set_impl(module, 'fast')`` gives the output and every gradient of ``set_impl(module, 'reference')``
    (< ATOL); ``module`` is an operator or anything that contains operators."""
    from mmsparse import set_impl
    set_impl(module, 'reference')
    ref = run_fwd_bwd(module, x)
    set_impl(module, 'fast')
    fast = run_fwd_bwd(module, x)
    assert max_diff(fast[0], ref[0]) < ATOL, f'output differs by {max_diff(fast[0], ref[0]):.3g}'
    assert max_diff(fast[1], ref[1]) < ATOL, f'input grad differs by {max_diff(fast[1], ref[1]):.3g}'
    assert ref[2].keys() == fast[2].keys()
    for name in ref[2]:
        d = max_diff(fast[2][name], ref[2][name])
        assert d < ATOL, f'grad of {name} differs by {d:.3g}'


# -------------------------------------------------- the authors' checkpoint key lists

def official_state_dict(name, device='cpu'):
    """A state dict with the keys and shapes of the key list ``name`` (e.g. ``'stvit_small'``), all zeros; a
    missing list fails the calling test. ``device='meta'`` builds no storage (the large models)."""
    path = key_list_path(name)
    sd = OrderedDict()
    for line in path.read_text().splitlines():
        key, shape = line.split('\t')  # shapes are written as Python tuples: (32, 3, 3, 3), (32,), ()
        sd[key] = torch.zeros(tuple(int(n) for n in re.findall(r'\d+', shape)), device=device)
    return sd


# -------------------------------------------------- reduced models

#: the reduced BiFormer of the golden fixtures, as mmsparse ``BiFormer`` kwargs
BIFORMER_REDUCED = dict(arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 2, 1]), n_win=4, topks=[1, 2, 4, -2])
#: the reduced CloFormer of the golden fixture, as an mmsparse ``arch`` dict
CLOFORMER_REDUCED = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 8],
                         group_splits=[[1, 1], [1, 1], [2, 2], [2, 6]], kernel_sizes=[[3], [5], [7], [9]],
                         window_sizes=[8, 4, 2, 1], mlp_kernel_sizes=[5] * 4, mlp_ratios=[4] * 4)


def num_elements(model, with_buffers=False):
    """Number of parameter (and buffer) elements of ``model``."""
    tensors = list(model.parameters()) + (list(model.buffers()) if with_buffers else [])
    return sum(t.numel() for t in tensors)


def _v1_biformer():
    from mmsparse.models import BiFormer
    return BiFormer(arch=dict(embed_dims=[16, 32, 64, 64], depths=[1, 1, 1, 1], head_dim=16), n_win=2,
                    topks=(1, 2, 2, -2))


def _v1_cloformer():
    from mmsparse.models import CloFormer
    return CloFormer(arch=dict(embed_dims=[16, 32, 32, 32], depths=[1, 1, 1, 1], num_heads=[2, 2, 2, 2],
                               group_splits=[[1, 1]] * 4, kernel_sizes=[[3]] * 4, window_sizes=[4, 2, 1, 1],
                               mlp_kernel_sizes=[3] * 4, mlp_ratios=[2] * 4))


def _v1_stvit():
    from mmsparse.models import STViT
    return STViT(arch=dict(embed_dims=[16, 32, 32, 32], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 2],
                           layer_scale=[False, False, True, True]), mlp_ratio=2.)


def _v1_sparse_attn_block():
    from mmsparse.models import SparseAttnBlock
    return SparseAttnBlock(32, dict(type='SuperTokenAttention', num_heads=2, stoken_size=2), ffn_ratio=1.)


#: the modules ``tests/data/mmsparse_v1_checkpoints.pth`` was written from, built with today's arguments
V1_MODELS = {'biformer': _v1_biformer, 'cloformer': _v1_cloformer, 'stvit': _v1_stvit,
             'sparse_attn_block': _v1_sparse_attn_block}


def _amp_biformer():
    from mmsparse.models import BiFormer
    return BiFormer(arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 1, 1], head_dim=16), n_win=4,
                    topks=[1, 2, 4, -2])


def _amp_cloformer():
    from mmsparse.models import CloFormer
    return CloFormer(arch='xxs')


def _amp_stvit():
    from mmsparse.models import STViT
    return STViT(arch=dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 4]))


#: reduced backbones for the mixed-precision checks (CPU autocast, CUDA): name -> builder
AMP_BUILDERS = {'biformer': _amp_biformer, 'cloformer': _amp_cloformer, 'stvit': _amp_stvit}


def fwd_bwd(model, x, device_type, dtype):
    """A train-mode forward under ``torch.autocast(device_type, dtype)`` and a backward; returns (outs, loss)."""
    model.train()
    model.zero_grad()
    with torch.autocast(device_type, dtype=dtype):
        outs = model(x)
    loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    return outs, loss


def check_finite(model, outs, loss, dtype):
    """Outputs in ``dtype``; loss, outputs and every trainable parameter's gradient present and finite."""
    assert all(o.dtype == dtype for o in outs), [o.dtype for o in outs]
    assert torch.isfinite(loss)
    for i, o in enumerate(outs):
        assert torch.isfinite(o).all(), f'output {i} has NaN/Inf'
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f'no gradient for {missing[:5]}'
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f'NaN/Inf gradients in {bad[:5]}'


# -------------------------------------------------- BRA routing

def padded_regions(h, w, n_win):
    """Row-major indices of the regions that hold only auto-padding for an h x w map."""
    rh, rw = math.ceil(h / n_win), math.ceil(w / n_win)
    return {r * n_win + c for r in range(n_win) for c in range(n_win) if r * rh >= h or c * rw >= w}


def assert_same_routing(ours, ref, pad_regions, name='routing'):
    """Compare top-k region indices per row as sets; fully padded regions are interchangeable."""
    assert ours.shape == ref.shape, f'{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}'

    def canon(row):
        real = sorted(int(i) for i in row if int(i) not in pad_regions)
        return real, len(row) - len(real)

    for n in range(ref.shape[0]):
        for p in range(ref.shape[1]):
            assert canon(ours[n, p]) == canon(ref[n, p]), (
                f'{name}: region {p} of sample {n} routes to {ours[n, p].tolist()}, reference {ref[n, p].tolist()}')


# -------------------------------------------------- smoke run of a whole config (one train iteration, one test batch)
# Any mmsparse / mmdet / mmseg config, on CPU: the config's datasets are swapped for the embedded synthetic data at
# reduced image size, pretrained weights are dropped (none can be downloaded here), AMP is turned off (mmengine's
# AmpOptimWrapper needs a GPU) and SyncBN is reverted by the non-distributed runner. Everything else (model,
# optimizer, paramwise rules, schedulers, hooks) stays as the config says, so this checks that the config itself
# trains and tests.

#: where the synthetic datasets are generated (:func:`ensure_synthetic_data`)
DATA_DIR = REPO / 'data'
#: the synthetic dataset configs, by the kind of data a config needs
SYNTHETIC = {
    'instance': osp.join(REPO, 'configs/_base_/datasets/synthetic_coco_instance.py'),
    'detection': osp.join(REPO, 'configs/_base_/datasets/synthetic_coco_detection.py'),
    'semantic': osp.join(REPO, 'configs/_base_/datasets/synthetic_ade20k.py'),
}
#: ``--cfg-options`` that point a COCO config (its loaders and evaluators) at the synthetic COCO data
SYNTHETIC_COCO_OPTIONS = [
    f'{loader}.dataset.{key}' for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    for key in ('data_root=data/synthetic_coco/', "metainfo.classes=('disc','square','triangle','ring')")
] + [f'{evaluator}.ann_file=data/synthetic_coco/annotations/instances_val2017.json'
     for evaluator in ('val_evaluator', 'test_evaluator')]


def data_kind(cfg):
    """The synthetic data a config needs: 'semantic' (mmseg), 'instance' (a mask head) or 'detection'."""
    if cfg.default_scope == 'mmseg':
        return 'semantic'
    roi_head = cfg.model.get('roi_head') or {}
    return 'instance' if roi_head.get('mask_head') else 'detection'


def smoke_config(config_path, work_dir, data_root, img_scale=(128, 96)):
    """Return the reduced Config for :func:`run_config_smoke` (``data_root``: where the synthetic data is)."""
    cfg = Config.fromfile(config_path)
    kind = data_kind(cfg)
    data = Config.fromfile(SYNTHETIC[kind])
    root = osp.join(data_root, 'synthetic_ade20k/ADEChallengeData2016' if kind == 'semantic' else 'synthetic_coco')
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = copy.deepcopy(data[name])
        loader.batch_size = 2 if name == 'train_dataloader' else 1
        loader.dataset.data_root = root
        loader.dataset.indices = 2 if name == 'train_dataloader' else 1
        for t in loader.dataset.pipeline:
            if t['type'] in ('Resize', 'RandomResize'):
                t['scale'] = img_scale
            if t['type'] == 'RandomCrop':
                t['crop_size'] = (img_scale[1], img_scale[1])
        cfg[name] = loader
    if kind == 'semantic':
        cfg.model.data_preprocessor.size = (img_scale[1], img_scale[1])
        cfg.val_evaluator = cfg.test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
    else:
        evaluator = copy.deepcopy(data.val_evaluator)
        evaluator.ann_file = osp.join(root, 'annotations/instances_val2017.json')
        cfg.val_evaluator = cfg.test_evaluator = evaluator
    drop_pretrained(cfg.model)
    if kind != 'semantic':
        _fit_detector_to_synthetic_data(cfg.model)
    if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'
        for key in ('loss_scale', 'dtype'):
            cfg.optim_wrapper.pop(key, None)
    if cfg.train_cfg.get('type') == 'IterBasedTrainLoop':
        cfg.train_cfg.max_iters, cfg.train_cfg.val_interval = 1, 1000
    else:
        cfg.train_cfg.max_epochs, cfg.train_cfg.val_interval = 1, 1000
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1000)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.pop('visualization', None)
    cfg.work_dir = str(work_dir)
    cfg.launcher = 'none'
    cfg.randomness = dict(seed=0)  # the same initialisation and data order in every run of the suite
    return cfg


def _fit_detector_to_synthetic_data(model_cfg):
    """Point every detection head at the synthetic data's classes (an 80-class head predicts labels the synthetic
    metric cannot map to its 4 category ids) and let a 1-iteration model report its boxes (score threshold 0), so
    that COCO metrics are computed instead of mmdet's ``{}`` for an empty prediction set."""
    from mmsparse.datasets import SYNTHETIC_COCO_CLASSES
    roi_head = model_cfg.get('roi_head') or {}
    for head in (model_cfg.get('bbox_head'), roi_head.get('bbox_head'), roi_head.get('mask_head')):
        if head and 'num_classes' in head:
            head['num_classes'] = len(SYNTHETIC_COCO_CLASSES)
    test_cfg = model_cfg.get('test_cfg') or {}
    for stage in (test_cfg.get('rcnn'), test_cfg if 'score_thr' in test_cfg else None):
        if stage is not None:
            stage['score_thr'], stage['max_per_img'] = 0., 20


def expected_metrics(cfg):
    """Metric keys a test run of the smoke config must report."""
    if cfg.default_scope == 'mmseg':
        return ['mIoU', 'aAcc']
    return ['coco/bbox_mAP', 'coco/bbox_mAP_50'] + (['coco/segm_mAP'] if data_kind(cfg) == 'instance' else [])


def check_metrics(cfg, metrics):
    """Raise unless ``metrics`` holds every expected key with a finite value in its range."""
    missing = [k for k in expected_metrics(cfg) if k not in metrics]
    assert not missing, f'test metrics lack {missing}: {metrics}'
    for k in expected_metrics(cfg):
        v = float(metrics[k])
        limit = 100. if cfg.default_scope == 'mmseg' else 1.
        assert math.isfinite(v) and 0. <= v <= limit, f'{k} = {v}'


def run_config_smoke(config_path, work_dir, data_root=None):
    """One training iteration and one test batch of ``config_path``; returns the test metrics dict, after
    checking that it holds the task's metrics (COCO bbox / segm AP or mIoU) with finite values.

    ``data_root`` defaults to the repository's ``data/`` folder, generated on first use.
    """
    from mmengine.runner import Runner
    data_root = data_root or ensure_synthetic_data()
    cfg = smoke_config(config_path, work_dir, data_root)
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    check_metrics(cfg, metrics)
    return metrics


#: configs with their own synthetic sets (``synthetic_data`` entry, written by make_synthetic.py --config)
DEMO_CONFIGS = ('configs/demo/maskrcnn_demo_synthetic.py', 'configs/demo/upernet_demo_synthetic.py')


def _ensure(task, out, **sizes):
    from mmsparse.datasets import make_synthetic_ade20k, make_synthetic_coco
    marker = 'annotations/instances_val2017.json' if task == 'coco' else 'annotations/validation'
    if not osp.exists(osp.join(out, marker)):
        (make_synthetic_coco if task == 'coco' else make_synthetic_ade20k)(out, **sizes)


def ensure_synthetic_data(root=str(DATA_DIR)):
    """Generate the synthetic datasets under ``root`` (and the demo configs' own sets, under the repository)
    if they are not there yet; returns ``root``."""
    _ensure('coco', osp.join(root, 'synthetic_coco'), seed=0)
    _ensure('ade20k', osp.join(root, 'synthetic_ade20k/ADEChallengeData2016'), seed=0)
    for config in DEMO_CONFIGS:
        spec = dict(Config.fromfile(osp.join(REPO, config)).synthetic_data)
        _ensure(spec.pop('task'), osp.join(REPO, spec.pop('out')), **spec)
    return root
