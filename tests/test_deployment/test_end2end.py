"""End-to-end detector graphs (anchors, decoding, NMS, top-k, RoIAlign, masks inside ONNX) against mmdet's
``predict``, for the RetinaNet and the Mask R-CNN of every family.

The reduced detectors get heads whose scores spread over (0, 1) (classification and regression weights drawn wider
than the initialisation), so that there are real detections, many overlapping boxes for the NMS to suppress, and
(RetinaNet) fewer detections than ``max_per_img`` (padded rows). Each model is exported once per module, with
``--dynamic``; every family's graphs are compared at two sizes and two batches. The tool, padding, optimisation
level and RoI-mask tests run on the CloFormer graphs (the post-processing in the graph does not depend on the
backbone).
"""
import argparse
import contextlib
import functools
import io
import json
import os.path as osp

import numpy as np
import onnx
import pytest
import torch

import onnxruntime  # noqa: F401  (a dependency of the project: missing, the tests fail)

from mmsparse.deployment import build_model, export_onnx, graph_meta, load_config
from mmsparse.deployment.end2end import (End2EndWrapper, check_layout, compare_detections, grid_anchors,
                                         nms_settings, paste_masks)
from mmsparse.deployment.metadata import runtime_meta
from mmsparse.deployment.runtime import OPT_LEVELS, make_session
from mmsparse.families import list_families

from tests.conftest import load_tool

from .reduced import check_families, config_path, reduced_options
# the RetinaNet config at a small test scale: the 600 x 512 photograph becomes 141 x 120, padded to 160 x 128
from .test_infer_onnx import SMALL_TEST, photograph

CONFIG = 'retinanet_cloformer_s_coco.py'
MASKRCNN = 'maskrcnn_cloformer_s_coco.py'
TEST_CFG = dict(nms_pre=100, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), min_bbox_size=0,
                max_per_img=100)
EXPORT_SIZE = (64, 64)
OTHER_SIZE = (87, 71)

#: detector -> (test_cfg, the classifier / regressor weights drawn wider: module -> std)
HEADS = {
    'retinanet': (TEST_CFG, {'bbox_head.retina_cls': 0.3, 'bbox_head.retina_reg': 0.1}),
    'maskrcnn': (dict(rpn=dict(nms_pre=100, max_per_img=50), rcnn=dict(score_thr=0.05, max_per_img=60)),
                 {'rpn_head.rpn_cls': 0.3, 'rpn_head.rpn_reg': 0.1, 'roi_head.bbox_head.fc_cls': 0.3,
                  'roi_head.bbox_head.fc_reg': 0.05, 'roi_head.mask_head.conv_logits': 0.3}),
}
#: (detector, family) -> the graph's output layout: every family exports both layouts, each detector both
LAYOUTS = {('retinanet', 'biformer'): 'efficientnms', ('maskrcnn', 'biformer'): 'mmdeploy',
           ('retinanet', 'cloformer'): 'mmdeploy', ('maskrcnn', 'cloformer'): 'efficientnms',
           ('retinanet', 'stvit'): 'mmdeploy', ('maskrcnn', 'stvit'): 'efficientnms'}
#: every family's RetinaNet and Mask R-CNN (the S configs, reduced); CloFormer's first, whose exports the other
#: tests share (the first export of a process also loads the exporter)
DETECTORS = [f'{detector}_{family}_s_coco.py' for family in sorted(list_families(), key=lambda f: f != 'cloformer')
             for detector in HEADS]


def test_every_family_has_its_detectors():
    check_families()
    assert set(LAYOUTS) == {(config.split('_')[0], config.split('_')[1]) for config in DETECTORS}
    assert all(osp.isfile(config_path(config)) for config in DETECTORS)


def options(config=CONFIG):
    detector, family = config.split('_')[:2]
    return {**reduced_options(config, family), 'model.test_cfg': HEADS[detector][0]}


def detector(config=CONFIG, path=None):
    """The reduced model, its classifiers and regressors drawn wider: spread scores, boxes and masks."""
    torch.manual_seed(0)
    model = build_model(load_config(path or config_path(config), options(config)))
    with torch.no_grad():
        for name, std in HEADS[config.split('_')[0]][1].items():
            model.get_submodule(name).weight.normal_(std=std)
        if hasattr(model, 'bbox_head'):
            model.bbox_head.retina_cls.bias.fill_(-2.5)  # more scores above score_thr
    return model


