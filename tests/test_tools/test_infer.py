"""tools/infer.py on the demo detector and segmentor after a few training iterations on the synthetic data, and
on a stock mmdet config that uses our backbone through ``custom_imports``; inputs are the real photograph that
matplotlib ships, a folder and a glob."""
import json
import os
import subprocess
import sys

import cv2
import pytest

from tests.conftest import REPO, ensure_synthetic_data

DET_DEMO = 'configs/demo/maskrcnn_demo_synthetic.py'
SEG_DEMO = 'configs/demo/upernet_demo_synthetic.py'
QUICK = ['train_cfg.val_interval=100', 'val_dataloader.dataset.indices=2', 'test_dataloader.dataset.indices=2']
STOCK = """_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='BiFormer', arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 1, 1]),
                  n_win=4, topks=(1, 2, 4, -2)),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=32),
    bbox_head=dict(num_classes=4, in_channels=32, feat_channels=32, stacked_convs=1))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 192), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""


def photograph():
    from matplotlib.cbook import get_sample_data
    return str(get_sample_data('grace_hopper.jpg', asfileobj=False))


def run_tool(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A demo detector and a demo segmentor trained for 2 iterations."""
    ensure_synthetic_data()
    root = tmp_path_factory.mktemp('ckpt')
    out = {}
    for name, config in (('det', DET_DEMO), ('seg', SEG_DEMO)):
        work = root / name
        ok(run_tool('tools/train.py', config, '--work-dir', work, '--cfg-options', 'train_cfg.max_iters=2',
                    'default_hooks.checkpoint.interval=2', *QUICK))
        out[name] = work / 'iter_2.pth'
        assert out[name].is_file()
    return out


def load_results(out_dir):
    with open(out_dir / 'results.json') as f:
        return json.load(f)


def test_detector_on_photograph_and_glob(checkpoints, tmp_path):
    """Catches: results.json without detections (``_det_entry`` in tools/infer.py returning every list emptied),
    on which the mask check used to be skipped."""
    out = tmp_path / 'det'
    pattern = os.path.join(REPO, 'data/synthetic_coco/val2017/00001[01].jpg')
    ok(run_tool('tools/infer.py', DET_DEMO, checkpoints['det'], photograph(), pattern, '--out-dir', out,
                '--score-thr', 0.01))
    report = load_results(out)
    assert report['task'] == 'mmdet' and report['classes'] == ['disc', 'square', 'triangle', 'ring']
    inputs = [r['input'] for r in report['results']]
    assert inputs[0] == photograph() and len(inputs) == 3
    for entry in report['results']:
        drawn = cv2.imread(entry['vis'])
        assert drawn is not None and drawn.shape == cv2.imread(entry['input']).shape
        assert len(entry['labels']) == len(entry['scores']) == len(entry['bboxes']) == len(entry['label_names'])
        assert all(len(b) == 4 for b in entry['bboxes'])
        # every image has detections (all scores are reported), so the mask check below always runs
        assert entry['labels'], f'no detection reported for {entry["input"]}'
        assert len(entry['masks']) == len(entry['labels'])  # Mask R-CNN: COCO RLE per instance
        assert all(mask['size'] == list(drawn.shape[:2]) for mask in entry['masks'])


def test_segmentor_on_folder(checkpoints, tmp_path):
    out = tmp_path / 'seg'
    folder = tmp_path / 'images'
    folder.mkdir()
    photo = cv2.imread(photograph())
    cv2.imwrite(str(folder / 'hopper.png'), cv2.resize(photo, (128, 150)))
    cv2.imwrite(str(folder / 'hopper_small.jpg'), cv2.resize(photo, (64, 75)))
    ok(run_tool('tools/infer.py', SEG_DEMO, checkpoints['seg'], folder, '--out-dir', out))
    report = load_results(out)
    assert report['task'] == 'mmseg' and len(report['results']) == 2
    for entry in report['results']:
        img = cv2.imread(entry['input'])
        assert cv2.imread(entry['vis']).shape == img.shape
        label_map = cv2.imread(entry['pred'], cv2.IMREAD_UNCHANGED)
        assert label_map.shape == tuple(entry['shape']) == img.shape[:2]
        assert sum(entry['counts'].values()) == label_map.size
        assert set(entry['counts']) <= set(report['classes'])


