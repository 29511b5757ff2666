"""``tools/infer.py --backend onnxruntime`` on an exported reduced RetinaNet: the same pictures and JSON as PyTorch."""
import argparse
import json
import os.path as osp

import torch

import onnxruntime  # noqa: E402,F401  (a dependency of the project: missing, the tests fail)
import onnxscript  # noqa: E402,F401

from mmsparse.deployment import build_model, export_onnx, load_config  # noqa: E402

from tests.conftest import load_tool  # noqa: E402

from .reduced import config_path, reduced_options  # noqa: E402

CONFIG = 'retinanet_cloformer_s_coco.py'
SMALL_TEST = """_base_ = '{base}'
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 120), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""


def photograph():
    from matplotlib.cbook import get_sample_data
    return str(get_sample_data('grace_hopper.jpg', asfileobj=False))


def infer(config, checkpoint, out_dir, backend, options):
    tool = load_tool('tools/infer.py')
    args = argparse.Namespace(config=config, checkpoint=checkpoint, inputs=[photograph()], out_dir=str(out_dir),
                              score_thr=0.0, device='cpu', cfg_options=options, backend=backend)
    tool.run(args)
    with open(osp.join(out_dir, 'results.json')) as f:
        return json.load(f)


def test_onnxruntime_backend_writes_what_pytorch_writes(tmp_path):
    config = tmp_path / 'small_test.py'
    config.write_text(SMALL_TEST.format(base=config_path(CONFIG)))
    options = reduced_options(CONFIG, 'cloformer')
    torch.manual_seed(0)
    model = build_model(load_config(str(config), options))
    checkpoint = str(tmp_path / 'weights.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), checkpoint)
    onnx_file = str(tmp_path / 'model.onnx')
    export_onnx(model, onnx_file, (128, 160), 'single_stage', dynamic=True)

    ref = infer(str(config), checkpoint, tmp_path / 'pt', 'pytorch', options)['results'][0]
    got = infer(str(config), onnx_file, tmp_path / 'ort', 'onnxruntime', options)['results'][0]
    assert osp.isfile(got['vis']) and osp.basename(got['vis']) == osp.basename(ref['vis'])
    assert len(ref['labels']) > 0 and got['labels'] == ref['labels']
    assert got['label_names'] == ref['label_names']
    boxes = torch.tensor(got['bboxes']) - torch.tensor(ref['bboxes'])
    assert boxes.abs().max().item() < 1e-3 * 512  # coordinates of the 512-pixel photograph
    assert max(abs(a - b) for a, b in zip(got['scores'], ref['scores'])) < 1e-4