@pytest.fixture(scope='module')
def dynamic_mmdeploy(tmp_path_factory):
    """The RetinaNet, its dynamic mmdeploy graph (with the small config's runtime metadata), the config and the
    checkpoint of the model's weights."""
    root = tmp_path_factory.mktemp('e2e')
    config = str(root / 'small_test.py')
    with open(config, 'w') as f:
        f.write(SMALL_TEST.format(base=config_path(CONFIG)))
    model = detector(path=config)
    checkpoint = str(root / 'weights.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), checkpoint)
    path = str(root / 'retinanet.onnx')
    names = export_onnx(model, path, EXPORT_SIZE, 'single_stage', dynamic=True, outputs='mmdeploy',
                        extra_meta=runtime_meta(load_config(config, options())))
    assert names == ['dets', 'labels']
    return model, path, config, checkpoint


@functools.lru_cache(maxsize=None)
def session(path):
    """One ONNX Runtime session per graph, shared by the tests."""
    return make_session(path)


def inputs(batch, size, seed):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """config -> (model, its ``--dynamic`` end-to-end graph in the layout of :data:`LAYOUTS`), each exported on
    first use."""
    graphs = {}

    def get(config):
        if config not in graphs:
            detector_name, family = config.split('_')[:2]
            model = detector(config)
            path = str(tmp_path_factory.mktemp('e2e') / config.replace('.py', '.onnx'))
            kind = 'single_stage' if detector_name == 'retinanet' else 'two_stage'
            export_onnx(model, path, EXPORT_SIZE, kind, dynamic=True, outputs=LAYOUTS[detector_name, family])
            graphs[config] = model, path
        return graphs[config]
    return get


def graph_of(request, config):
    """The model and graph of ``config``: CloFormer's from the fixtures of the other tests, any other exported."""
    if config == CONFIG:
        return request.getfixturevalue('dynamic_mmdeploy')[:2]
    if config == MASKRCNN:
        return request.getfixturevalue('mask_rcnn_efficientnms')[:2]
    return request.getfixturevalue('exported')(config)


@pytest.mark.parametrize('batch, size', [(1, EXPORT_SIZE), (2, EXPORT_SIZE), (1, OTHER_SIZE), (2, OTHER_SIZE)])
@pytest.mark.parametrize('config', DETECTORS)
def test_same_detections_as_mmdet(request, config, batch, size):
    """Every family's RetinaNet and Mask R-CNN: same count and labels, boxes within 1e-3 x the image size, scores
    within 1e-4, at most 0.1 % of mask pixels differing, at two sizes and two batches of one graph."""
    model, path = graph_of(request, config)
    meta = graph_meta(path)
    assert meta['layout'] == LAYOUTS[tuple(config.split('_')[:2])] and meta['dynamic']
    rows = compare_detections(model, path, inputs(batch, size, seed=batch), meta['layout'], session=session(path))
    assert len(rows) == batch
    for row in rows:
        assert row['count'][0] > 0 and row['ok'], row
        assert row['count'][0] <= meta['max_per_img']
        if meta['masks']:
            assert row['mask_mismatch'] <= 1e-3
    if config.startswith('retinanet'):
        assert all(row['count'][0] < meta['max_per_img'] for row in rows)  # padded rows follow the detections


def test_padding_and_every_optimisation_level(dynamic_mmdeploy):
    """Rows past the detections are zeros with label -1; every ORT optimisation level gives mmdet's detections."""
    model, path = dynamic_mmdeploy[:2]
    x = inputs(2, OTHER_SIZE, seed=5)
    img_shape = torch.tensor([OTHER_SIZE] * 2)
    dets, labels = session(path).run(None, {'input': x.numpy(), 'img_shape': img_shape.numpy()})
    assert dets.shape == (2, TEST_CFG['max_per_img'], 5) and dets.dtype.name == 'float32'
    assert labels.shape == (2, TEST_CFG['max_per_img']) and labels.dtype.name == 'int64'
    for image_dets, image_labels in zip(dets, labels):
        count = int((image_labels >= 0).sum())
        assert 0 < count < len(image_labels) and (image_labels[count:] == -1).all()
        assert (image_dets[count:] == 0).all() and (image_dets[:count, 4] > TEST_CFG['score_thr']).all()
        assert (image_dets[:count, 4][:-1] >= image_dets[:count, 4][1:]).all()  # highest score first
        assert (image_dets[:count, :4] >= 0).all() and (image_dets[:count, [0, 2]] <= OTHER_SIZE[1]).all()
        assert (image_dets[:count, [1, 3]] <= OTHER_SIZE[0]).all()  # clamped to the input
    for level in OPT_LEVELS[:-1]:  # 'all', the default, in the other tests
        assert all(row['ok'] for row in compare_detections(model, path, x, 'mmdeploy', opt_level=level)), level


MAX_DETS = HEADS['maskrcnn'][0]['rcnn']['max_per_img']


@pytest.fixture(scope='module')
def mask_rcnn_efficientnms(tmp_path_factory):
    """The Mask R-CNN, its graph from the tool's --outputs efficientnms --dynamic --verify, and what it printed."""
    root = tmp_path_factory.mktemp('maskrcnn')
    model = detector(MASKRCNN)
    weights = root / 'weights.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), weights)
    out = str(root / 'maskrcnn_enms.onnx')
    tool = load_tool('tools/deployment/export_onnx.py')
    args = tool.build_parser().parse_args([config_path(MASKRCNN), '--checkpoint', str(weights), '--out', out,
                                           '--shape', *map(str, EXPORT_SIZE), '--dynamic', '--outputs',
                                           'efficientnms', '--verify'])
    args.cfg_options = options(MASKRCNN)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = tool.run(args)
    return model, out, code, printed.getvalue()


def test_tool_mask_rcnn_efficientnms_dynamic(mask_rcnn_efficientnms):
    """The tool's --outputs efficientnms --dynamic --verify on Mask R-CNN (RPN, RoiAlign, box and mask heads in
    the graph): names, types, shapes, metadata, onnx's full check; the same detections and masks as mmdet at two
    sizes, each unpadded and padded (batches of two: test_padded_images_clip_to_img_shape); padding rows."""
    _, out, code, printed = mask_rcnn_efficientnms
    assert code == 0, printed
    assert 'NonMaxSuppression x2' in printed and 'RoiAlign x8' in printed  # 4 levels for the boxes, 4 for masks
    # verify: both sizes, each with the image filling the input and padded (7/8 of each side)
    checked = [line.split(': ')[0] + ' ' + line.split('img_shape ')[1] for line in printed.splitlines()
               if 'img_shape' in line]
    assert checked == ['[  ok] 1x3x64x64 detections[0] (64, 64)', '[  ok] 1x3x64x64 detections[0] (56, 56)',
                       '[  ok] 1x3x87x55 detections[0] (87, 55)', '[  ok] 1x3x87x55 detections[0] (77, 49)'], printed
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    types = {o.name: (o.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim])
             for o in list(proto.graph.input) + list(proto.graph.output)}
    n = MAX_DETS
    assert types == {'input': (onnx.TensorProto.FLOAT, ['batch', 3, 'height', 'width']),
                     'img_shape': (onnx.TensorProto.INT64, ['batch', 2]),
                     'num_detections': (onnx.TensorProto.INT32, ['batch', 1]),
                     'detection_boxes': (onnx.TensorProto.FLOAT, ['batch', n, 4]),
                     'detection_scores': (onnx.TensorProto.FLOAT, ['batch', n]),
                     'detection_classes': (onnx.TensorProto.INT32, ['batch', n]),
                     'masks': (onnx.TensorProto.FLOAT, ['batch', n, 'height', 'width'])}
    meta = graph_meta(out)
    assert (meta['layout'], meta['max_per_img'], meta['score_thr'], meta['masks']) == ('efficientnms', n, 0.05, 'full')
    assert meta['inputs'] == ['input', 'img_shape']
    assert meta['classes'] and meta['preprocess']['mean']  # the config's runtime metadata
    x = inputs(2, OTHER_SIZE, 8)
    feeds = {'input': x.numpy(), 'img_shape': torch.tensor([OTHER_SIZE] * 2).numpy()}
    num, boxes, scores, classes, masks = session(out).run(None, feeds)
    for count, image_boxes, image_scores, image_classes, image_masks in zip(num[:, 0], boxes, scores, classes, masks):
        assert 0 < count < n and (image_scores[count:] == 0).all() and (image_boxes[count:] == 0).all()
        assert (image_classes[count:] == 0).all() and (image_masks[count:] == 0).all()
        assert image_masks.shape == (n, *OTHER_SIZE) and (image_masks[:count] >= 0.5).any()