def test_stock_config_with_custom_imports(tmp_path):
    """A stock mmdet RetinaNet config whose backbone is our BiFormer by its plain name."""
    import torch
    from mmdet.apis import init_detector
    config = tmp_path / 'retinanet_biformer_stock.py'
    config.write_text(STOCK)
    model = init_detector(str(config), device='cpu')
    ckpt = tmp_path / 'retinanet.pth'
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=('disc', 'square', 'triangle', 'ring')))), ckpt)
    out = tmp_path / 'out'
    ok(run_tool('tools/infer.py', config, ckpt, photograph(), '--out-dir', out, '--score-thr', 0.0))
    (entry,) = load_results(out)['results']
    assert cv2.imread(entry['vis']).shape == cv2.imread(photograph()).shape
    assert 'masks' not in entry and len(entry['bboxes']) == len(entry['scores']) > 0


def test_bad_inputs(checkpoints, tmp_path):
    missing = tmp_path / 'nope.jpg'
    proc = run_tool('tools/infer.py', DET_DEMO, checkpoints['det'], missing, '--out-dir', tmp_path / 'o')
    assert proc.returncode == 2 and 'no such image' in proc.stderr and 'nope.jpg' in proc.stderr
    empty = tmp_path / 'empty'
    empty.mkdir()
    proc = run_tool('tools/infer.py', DET_DEMO, checkpoints['det'], empty, '--out-dir', tmp_path / 'o')
    assert proc.returncode == 2 and 'holds no image' in proc.stderr
    proc = run_tool('tools/infer.py', DET_DEMO, checkpoints['det'], str(tmp_path / '*.png'), '--out-dir',
                    tmp_path / 'o')
    assert proc.returncode == 2 and 'matches no file' in proc.stderr
    proc = run_tool('tools/infer.py', DET_DEMO, tmp_path / 'missing.pth', photograph(), '--out-dir', tmp_path / 'o')
    assert proc.returncode == 2 and 'checkpoint: no such file' in proc.stderr
    proc = run_tool('tools/infer.py', 'configs/demo/none.py', checkpoints['det'], photograph())
    assert proc.returncode == 2 and 'config: no such file' in proc.stderr


def test_onnx_mask_rcnn_runs_the_checkpoints_heads(checkpoints, tmp_path):
    """A Mask R-CNN graph stops at the neck; the RPN and RoI heads run in PyTorch. Without ``--weights`` the ONNX
    backend must refuse (it used to run randomly initialised heads: confident, wrong detections); with it, the
    detections are PyTorch's."""
    onnx_file = tmp_path / 'maskrcnn.onnx'
    # a 256 x 192 validation image: the test pipeline keeps its size, padded it is exactly the export shape
    image = os.path.join(REPO, 'data/demo_coco/val2017/000010.jpg')
    assert cv2.imread(image).shape[:2] == (192, 256)
    ok(run_tool('tools/deployment/export_onnx.py', DET_DEMO, '--checkpoint', checkpoints['det'], '--out', onnx_file,
                '--shape', 192, 256, '--outputs', 'raw'))
    proc = run_tool('tools/infer.py', DET_DEMO, onnx_file, image, '--backend', 'onnxruntime', '--out-dir',
                    tmp_path / 'refused')
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert 'rpn_head' in proc.stderr and 'roi_head' in proc.stderr and '--weights CHECKPOINT' in proc.stderr
    assert not (tmp_path / 'refused' / 'results.json').exists()

    ok(run_tool('tools/infer.py', DET_DEMO, checkpoints['det'], image, '--out-dir', tmp_path / 'pt',
                '--score-thr', 0.0))
    ok(run_tool('tools/infer.py', DET_DEMO, onnx_file, image, '--backend', 'onnxruntime', '--weights',
                checkpoints['det'], '--out-dir', tmp_path / 'ort', '--score-thr', 0.0))
    (ref,) = load_results(tmp_path / 'pt')['results']
    (got,) = load_results(tmp_path / 'ort')['results']
    assert len(ref['labels']) > 0 and len(got['labels']) == len(ref['labels'])
    # as sets: tied scores of a barely trained head may swap places
    ref_rows = sorted(zip(ref['labels'], ref['scores'], ref['bboxes']), key=lambda r: (r[0], -r[1], r[2]))
    got_rows = sorted(zip(got['labels'], got['scores'], got['bboxes']), key=lambda r: (r[0], -r[1], r[2]))
    for (l_ref, s_ref, b_ref), (l_got, s_got, b_got) in zip(ref_rows, got_rows):
        assert l_got == l_ref
        assert abs(s_got - s_ref) < 1e-4
        assert max(abs(a - b) for a, b in zip(b_got, b_ref)) < 1e-3 * 256
    assert got['label_names'] == [load_results(tmp_path / 'ort')['classes'][i] for i in got['labels']]
    assert load_results(tmp_path / 'ort')['classes'] == ['disc', 'square', 'triangle', 'ring']


