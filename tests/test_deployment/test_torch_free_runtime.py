"""``tools/infer.py MODEL.onnx IMAGE``: the runtime without PyTorch (``mmsparse_ort``).

* In an environment with only numpy, opencv-python-headless and onnxruntime (built with pip under
  ``~/.cache/mmsparse/venv-ort``, or ``$MMSPARSE_ORT_VENV``), an exported demo UPerNet writes the label maps,
  results.json and pictures that the PyTorch path of tools/infer.py writes for the same checkpoint.
* The preprocessing equals mmdet's / mmseg's test pipelines and data preprocessors, bit for bit.
* Detector outputs (tiny graphs with fixed ``dets`` / ``labels`` / ``masks``) are rescaled, clipped, pasted and
  RLE-encoded as hand-computed, and as mmdet's mask pasting and pycocotools' encoder do.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mmsparse.apis import load_config
from mmsparse.deployment import build_model, export_onnx
from mmsparse.deployment.metadata import runtime_meta
from mmsparse_ort import encode_rle, preprocess, read_image
from mmsparse_ort.postprocess import paste_masks

from tests.conftest import REPO, load_tool

SEG_DEMO = 'configs/demo/upernet_demo_synthetic.py'
DET_DEMO = 'configs/demo/maskrcnn_demo_synthetic.py'
#: test-time padding to 96 x 96, so that a non-square image is padded and cropped back
PAD_96 = 'model.data_preprocessor.test_cfg.size=(96,96)'
PACKAGES = ('numpy', 'opencv-python-headless', 'onnxruntime')
ABSENT = ('torch', 'mmcv', 'mmengine', 'mmdet', 'mmseg', 'pycocotools', 'mmsparse')
#: largest fraction of pixels whose label may differ between ONNX Runtime and PyTorch: the graph's logits equal
#: PyTorch's to float32 rounding (~1e-6 relative), so argmax can flip only where two classes tie that closely
TIE_FRACTION = 1e-3


def photograph():
    from matplotlib.cbook import get_sample_data
    return str(get_sample_data('grace_hopper.jpg', asfileobj=False))


def run(cmd, **kwargs):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kwargs)


@pytest.fixture(scope='module')
def ort_python():
    """The Python of a venv with only numpy, OpenCV and onnxruntime (made with pip when missing)."""
    venv = Path(os.environ.get('MMSPARSE_ORT_VENV', Path.home() / '.cache' / 'mmsparse' / 'venv-ort'))
    python = venv / 'bin' / 'python'
    check = ['-c', 'import numpy, cv2, onnxruntime']
    if not python.is_file() or run([python, *check]).returncode != 0:
        made = run([sys.executable, '-m', 'venv', '--clear', venv])
        assert made.returncode == 0, f'python -m venv {venv} failed: {made.stderr[-2000:]}'
        pip = run([python, '-m', 'pip', 'install', '--disable-pip-version-check', '-q', *PACKAGES])
        if pip.returncode != 0 or run([python, *check]).returncode != 0:
            pytest.fail(f'pip could not install {", ".join(PACKAGES)} into {venv} (is the package index '
                        f'reachable?): {pip.stderr.strip()[-1500:]}')
    found = run([python, '-c', f'import importlib.util as u; print([m for m in {ABSENT} if u.find_spec(m)])'],
                cwd=venv)
    assert found.stdout.strip() == '[]', f'{venv} must not hold {found.stdout.strip()}'
    return python


@pytest.fixture(scope='module')
def segmentor(tmp_path_factory):
    """The demo UPerNet (seeded initial weights), its checkpoint (with the class names) and its ONNX file."""
    root = tmp_path_factory.mktemp('seg')
    cfg = load_config(SEG_DEMO, {'model.data_preprocessor.test_cfg': dict(size=(96, 96))})
    torch.manual_seed(0)
    model = build_model(cfg)
    meta = runtime_meta(cfg)
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=meta['classes'], palette=meta['palette']))),
               root / 'seg.pth')
    export_onnx(model, root / 'seg.onnx', (96, 96), 'segmentor', extra_meta=meta)
    return root


def test_segmentor_without_torch_equals_pytorch_path(ort_python, segmentor, tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    photo = cv2.imread(photograph())
    # 150 x 200 -> 72 x 96, padded to 96 x 96; 131 x 97 -> 96 x 71
    cv2.imwrite(str(images / 'tall.png'), cv2.resize(photo, (150, 200)))
    cv2.imwrite(str(images / 'wide.jpg'), cv2.resize(photo, (131, 97)))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    ref = run([sys.executable, 'tools/infer.py', SEG_DEMO, segmentor / 'seg.pth', images, '--out-dir',
               tmp_path / 'pt', '--cfg-options', PAD_96], cwd=REPO, env=env)
    assert ref.returncode == 0, ref.stderr[-3000:]
    bare = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    got = run([ort_python, REPO / 'tools/infer.py', segmentor / 'seg.onnx', images, '--out-dir', tmp_path / 'ort'],
              cwd=tmp_path, env=dict(bare, OMP_NUM_THREADS='1'))
    assert got.returncode == 0, got.stderr[-3000:]
    ref_json, got_json = (json.loads((tmp_path / d / 'results.json').read_text()) for d in ('pt', 'ort'))
    assert got_json['task'] == ref_json['task'] == 'mmseg' and got_json['classes'] == ref_json['classes']
    assert len(got_json['results']) == len(ref_json['results']) == 2
    for r, g in zip(ref_json['results'], got_json['results']):
        assert g['input'] == r['input'] and g['shape'] == r['shape']
        ref_map, got_map = (cv2.imread(e['pred'], cv2.IMREAD_UNCHANGED) for e in (r, g))
        assert got_map.shape == ref_map.shape == tuple(r['shape'])
        assert len(np.unique(ref_map)) >= 2  # the seeded model predicts several classes
        assert (got_map != ref_map).mean() <= TIE_FRACTION
        assert set(g['counts']) <= set(got_json['classes'])
        for name in set(g['counts']) | set(r['counts']):
            assert abs(g['counts'].get(name, 0) - r['counts'].get(name, 0)) <= TIE_FRACTION * ref_map.size
        ref_vis, got_vis = (cv2.imread(e['vis']).astype(int) for e in (r, g))
        assert got_vis.shape == ref_vis.shape
        # the same blend and the same class names where mmseg writes them
        assert (np.abs(got_vis - ref_vis).max(-1) > 1).mean() <= 10 * TIE_FRACTION


def test_onnx_path_imports_no_torch(segmentor, tmp_path):
    """In an environment that has torch, the ONNX path of tools/infer.py still does not import it."""
    code = ('import runpy, sys; sys.argv = ["infer.py", sys.argv[1], sys.argv[2], "--out-dir", sys.argv[3]]\n'
            'try:\n    runpy.run_path("tools/infer.py", run_name="__main__")\nexcept SystemExit:\n    pass\n'
            'print(sorted(m for m in ("torch", "mmengine", "mmcv", "mmsparse") if m in sys.modules))')
    image = tmp_path / 'img.png'
    cv2.imwrite(str(image), np.full((40, 30, 3), 128, np.uint8))
    proc = run([sys.executable, '-c', code, segmentor / 'seg.onnx', image, tmp_path / 'o'], cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('[]'), proc.stdout + proc.stderr[-2000:]
    assert (tmp_path / 'o' / 'results.json').is_file()


def reference_inputs(cfg, image):
    """mmdet's / mmseg's test pipeline (as the inferencers build it) and data preprocessor on ``image``."""
    from mmengine.dataset import Compose
    from mmengine.registry import MODELS, DefaultScope, init_default_scope
    scope = cfg.default_scope
    init_default_scope(scope)
    with DefaultScope.overwrite_default_scope(scope):
        steps = [s for s in cfg.test_dataloader.dataset.pipeline if 'LoadAnnotations' not in s['type']]
        data = Compose(steps)(dict(img_path=image, img_id=0))
        preprocessor = MODELS.build(cfg.model.data_preprocessor)
        out = preprocessor(dict(inputs=[data['inputs']], data_samples=[data['data_samples']]), False)
    return out['inputs'].numpy(), data['data_samples'].metainfo


@pytest.mark.parametrize('config,options', [
    (DET_DEMO, {}),
    (DET_DEMO, {'test_dataloader.dataset.pipeline.1': dict(type='Resize', scale=(100, 70), keep_ratio=False)}),
    (DET_DEMO, {'test_dataloader.dataset.pipeline.1': dict(type='Resize', scale_factor=0.37, keep_ratio=True),
                'model.data_preprocessor.pad_value': 3, 'model.data_preprocessor.bgr_to_rgb': False}),
    (SEG_DEMO, {}),
    (SEG_DEMO, {'model.data_preprocessor.test_cfg': dict(size_divisor=32), 'model.data_preprocessor.pad_val': 1}),
    (SEG_DEMO, {'model.data_preprocessor.test_cfg': dict(size=(96, 96))}),
])
def test_preprocessing_equals_mmdet_and_mmseg(config, options, tmp_path):
    cfg = load_config(config, options)
    spec = runtime_meta(cfg)['preprocess']
    for h, w in ((131, 97), (97, 173)):
        image = str(tmp_path / f'{h}x{w}.jpg')
        cv2.imwrite(image, cv2.resize(cv2.imread(photograph()), (w, h)))
        expected, meta = reference_inputs(cfg, image)
        got, info = preprocess(read_image(image), spec)
        assert got.shape == expected.shape, (got.shape, expected.shape, options)
        assert np.array_equal(got, expected), np.abs(got - expected).max()
        assert info.ori_shape == meta['ori_shape'] and info.img_shape == meta['img_shape']
        assert np.allclose(info.scale_factor, meta['scale_factor'], rtol=0, atol=1e-12)


def tiny_graph(path, outputs, meta):
    """An ONNX file whose outputs are the constant arrays ``outputs`` (name -> array) whatever the input."""
    import onnx
    from onnx import helper, numpy_helper
    nodes = [helper.make_node('Constant', [], [name], value=numpy_helper.from_array(np.asarray(value), name))
             for name, value in outputs.items()]
    graph = helper.make_graph(
        nodes, 'tiny', [helper.make_tensor_value_info('input', onnx.TensorProto.FLOAT, [1, 3, 'height', 'width'])],
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype), None)
         for name, value in outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)])
    model.ir_version = 9
    if meta is not None:
        onnx.helper.set_model_props(model, {'mmsparse': json.dumps(meta)})
    onnx.save(model, str(path))
    return str(path)


#: a 200 x 100 image scaled by 0.5 to 100 x 50, padded to 128 x 64 (multiples of 32)
DET_META = dict(kind='single_stage', dynamic=True, shape=[1, 3, 64, 128], outputs=['dets', 'labels'], task='mmdet',
                classes=['disc', 'square'], palette=[[255, 0, 0], [0, 255, 0]], postprocess=dict(mask_thr=0.5),
                preprocess=dict(mean=[0.] * 3, std=[1.] * 3, bgr_to_rgb=True, pad=dict(size_divisor=32, pad_val=0.),
                                resize=dict(scale=[100, 50], keep_ratio=True)), unsupported=[], layout='mmdeploy')
#: in the input's pixels; the second box leaves the image once rescaled; the third row is padding
DETS = np.array([[[10, 5, 60, 45, .9], [90, 40, 140, 70, .6], [0, 0, 0, 0, 0]]], np.float32)
LABELS = np.array([[1, 0, -1]], np.int64)
#: hand-computed: divided by the scale factor 0.5, clipped to the 200 x 100 image
BOXES = [[20., 10., 120., 90.], [180., 80., 200., 100.]]


def box_mask(box, shape=(100, 200)):
    mask = np.zeros(shape, np.uint8)
    x1, y1, x2, y2 = (int(v) for v in box)
    mask[y1:y2, x1:x2] = 1
    return mask


def det_results(tmp_path, graph_outputs, **meta):
    from mmsparse_ort import infer_images
    image = str(tmp_path / 'img.png')
    cv2.imwrite(image, np.full((100, 200, 3), 90, np.uint8))
    model = tiny_graph(tmp_path / 'det.onnx', graph_outputs, dict(DET_META, **meta))
    (entry, ) = infer_images(model, [image], str(tmp_path / 'out'), score_thr=0.5)
    report = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert report['results'] == [entry] and report['classes'] == ['disc', 'square']
    assert cv2.imread(entry['vis']).shape == (100, 200, 3)
    return entry


def test_mmdeploy_layout_with_full_size_masks(tmp_path):
    from pycocotools import mask as coco_mask
    masks = np.zeros((1, 3, 64, 128), np.float32)
    masks[0, 0, 5:45, 10:60] = 1.  # the first box, in the input's pixels
    entry = det_results(tmp_path, dict(dets=DETS, labels=LABELS, masks=masks), masks='full')
    assert entry['labels'] == [1, 0] and entry['label_names'] == ['square', 'disc']
    assert entry['bboxes'] == BOXES and np.allclose(entry['scores'], [.9, .6])
    # bilinear x2 of a 0/1 step, thresholded at 0.5: the edge lands on the box edge
    expected = [coco_mask.encode(np.asfortranarray(m)) for m in (box_mask(BOXES[0]), np.zeros((100, 200), np.uint8))]
    assert entry['masks'] == [dict(size=[100, 200], counts=e['counts'].decode()) for e in expected]


def test_roi_masks_and_efficientnms_layout(tmp_path):
    from pycocotools import mask as coco_mask
    outputs = dict(num_detections=np.array([[2]], np.int32), detection_boxes=DETS[:, :, :4].copy(),
                   detection_scores=DETS[:, :, 4].copy(), detection_classes=np.array([[1, 0, 0]], np.int32),
                   masks=np.ones((1, 3, 28, 28), np.float32))
    entry = det_results(tmp_path, outputs, layout='efficientnms', masks='roi',
                        outputs=['num_detections', 'detection_boxes', 'detection_scores', 'detection_classes'])
    assert entry['labels'] == [1, 0] and entry['bboxes'] == BOXES
    # a full RoI mask pasted into its box covers the pixels whose centres lie inside the box, but for the corners
    # of the first box: 28 samples over 100 x 80 pixels, the corner pixels sample 0.64 x 0.675 of the mask (< 0.5)
    first = box_mask(BOXES[0])
    first[[10, 10, 89, 89], [20, 119, 20, 119]] = 0
    # the second box (clipped to 20 x 20 pixels) is whole: 28 samples over 20 pixels put even its corners inside
    expected = [coco_mask.encode(np.asfortranarray(m)) for m in (first, box_mask(BOXES[1]))]
    assert entry['masks'] == [dict(size=[100, 200], counts=e['counts'].decode()) for e in expected]


def test_end_to_end_graph_gets_the_resized_size(tmp_path):
    """A graph with an ``img_shape`` input is fed the resized image's (H, W) within the padded input: the 200 x 100
    image of DET_META scales to 100 x 50 and pads to 128 x 64, so ``img_shape`` is [[50, 100]] (here echoed as
    the labels), not the padded [[64, 128]]."""
    import onnx
    from onnx import helper, numpy_helper

    from mmsparse_ort import OrtModel
    dets = np.array([[[0, 0, 4, 4, .9], [0, 0, 8, 8, .8]]], np.float32)
    graph = helper.make_graph(
        [helper.make_node('Constant', [], ['dets'], value=numpy_helper.from_array(dets, 'dets')),
         helper.make_node('Identity', ['img_shape'], ['labels'])], 'echo',
        [helper.make_tensor_value_info('input', onnx.TensorProto.FLOAT, [1, 3, 'height', 'width']),
         helper.make_tensor_value_info('img_shape', onnx.TensorProto.INT64, [1, 2])],
        [helper.make_tensor_value_info('dets', onnx.TensorProto.FLOAT, [1, 2, 5]),
         helper.make_tensor_value_info('labels', onnx.TensorProto.INT64, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)])
    model.ir_version = 9
    helper.set_model_props(model, {'mmsparse': json.dumps(dict(DET_META, inputs=['input', 'img_shape']))})
    onnx.save(model, str(tmp_path / 'echo.onnx'))
    ort_model = OrtModel(str(tmp_path / 'echo.onnx'))
    result = ort_model.predict(np.full((100, 200, 3), 90, np.uint8))
    assert result.labels.tolist() == [50, 100]
    assert ort_model.run(np.zeros((1, 3, 64, 128), np.float32))['labels'].tolist() == [[64, 128]]  # no padding


def test_paste_masks_equals_mmdet():
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    rng = np.random.default_rng(0)
    masks = rng.random((4, 28, 28)).astype(np.float32)
    boxes = np.array([[3.3, 7.8, 60.1, 40.6], [0., 0., 10.5, 90.], [50.2, 20.7, 99.9, 79.4], [20, 30, 21.5, 31]],
                     np.float32)
    got = paste_masks(masks, boxes, (80, 100), 0.5)
    for i in range(4):  # mmdet pastes one mask per chunk on the CPU, within one pixel around its box
        pasted, region = _do_paste_mask(torch.from_numpy(masks[i:i + 1, None]), torch.from_numpy(boxes[i:i + 1]),
                                        80, 100, skip_empty=True)
        expected = np.zeros((80, 100), bool)
        expected[region] = (pasted[0] >= 0.5).numpy()
        assert (got[i] != expected).sum() <= 2, (i, (got[i] != expected).sum())  # float rounding at 0.5 only


def test_rle_equals_pycocotools():
    from pycocotools import mask as coco_mask
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (7, 3), (40, 33), (300, 200)]
    for i, (h, w) in enumerate(shapes * 5):
        mask = rng.random((h, w)) < [0., 1., .5, .03, .97][i // len(shapes)]
        expected = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert encode_rle(mask) == dict(size=[h, w], counts=expected['counts'].decode())
    with pytest.raises(ValueError, match=r'mask must be \[H, W\], got shape \[2, 3, 4\]'):
        encode_rle(np.zeros((2, 3, 4)))


@pytest.mark.parametrize('meta,message', [
    (None, 'not exported by mmsparse'),
    (dict(kind='segmentor', outputs=['out'], dynamic=True, shape=[1, 3, 64, 64]), 'has no preprocessing'),
    (dict(DET_META, layout='raw'), 'a single-stage detector graph without detections'),
])
def test_files_it_cannot_run_are_named(meta, message, tmp_path, capsys):
    model = tiny_graph(tmp_path / 'm.onnx', dict(out=np.zeros((1, 2), np.float32)), meta)
    image = tmp_path / 'img.png'
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        load_tool('tools/infer.py').main([model, str(image), '--out-dir', str(tmp_path / 'o')])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and message in err and 'tools/deployment/export_onnx.py' in err, err


@pytest.mark.parametrize('order', ['model first', 'options first'])
def test_an_onnx_file_first_takes_the_torch_free_path(order, tmp_path, capsys):
    argv = [str(tmp_path / 'missing.onnx'), str(tmp_path / 'img.png')]
    options = ['--out-dir', str(tmp_path / 'o'), '--score-thr', '0.5']
    with pytest.raises(SystemExit) as exit_info:
        load_tool('tools/infer.py').main(argv + options if order == 'model first' else options + argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and 'infer.py MODEL.onnx' in err, err  # the torch-free parser's usage