#: a padded batch: the input's size and each image's size within it (the rest is padding, zeros)
PADDED_SIZE, IMAGE_SIZES = (96, 96), [(87, 71), (60, 90)]


def padded_inputs(seed):
    x = torch.zeros(len(IMAGE_SIZES), 3, *PADDED_SIZE)
    for i, (h, w) in enumerate(IMAGE_SIZES):
        x[i, :, :h, :w] = inputs(1, (h, w), seed + i)[0]
    return x, torch.tensor(IMAGE_SIZES)


@pytest.mark.parametrize('which', ['retinanet', 'mask_rcnn'])
def test_padded_images_clip_to_img_shape(dynamic_mmdeploy, mask_rcnn_efficientnms, which):
    """Images that do not fill the padded input: the graph clips the boxes to each image's ``img_shape`` (not to
    the input) and gives mmdet's predict with that ``img_shape`` metainfo: same count and labels, boxes within
    1e-3 x the size, scores within 1e-4 (masks within 1e-3 of the pixels)."""
    model, path = (dynamic_mmdeploy if which == 'retinanet' else mask_rcnn_efficientnms)[:2]
    layout = graph_meta(path)['layout']
    x, img_shape = padded_inputs(seed=11)
    rows = compare_detections(model, path, x, layout, img_shape=img_shape, session=session(path))
    for row in rows:
        assert row['ok'] and row['count'][0] > 0, row
    outputs = session(path).run(None, {'input': x.numpy(), 'img_shape': img_shape.numpy()})
    boxes = outputs[0][..., :4] if layout == 'mmdeploy' else outputs[1]
    clipped = 0
    for image_boxes, (h, w) in zip(boxes, IMAGE_SIZES):
        assert (image_boxes[:, [0, 2]] <= w).all() and (image_boxes[:, [1, 3]] <= h).all()
        clipped += int((image_boxes[:, [0, 2]] == w).sum() + (image_boxes[:, [1, 3]] == h).sum())
    assert clipped > 0  # boxes reach into the padding unless clipped: the clipping is exercised


