"""tools/deployment/evaluate_onnx.py: the torch-free runtime scores a config's test set as PyTorch does.

* The demo UPerNet, trained a few iterations, exported: mIoU from ``mmsparse_ort`` + mmseg's IoUMetric equals
  ``Runner.test`` of the checkpoint within MIOU_TOL points (aAcc too), on a model that predicts several classes
  (MIN_CLASSES or more in the label maps).
* A reduced RetinaNet (CloFormer) whose head is drawn so that it detects (scores spread over (0, 1)), exported
  end to end (``dets``, ``labels``), at a test scale of half the images' size (so the runtime must rescale
  its boxes by the scale factor): bbox mAP equal within MAP_TOL. The annotation the metric reads holds, per
  image, the GT_PER_IMAGE best-scoring boxes of PyTorch's own ``predict`` (an mmdet computation, not the
  runtime's), so PyTorch's mAP is far from 0 and a runtime whose boxes are misplaced scores visibly lower; the
  test requires detections on every image and an mAP above MIN_MAP before it compares.
* A reduced Mask R-CNN (CloFormer) likewise, its RPN, box and mask heads drawn so that it detects, exported end
  to end with 28 x 28 RoI masks (``--masks roi``, pasted at the image's size by the runtime as mmdet does): bbox
  and segm mAP equal within MAP_TOL, against pseudo ground truth of PyTorch's best boxes and their masks.
"""
import glob
import json

import numpy as np
import pytest
import torch

from mmsparse.apis import load_config
from mmsparse.deployment import build_model, export_onnx
from mmsparse.deployment.metadata import runtime_meta
from mmsparse_ort import OrtModel

from tests.conftest import ensure_synthetic_data, load_tool

from .reduced import config_path, reduced_options

SEG_DEMO = 'configs/demo/upernet_demo_synthetic.py'
DET_CONFIG = 'retinanet_cloformer_s_coco.py'
MASK_CONFIG = 'maskrcnn_cloformer_s_coco.py'
NUM_IMAGES = 8
TRAIN_ITERS = 6
#: constant, a tenth of the demo's: a few steps that keep the model predicting several classes
TRAIN_LR = 2e-4
MIOU_TOL = 0.05  # points (mmseg reports percentages)
MIN_CLASSES = 3
MAP_TOL = 0.002
GT_PER_IMAGE = 3
MIN_MAP = 0.2
#: the synthetic 256 x 192 images tested at half size (128 x 96, a multiple of 32: no padding)
DET_SCALE = (128, 96)


@pytest.fixture(scope='module')
def data_root():
    return ensure_synthetic_data()


def seg_config(root, work_dir):
    ade = f'{root}/synthetic_ade20k/ADEChallengeData2016'
    return load_config(SEG_DEMO, {
        'train_dataloader.dataset.data_root': ade, 'test_dataloader.dataset.data_root': ade,
        'val_dataloader.dataset.data_root': ade, 'test_dataloader.dataset.indices': NUM_IMAGES,
        'train_dataloader.batch_size': 2, 'optim_wrapper.optimizer.lr': TRAIN_LR, 'work_dir': str(work_dir)})


