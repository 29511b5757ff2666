"""``runtime_meta``: what the torch-free runtime reads from the config, checked against the configs' own values and
mmdet's / mmseg's datasets and palettes."""
import json

import pytest

from mmsparse.apis import load_config
from mmsparse.deployment.metadata import runtime_meta

SEG_DEMO = 'configs/demo/upernet_demo_synthetic.py'
DET_DEMO = 'configs/demo/maskrcnn_demo_synthetic.py'
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def meta_of(path, options=None):
    meta = runtime_meta(load_config(path, options))
    assert json.loads(json.dumps(meta)) == meta  # stored as JSON in the ONNX file
    return meta


def test_demo_segmentor():
    meta = meta_of(SEG_DEMO)
    from mmsparse.datasets import SyntheticADE20KDataset
    assert meta['task'] == 'mmseg' and meta['unsupported'] == []
    assert meta['classes'] == ['background', 'disc', 'square', 'triangle', 'ring']
    assert meta['palette'] == [list(c) for c in SyntheticADE20KDataset.METAINFO['palette']]
    pre = meta['preprocess']
    assert pre['mean'] == MEAN and pre['std'] == STD and pre['bgr_to_rgb'] is True
    assert pre['resize'] == dict(scale=[96, 96], scale_factor=None, keep_ratio=True, interpolation='bilinear')
    # the preprocessor's size=(96, 96) pads training batches only: nothing at test time
    assert pre['pad'] == dict(size_divisor=None, size=None, pad_val=0.)
    assert meta['postprocess'] == dict(align_corners=False, threshold=None)


def test_demo_detector_palette_is_mmdets_random_one():
    from mmdet.visualization.palette import get_palette
    meta = meta_of(DET_DEMO)
    assert meta['task'] == 'mmdet' and meta['unsupported'] == []
    assert meta['classes'] == ['disc', 'square', 'triangle', 'ring']
    # the demo's metainfo has no palette: mmdet's visualiser draws with its seeded random colours
    assert meta['palette'] == [list(c) for c in get_palette('random', 4)]
    pre = meta['preprocess']
    assert pre['resize'] == dict(scale=[256, 192], scale_factor=None, keep_ratio=True, interpolation='bilinear')
    assert pre['pad'] == dict(size_divisor=32, size=None, pad_val=0.)
    assert meta['postprocess'] == dict(mask_thr=0.5)


def test_full_size_configs():
    from mmdet.datasets import CocoDataset
    from mmseg.datasets import ADE20KDataset
    det = meta_of('configs/biformer/maskrcnn_biformer_s_coco.py')
    assert det['classes'] == list(CocoDataset.METAINFO['classes']) and len(det['classes']) == 80
    assert det['palette'] == [list(c) for c in CocoDataset.METAINFO['palette']]
    assert det['preprocess']['resize']['scale'] == [1333, 800]
    assert det['preprocess']['pad'] == dict(size_divisor=32, size=None, pad_val=0.)
    seg = meta_of('configs/biformer/upernet_biformer_s_ade20k.py')
    assert seg['classes'] == list(ADE20KDataset.METAINFO['classes']) and len(seg['palette']) == 150
    assert seg['preprocess']['resize']['scale'] == [2048, 512]
    assert seg['preprocess']['pad']['size'] is None and seg['unsupported'] == []


def test_test_time_padding_and_unsupported_steps():
    meta = meta_of(SEG_DEMO, {'model.data_preprocessor.test_cfg': dict(size_divisor=32), 'model.test_cfg':
                              dict(mode='slide', crop_size=(64, 64), stride=(32, 32))})
    assert meta['preprocess']['pad'] == dict(size_divisor=32, size=None, pad_val=0.)
    assert meta['unsupported'] == ["test_cfg mode 'slide' (sliding-window inference)"]
    pipeline = [dict(type='LoadImageFromFile'), dict(type='mmdet.Resize', scale=640, keep_ratio=False,
                                                     interpolation='nearest'),
                dict(type='RandomFlip', prob=1.), dict(type='PackDetInputs')]
    meta = meta_of(DET_DEMO, {'test_dataloader.dataset.pipeline': pipeline,
                              'model.data_preprocessor.pad_value': 5})
    assert meta['preprocess']['resize'] == dict(scale=[640, 640], scale_factor=None, keep_ratio=False,
                                                interpolation='nearest')
    assert meta['preprocess']['pad']['pad_val'] == 5. and meta['unsupported'] == ['RandomFlip']


def test_rejects_other_scopes():
    cfg = load_config(SEG_DEMO)
    cfg.default_scope = 'mmpretrain'
    with pytest.raises(ValueError, match="default_scope must be mmdet or mmseg, got 'mmpretrain'"):
        runtime_meta(cfg)


def test_config_without_test_pipeline():
    """A config without a test set (a bare backbone's, say) still exports: the runtime refuses it, naming why."""
    cfg = load_config(SEG_DEMO)
    cfg.pop('test_dataloader')
    meta = runtime_meta(cfg)
    assert meta['unsupported'] == ['no test_dataloader.dataset.pipeline'] and meta['classes'] == []