def test_runtime_matches_pytorch_on_a_padded_image(dynamic_mmdeploy, tmp_path):
    """tools/infer.py MODEL.onnx IMAGE (numpy, OpenCV, ONNX Runtime) against tools/infer.py CONFIG CHECKPOINT
    IMAGE (mmdet) on a photograph resized to 141 x 120, padded to 160 x 128: same labels, boxes, scores."""
    image = photograph()
    _, path, config, checkpoint = dynamic_mmdeploy
    tool = load_tool('tools/infer.py')
    tool.run(argparse.Namespace(config=config, checkpoint=checkpoint, inputs=[image], out_dir=str(tmp_path / 'pt'),
                                score_thr=0.0, device='cpu', cfg_options=options(), backend='pytorch'))
    assert tool.main([path, image, '--out-dir', str(tmp_path / 'ort'), '--score-thr', '0']) == 0
    (ref, ), (got, ) = (json.load(open(osp.join(tmp_path, d, 'results.json')))['results'] for d in ('pt', 'ort'))
    assert 0 < len(ref['labels']) < TEST_CFG['max_per_img'] and len(got['labels']) == len(ref['labels'])
    # as sets: tied scores may swap places
    ref_rows = sorted(zip(ref['labels'], ref['scores'], ref['bboxes']), key=lambda r: (r[0], -r[1], r[2]))
    got_rows = sorted(zip(got['labels'], got['scores'], got['bboxes']), key=lambda r: (r[0], -r[1], r[2]))
    for (l_ref, s_ref, b_ref), (l_got, s_got, b_got) in zip(ref_rows, got_rows):
        assert l_got == l_ref and abs(s_got - s_ref) < 1e-4
        assert max(abs(a - b) for a, b in zip(b_got, b_ref)) < 1e-3 * 600  # the 600 x 512 photograph


def test_roi_masks_paste_into_the_full_masks(mask_rcnn_efficientnms):
    """--masks roi: the mask head's [B, N, 28, 28] probabilities; pasted into their boxes, the full masks."""
    model = mask_rcnn_efficientnms[0]
    x = inputs(2, OTHER_SIZE, seed=9)
    with torch.no_grad():
        dets, labels, full = End2EndWrapper(model, 'two_stage', 'mmdeploy', 'full')(x)
        _, _, roi = End2EndWrapper(model, 'two_stage', 'mmdeploy', 'roi')(x)
    assert roi.shape == (2, MAX_DETS, 28, 28)
    pasted = paste_masks(roi.flatten(0, 1), dets[..., :4].flatten(0, 1), OTHER_SIZE).reshape(full.shape)
    assert torch.allclose(pasted, full) and (labels >= 0).any()


