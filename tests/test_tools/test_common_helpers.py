"""mmsparse.apis helpers shared by the tools and the smoke runs: drop_pretrained, fake_data_sample."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict

from mmsparse.apis import drop_pretrained, fake_data_sample, load_task_config
from tests.conftest import REPO, smoke_config


def test_drop_pretrained_dict_list_and_mmseg_forms():
    kaiming = dict(type='Kaiming', layer='Conv2d')
    model = ConfigDict(pretrained='open-mmlab://resnet50', init_cfg=dict(type='Pretrained', checkpoint='m.pth'),
                       backbone=dict(init_cfg=[dict(type='Pretrained', checkpoint='b.pth'), kaiming]))
    drop_pretrained(model)
    assert model.pretrained is None and model.init_cfg is None
    assert model.backbone.init_cfg == [kaiming]  # a list keeps its other initialisers
    only = ConfigDict(backbone=dict(init_cfg=[dict(type='Pretrained', checkpoint='b.pth')]))
    drop_pretrained(only)
    assert only.backbone.init_cfg is None
    other = ConfigDict(backbone=dict(init_cfg=kaiming))
    drop_pretrained(other)
    assert other.backbone.init_cfg == kaiming and 'pretrained' not in other


def test_smoke_config_drops_the_pretrained_checkpoint(tmp_path):
    path = osp.join(REPO, 'configs/biformer/maskrcnn_biformer_s_coco.py')
    assert Config.fromfile(path).model.backbone.init_cfg.type == 'Pretrained'
    assert smoke_config(path, tmp_path, str(tmp_path)).model.backbone.init_cfg is None


def test_fake_detection_sample():
    g = torch.Generator().manual_seed(0)
    s = fake_data_sample('mmdet', 40, 60, num_classes=3, generator=g, num_instances=4)
    assert s.img_shape == s.batch_input_shape == (40, 60) and s.scale_factor == (1., 1.)
    boxes, masks = s.gt_instances.bboxes, s.gt_instances.masks.masks
    assert boxes.shape == (4, 4) and masks.shape == (4, 40, 60) and len(s.ignored_instances) == 0
    assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2] <= 60).all() and (boxes[:, 3] <= 40).all()
    assert set(s.gt_instances.labels.tolist()) <= {0, 1, 2}
    for (x0, y0, x1, y1), m in zip(boxes.round().long().tolist(), masks):
        assert m.sum() == (x1 - x0) * (y1 - y0) and m[y0:y1, x0:x1].all()  # box-shaped masks
    again = fake_data_sample('mmdet', 40, 60, 3, torch.Generator().manual_seed(0), num_instances=4)
    assert torch.equal(again.gt_instances.bboxes, boxes)
    assert 'gt_instances' not in fake_data_sample('mmdet', 40, 60, with_gt=False)


def test_fake_segmentation_sample_and_bad_task():
    s = fake_data_sample('mmseg', 8, 12, num_classes=5, generator=torch.Generator().manual_seed(0))
    assert s.gt_sem_seg.data.shape == (1, 8, 12) and 0 <= s.gt_sem_seg.data.min() <= s.gt_sem_seg.data.max() < 5
    with pytest.raises(ValueError, match=r"task='mmpretrain'; fake data samples exist for \['mmdet', 'mmseg'\]"):
        fake_data_sample('mmpretrain', 8, 8)


def test_load_task_config_names_the_file_and_the_scope(tmp_path):
    """tools/infer.py's config check, now :func:`mmsparse.apis.load_task_config`."""
    with pytest.raises(FileNotFoundError, match='config: no such file: nope.py'):
        load_task_config('nope.py')
    path = tmp_path / 'cls.py'
    path.write_text("default_scope = 'mmpretrain'\n")
    with pytest.raises(ValueError, match=rf"{path}: default_scope='mmpretrain' in the config; .*'mmdet', 'mmseg'"):
        load_task_config(str(path))
    cfg, task = load_task_config(osp.join(REPO, 'configs/demo/upernet_demo_synthetic.py'),
                                 {'train_cfg.max_iters': 3})
    assert task == 'mmseg' and cfg.train_cfg.max_iters == 3