@pytest.fixture(scope='module')
def segmentor(data_root, tmp_path_factory):
    """The demo UPerNet (seeded) trained TRAIN_ITERS steps (mmengine's ``train_step`` on the config's training
    loader and optimiser), its checkpoint and its ONNX file."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    from mmsparse.apis import build_model as build_seeded
    root = tmp_path_factory.mktemp('seg')
    cfg = seg_config(data_root, root / 'train')
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = build_seeded(cfg, seed=0).train()
        optim = build_optim_wrapper(model, cfg.optim_wrapper)
        for _, batch in zip(range(TRAIN_ITERS), Runner.build_dataloader(cfg.train_dataloader, seed=0)):
            model.train_step(batch, optim)
    model.eval()
    meta = runtime_meta(cfg)
    ckpt = str(root / 'seg.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=meta['classes']))), ckpt)
    path = str(root / 'seg.onnx')
    export_onnx(model, path, (96, 96), 'segmentor', extra_meta=meta)  # 160 x 160 -> 96 x 96
    return cfg, ckpt, path, root


def evaluate(cfg, path, ckpt, root):
    """``tools/deployment/evaluate_onnx.py`` on the config (written to a file), the graph and the checkpoint."""
    config = root / 'config.py'
    cfg.dump(str(config))
    tool = load_tool('tools/deployment/evaluate_onnx.py')
    assert tool.main([str(config), path, '--checkpoint', ckpt, '--out-dir', str(root / 'eval'), '--threads', '1']) == 0
    report = json.loads((root / 'eval' / 'metrics.json').read_text())
    assert report['images'] == NUM_IMAGES and report['model'] == path and report['checkpoint'] == ckpt
    return report


def test_segmentor_miou_equals_pytorch(segmentor, capsys):
    cfg, ckpt, path, root = segmentor
    report = evaluate(cfg, path, ckpt, root)
    got, ref = report['onnxruntime'], report['pytorch']
    printed = capsys.readouterr().out
    print(printed)
    assert 'mIoU' in printed and 'difference' in printed, printed
    # not one class everywhere: the label maps of the test images hold MIN_CLASSES classes or more
    model = OrtModel(path)
    predicted = set()
    for image in sorted(glob.glob(f'{cfg.test_dataloader.dataset.data_root}/images/validation/*.jpg'))[:NUM_IMAGES]:
        predicted |= set(np.unique(model.predict(model.read(image)).label_map).tolist())
    assert len(predicted) >= MIN_CLASSES, predicted
    assert abs(got['mIoU'] - ref['mIoU']) <= MIOU_TOL, (got, ref)
    assert abs(got['aAcc'] - ref['aAcc']) <= MIOU_TOL, (got, ref)


def det_options(root, ann_file, config=DET_CONFIG):
    coco = f'{root}/synthetic_coco/'
    masks = config.startswith('maskrcnn')
    pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=DET_SCALE, keep_ratio=True),
                dict(type='LoadAnnotations', with_bbox=True, with_mask=masks),
                dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
    test_cfg = dict(nms_pre=100, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), min_bbox_size=0,
                    max_per_img=50)
    if masks:
        test_cfg = dict(rpn=dict(nms_pre=100, max_per_img=50),
                        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=50,
                                  mask_thr_binary=0.5))
    return {**reduced_options(config, 'cloformer'), 'model.test_cfg': test_cfg,
            'test_dataloader.dataset': dict(data_root=coco, ann_file='annotations/instances_val2017.json',
                                            data_prefix=dict(img='val2017/'), pipeline=pipeline, indices=NUM_IMAGES,
                                            metainfo=dict(classes=('disc', 'square', 'triangle', 'ring'))),
            'test_evaluator': dict(type='CocoMetric', metric=['bbox', 'segm'] if masks else 'bbox',
                                   ann_file=str(ann_file))}


def pytorch_detections(cfg, model):
    """mmdet's ``predict`` (the config's pipeline, the model's preprocessor) on each test image: (info, dets)."""
    from mmengine.dataset import pseudo_collate
    from mmsparse.deployment.evaluate import load_test_dataset
    from mmengine.registry import DATASETS, DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = DATASETS.build(cfg.test_dataloader.dataset)
        infos = load_test_dataset(cfg)
        out = []
        for i in range(len(dataset)):
            with torch.no_grad():
                (sample, ) = model.test_step(pseudo_collate([dataset[i]]))
            out.append((infos.get_data_info(i), sample.pred_instances))
    return out


def pseudo_annotation(path, source_ann, detections):
    """A COCO annotation of the tested images whose objects are their GT_PER_IMAGE best-scoring detections (with
    their masks, RLE-encoded by pycocotools, where the model predicts masks)."""
    from pycocotools import mask as coco_mask
    source = json.loads(open(source_ann).read())
    ids = {info['img_id'] for info, _ in detections}
    anns = []
    for info, pred in detections:
        best = pred.scores.argsort(descending=True)[:GT_PER_IMAGE]
        for i, box, label in zip(best.tolist(), pred.bboxes[best].tolist(), pred.labels[best].tolist()):
            x1, y1, x2, y2 = box
            ann = dict(id=len(anns) + 1, image_id=info['img_id'], category_id=source['categories'][label]['id'],
                       bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1), iscrowd=0)
            if 'masks' in pred:
                rle = coco_mask.encode(np.asfortranarray(pred.masks[i].numpy().astype(np.uint8)))
                assert rle['counts'] and coco_mask.area(rle) > 0  # a mask that covers pixels
                ann['segmentation'] = dict(size=rle['size'], counts=rle['counts'].decode())
            anns.append(ann)
    path.write_text(json.dumps(dict(images=[i for i in source['images'] if i['id'] in ids], annotations=anns,
                                    categories=source['categories'])))
    return len(anns)