def test_paste_masks_equals_grid_sample():
    """The graph's separable pasting equals mmdet's way, ``grid_sample`` over every pixel (align_corners=False,
    zero padding), on boxes inside, across and outside the image and on degenerate (padding) boxes."""
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 28, 28, generator=g)
    corner, size = torch.rand(40, 2, generator=g) * 140 - 30, torch.rand(40, 2, generator=g) * 90 + 0.5
    boxes = torch.cat([corner, corner + size], 1)
    boxes[-4:] = 0
    h, w = 97, 113
    x1, y1, x2, y2 = boxes.split(1, dim=1)
    gy = ((torch.arange(h) + 0.5)[None] - y1) / (y2 - y1).clamp(min=1e-6) * 2 - 1
    gx = ((torch.arange(w) + 0.5)[None] - x1) / (x2 - x1).clamp(min=1e-6) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, h, w), gy[:, :, None].expand(-1, h, w)], dim=3)
    expected = F.grid_sample(masks[:, None], grid, align_corners=False)[:, 0]
    got = paste_masks(masks, boxes, (h, w))
    assert got.shape == (40, h, w) and int((expected[:-4].amax(dim=(1, 2)) > 0).sum()) >= 25  # most boxes on it
    assert torch.allclose(got, expected, atol=1e-5) and not got[-4:].any()
    # the graph pastes [B, K] detections at once: the same per mask
    batched = paste_masks(masks.reshape(2, 20, 28, 28), boxes.reshape(2, 20, 4), (h, w))
    assert batched.shape == (2, 20, h, w) and torch.allclose(batched.flatten(0, 1), got, atol=1e-6)


def test_mask_rcnn_without_detections(tmp_path):
    """No box above score_thr: the graph's per-level RoIAlign, mask head and pasting run on empty sets and give
    zero rows and masks, as mmdet gives no detection."""
    model = detector(MASKRCNN)
    model.roi_head.test_cfg.score_thr = 0.999  # a drawn head's softmax over 5 classes stays far below
    path = str(tmp_path / 'none.onnx')
    export_onnx(model, path, EXPORT_SIZE, 'two_stage', outputs='mmdeploy')
    x = inputs(1, EXPORT_SIZE, seed=3)
    dets, labels, masks = make_session(path).run(None, {'input': x.numpy(), 'img_shape': np.array([EXPORT_SIZE])})
    assert (labels == -1).all() and not dets.any() and not masks.any()
    assert masks.shape == (1, MAX_DETS, *EXPORT_SIZE)
    (row, ) = compare_detections(model, path, x, 'mmdeploy')
    assert row['count'] == (0, 0) and row['ok'], row


def test_dynamic_graph_is_checked_and_named(dynamic_mmdeploy):
    path = dynamic_mmdeploy[1]
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert dims == {'dets': ['batch', TEST_CFG['max_per_img'], 5], 'labels': ['batch', TEST_CFG['max_per_img']]}
    meta = graph_meta(path)
    assert (meta['layout'], meta['max_per_img'], meta['score_thr'], meta['dynamic']) == ('mmdeploy', 100, 0.05, True)


@pytest.mark.parametrize('sizes', [[(5, 4), (2, 3), (3, 1), (1, 2), (1, 1)], [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]])
def test_grid_anchors_equal_mmdet(dynamic_mmdeploy, sizes):
    """The export-safe anchor grid equals the prior generator's own, maps of 1 x 1 included."""
    generator = dynamic_mmdeploy[0].bbox_head.prior_generator
    like = torch.zeros(1)
    mine = grid_anchors(generator, sizes, like)
    ref = generator.grid_priors(sizes, dtype=torch.float32, device='cpu')
    assert all(torch.equal(a, b) for a, b in zip(mine, ref))


def test_layout_errors_name_the_option():
    with pytest.raises(ValueError, match='--outputs must be one of raw, mmdeploy, efficientnms'):
        check_layout('trt', 'single_stage')
    with pytest.raises(ValueError, match='--outputs mmdeploy: .* segmentor graph takes --outputs raw'):
        check_layout('mmdeploy', 'segmentor')
    check_layout('raw', 'two_stage')
    check_layout('efficientnms', 'two_stage')
    with pytest.raises(ValueError, match='test_cfg.rpn.nms_pre must be a positive integer, got None'):
        nms_settings(dict(nms=dict(type='nms', iou_threshold=0.7), max_per_img=10), 'test_cfg.rpn', ('nms_pre', ))
    with pytest.raises(ValueError, match=r'test_cfg.nms must be dict\(type="nms"'):
        nms_settings(dict(nms=dict(type='soft_nms', iou_threshold=0.5)), 'test_cfg', ())
    assert nms_settings(TEST_CFG, 'test_cfg', ('nms_pre', 'max_per_img')) == dict(
        score_thr=0.05, iou_threshold=0.5, min_bbox_size=0, nms_pre=100, max_per_img=100)