def test_onnx_backend_refuses_end_to_end_graphs(tmp_path):
    """A graph with the detections in it (the exporter's default for detectors) is run by ``tools/infer.py
    MODEL.onnx``; ``--backend onnxruntime`` (mmdet's post-processing after the graph) refuses it in one line."""
    import onnx
    from onnx import helper
    # an end-to-end graph's inputs, outputs and metadata; the refusal reads the metadata only
    graph = helper.make_graph(
        [helper.make_node('Identity', ['img_shape'], ['labels'])], 'e2e',
        [helper.make_tensor_value_info('input', onnx.TensorProto.FLOAT, [1, 3, 192, 256]),
         helper.make_tensor_value_info('img_shape', onnx.TensorProto.INT64, [1, 2])],
        [helper.make_tensor_value_info('labels', onnx.TensorProto.INT64, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)])
    model.ir_version = 9
    helper.set_model_props(model, {'mmsparse': json.dumps(dict(
        kind='two_stage', layout='mmdeploy', inputs=['input', 'img_shape'], outputs=['labels'], dynamic=False,
        shape=[1, 3, 192, 256]))})
    onnx_file = tmp_path / 'e2e.onnx'
    onnx.save(model, str(onnx_file))
    proc = run_tool('tools/infer.py', DET_DEMO, onnx_file, photograph(), '--backend', 'onnxruntime', '--out-dir',
                    tmp_path / 'o')
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert "layout 'mmdeploy'" in message and 'run it with tools/infer.py MODEL.onnx INPUT, or export with ' \
        '--outputs raw for --backend onnxruntime' in message, proc.stderr
    assert not (tmp_path / 'o' / 'results.json').exists()


def test_onnx_segmentor_names_the_configs_classes(checkpoints, tmp_path):
    """An ONNX segmentor run without ``--weights`` (its graph holds every weight) reports the config's classes,
    not the inferencer's default dataset's (it used to say Cityscapes' names for the demo UPerNet)."""
    onnx_file = tmp_path / 'upernet.onnx'
    image = os.path.join(REPO, 'data/demo_ade20k/ADEChallengeData2016/images/validation/ADE_valid_00000000.jpg')
    assert cv2.imread(image).shape[:2] == (160, 160)  # the test pipeline scales it to 96 x 96, the export size
    ok(run_tool('tools/deployment/export_onnx.py', SEG_DEMO, '--checkpoint', checkpoints['seg'], '--out', onnx_file,
                '--shape', 96, 96))
    ok(run_tool('tools/infer.py', SEG_DEMO, onnx_file, image, '--backend', 'onnxruntime', '--out-dir', tmp_path / 'o'))
    report = load_results(tmp_path / 'o')
    assert report['classes'] == ['background', 'disc', 'square', 'triangle', 'ring']
    (entry,) = report['results']
    assert set(entry['counts']) <= set(report['classes'])
