"""``benchmark.py --end2end``: a reduced CloFormer RetinaNet, image file in, detections out, eager vs ONNX Runtime."""
import json

import pytest

from tests.conftest import load_tool
from tests.test_deployment.reduced import config_path, reduced_options
from tests.test_deployment.test_infer_onnx import photograph

CONFIG = 'retinanet_cloformer_s_coco.py'
INPUT_SIZE = (64, 96)


def test_end2end_record_and_profile(tmp_path, capsys):
    """The JSON record has both paths' timings, their ratio, threads, the same detection count from both (the
    reduced head keeps every candidate: 20 detections) and, with --profile, ONNX Runtime's top node types."""
    tool = load_tool('tools/analysis_tools/benchmark.py')
    out = tmp_path / 'e2e.json'
    args = ['--end2end', config_path(CONFIG), '--image', photograph(), '--input-size', *map(str, INPUT_SIZE),
            '--threads', '1', '--warmup', '1', '--repeats', '2', '--profile', '--work-dir', str(tmp_path),
            '--out', str(out)]
    parsed = tool.parse_args(args)
    parsed.cfg_options = reduced_options(CONFIG, 'cloformer')  # the --cfg-options of a reduced model
    record = tool.run(parsed)
    assert json.load(open(out)) == json.loads(json.dumps(record))
    assert record['input_size'] == list(INPUT_SIZE) and record['image_size'] == [600, 512]
    assert record['threads'] == dict(torch=1, onnxruntime=1)
    for name in ('pytorch', 'onnxruntime'):
        r = record['results'][name]
        assert len(r['times_s']) == 2 and 0 < r['min_s'] <= r['median_s'] <= r['max_s']
    assert record['ratio_eager_over_ort'] == pytest.approx(
        record['results']['pytorch']['median_s'] / record['results']['onnxruntime']['median_s'])
    assert record['detections']['pytorch'] == record['detections']['onnxruntime'] == 20
    profile = record['profile']
    ops = [row['name'] for row in profile['by_op_type']]
    assert 'Conv' in ops and len(ops) == len(profile['by_node']) == 15
    per_node = [row['ms_per_run'] for row in profile['by_node']]
    assert per_node == sorted(per_node, reverse=True) and per_node[0] > 0  # the most time first
    assert sum(row['fraction'] for row in profile['by_op_type']) <= 1 + 1e-6
    printed = capsys.readouterr().out
    assert 'eager / ONNX Runtime (medians)' in printed and 'top 15 by node type' in printed


def test_end2end_bad_input_size_is_named(tmp_path):
    from mmsparse.benchmark.end2end import fixed_size_config
    with pytest.raises(ValueError, match='--input-size 64 90: height and width must be multiples of 32'):
        fixed_size_config(config_path(CONFIG), (64, 90))
    cfg = fixed_size_config(config_path(CONFIG), (64, 96))
    resize = [s for s in cfg.test_dataloader.dataset.pipeline if s['type'] == 'Resize']
    assert resize == [dict(type='Resize', scale=(96, 64), keep_ratio=False)]
