"""Run any mmsparse / mmdet / mmseg config for one training iteration and one test batch on CPU.

The config's datasets are swapped for the embedded synthetic data at reduced image size, pretrained weights
are dropped (none can be downloaded here), AMP is turned off (mmengine's AmpOptimWrapper needs a GPU) and
SyncBN is reverted by the non-distributed runner. Everything else (model, optimizer, paramwise rules,
schedulers, hooks) stays as the config says, so this checks that the config itself trains and tests.
"""
import copy
import os.path as osp
import sys

from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if osp.join(REPO, 'tools') not in sys.path:
    sys.path.append(osp.join(REPO, 'tools'))  # appended: tools/test.py must not shadow anything
from _common import drop_pretrained  # noqa: E402  (tools/_common.py, shared with the tools)
SYNTHETIC = {
    'instance': osp.join(REPO, 'configs/_base_/datasets/synthetic_coco_instance.py'),
    'detection': osp.join(REPO, 'configs/_base_/datasets/synthetic_coco_detection.py'),
    'semantic': osp.join(REPO, 'configs/_base_/datasets/synthetic_ade20k.py'),
}


def data_kind(cfg):
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
    import math
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
    import mmsparse  # noqa: F401
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


def ensure_synthetic_data(root=osp.join(REPO, 'data')):
    """Generate the synthetic datasets under ``root`` (and the demo configs' own sets, under the repository)
    if they are not there yet; returns ``root``."""
    _ensure('coco', osp.join(root, 'synthetic_coco'), seed=0)
    _ensure('ade20k', osp.join(root, 'synthetic_ade20k/ADEChallengeData2016'), seed=0)
    for config in DEMO_CONFIGS:
        spec = dict(Config.fromfile(osp.join(REPO, config)).synthetic_data)
        _ensure(spec.pop('task'), osp.join(REPO, spec.pop('out')), **spec)
    return root