def detector_graph(data_root, root, config, draw_heads, **export_args):
    """The reduced ``config`` built (seeded), its heads drawn by ``draw_heads(model)``, saved as a checkpoint,
    pseudo ground truth written from its own predictions, exported end to end: (cfg, ckpt, onnx path, root)."""
    ann = root / 'pseudo_gt.json'
    cfg = load_config(config_path(config), det_options(data_root, ann, config))
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        draw_heads(model)
    meta = runtime_meta(cfg)
    ckpt = str(root / 'weights.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=meta['classes']))), ckpt)
    objects = pseudo_annotation(ann, f'{data_root}/synthetic_coco/annotations/instances_val2017.json',
                                pytorch_detections(cfg, model))
    assert objects == GT_PER_IMAGE * NUM_IMAGES, objects
    path = str(root / 'model.onnx')
    export_onnx(model, path, DET_SCALE[::-1], outputs='mmdeploy', extra_meta=meta, **export_args)
    return cfg, ckpt, path, root


@pytest.fixture(scope='module')
def detector(data_root, tmp_path_factory):
    def draw(model):  # scores spread over (0, 1): detections above score_thr, boxes away from the anchors
        model.bbox_head.retina_cls.weight.normal_(std=0.3)
        model.bbox_head.retina_reg.weight.normal_(std=0.1)
        model.bbox_head.retina_cls.bias.fill_(-2.5)
    return detector_graph(data_root, tmp_path_factory.mktemp('det'), DET_CONFIG, draw, kind='single_stage')


def test_detector_bbox_map_equals_pytorch(detector):
    cfg, ckpt, path, root = detector
    report = evaluate(cfg, path, ckpt, root)
    got, ref = report['onnxruntime'], report['pytorch']
    assert min(report['detections_per_image']) > 0, report  # the runtime detects on every image
    assert ref['coco/bbox_mAP'] > MIN_MAP, ref  # PyTorch's boxes meet the objects: not a 0 = 0 comparison
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'):
        assert abs(got[key] - ref[key]) <= MAP_TOL, (key, got, ref)


@pytest.fixture(scope='module')
def mask_detector(data_root, tmp_path_factory):
    """The reduced Mask R-CNN, its RPN, box and mask heads drawn wider (test_end2end's HEADS), with RoI masks."""
    from .test_end2end import HEADS

    def draw(model):
        for name, std in HEADS['maskrcnn'][1].items():
            model.get_submodule(name).weight.normal_(std=std)
    return detector_graph(data_root, tmp_path_factory.mktemp('mask'), MASK_CONFIG, draw, kind='two_stage',
                          masks='roi')


def test_mask_rcnn_bbox_and_segm_map_equal_pytorch(mask_detector):
    cfg, ckpt, path, root = mask_detector
    report = evaluate(cfg, path, ckpt, root)
    got, ref = report['onnxruntime'], report['pytorch']
    assert min(report['detections_per_image']) > 0, report
    assert 'notes' not in report, report  # RoI masks: nothing expected to differ
    for kind in ('bbox', 'segm'):
        assert ref[f'coco/{kind}_mAP'] > MIN_MAP, ref
        for key in (f'coco/{kind}_mAP', f'coco/{kind}_mAP_50', f'coco/{kind}_mAP_75'):
            assert abs(got[key] - ref[key]) <= MAP_TOL, (key, got, ref)


def test_bad_arguments_are_named(segmentor, tmp_path, capsys):
    cfg, ckpt, path, root = segmentor
    tool = load_tool('tools/deployment/evaluate_onnx.py')
    config = str(config_path(DET_CONFIG))
    cases = [([config, str(tmp_path / 'none.onnx')], 'model: no such ONNX file'),
             ([config, path, '--checkpoint', str(tmp_path / 'none.pth')], '--checkpoint: no such file'),
             ([config, path, '--threads', '0'], '--threads must be a positive integer, got 0'),
             ([str(tmp_path / 'none.py'), path], 'config: no such file'),
             ([config, path, '--out-dir', str(tmp_path / 'out')], 'is an mmseg graph, the config an mmdet one')]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            tool.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err.strip().splitlines()[-1], (argv, err)
