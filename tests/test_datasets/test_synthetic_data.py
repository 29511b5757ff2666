"""The embedded synthetic datasets: deterministic, valid COCO, loadable by mmdet's and mmseg's dataset classes."""
import hashlib
import os.path as osp

import numpy as np
import pytest

from mmsparse.datasets import SYNTHETIC_ADE_CLASSES, make_synthetic_ade20k, make_synthetic_coco


def digest(paths):
    h = hashlib.sha1()
    for p in sorted(paths):
        with open(p, 'rb') as f:
            h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    make_synthetic_coco(str(root), seed=3, num_train=6, num_val=3)
    return root


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade') / 'ADEChallengeData2016'
    make_synthetic_ade20k(str(root), seed=3, num_train=6, num_val=3)
    return root


def test_coco_is_deterministic(coco_root, tmp_path):
    make_synthetic_coco(str(tmp_path), seed=3, num_train=6, num_val=3)
    files = ['annotations/instances_train2017.json', 'train2017/000000.jpg', 'val2017/000002.jpg']
    assert digest([coco_root / f for f in files]) == digest([tmp_path / f for f in files])
    other = tmp_path / 'other'
    make_synthetic_coco(str(other), seed=4, num_train=6, num_val=3)
    assert digest([coco_root / files[0]]) != digest([other / files[0]])


def test_coco_validates_with_pycocotools(coco_root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    coco = COCO(str(coco_root / 'annotations/instances_train2017.json'))
    assert len(coco.getImgIds()) == 6 and len(coco.getCatIds()) == 4
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 6
    for ann in anns:
        mask = coco.annToMask(ann)
        assert mask.sum() == ann['area'] > 0
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann['bbox']
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert mask_utils.area(ann['segmentation']) == ann['area']
    assert len({a['category_id'] for a in anns}) >= 2


def test_coco_loads_in_mmdet(coco_root):
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    ds = CocoDataset(data_root=str(coco_root), ann_file='annotations/instances_val2017.json',
                     data_prefix=dict(img='val2017/'), metainfo=dict(classes=('disc', 'square', 'triangle', 'ring')),
                     pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_mask=True),
                               dict(type='PackDetInputs')], test_mode=True)
    sample = ds[0]
    gt = sample['data_samples'].gt_instances
    assert sample['inputs'].shape[1:] == (192, 256)
    assert len(gt) > 0 and gt.masks.masks.shape[1:] == (192, 256)


def test_ade20k_layout_and_reduce_zero_label(ade_root):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    assert osp.isdir(ade_root / 'images/training') and osp.isdir(ade_root / 'annotations/validation')
    ds = DATASETS.build(dict(
        type='SyntheticADE20KDataset', data_root=str(ade_root),
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                  dict(type='PackSegInputs')]))
    assert len(ds) == 6 and ds.metainfo['classes'] == SYNTHETIC_ADE_CLASSES
    import cv2
    raw = cv2.imread(ds.get_data_info(0)['seg_map_path'], cv2.IMREAD_UNCHANGED)
    label = ds[0]['data_samples'].gt_sem_seg.data[0].numpy()
    assert set(np.unique(raw)) <= set(range(len(SYNTHETIC_ADE_CLASSES) + 1)) and (raw == 0).any()
    # reduce_zero_label: 0 (unlabelled) -> 255 (ignored), k -> k - 1
    assert (label[raw == 0] == 255).all()
    assert (label[raw > 0] == raw[raw > 0] - 1).all()
