"""tools/deployment/export_onnx.py: its errors name the problem (the export itself: test_export_parity.py)."""
import pytest

from tests.conftest import REPO, load_tool

from .reduced import config_path

tool = load_tool('tools/deployment/export_onnx.py')


def run(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        tool.main(list(argv))
    return exc.value.code, capsys.readouterr().err


def test_missing_config(capsys, tmp_path):
    code, err = run(capsys, str(tmp_path / 'none.py'), '--out', str(tmp_path / 'm.onnx'), '--shape', '64', '64')
    assert code == 2 and 'config: no such file' in err


def test_missing_output_folder(capsys, tmp_path):
    code, err = run(capsys, config_path('semfpn_stvit_s_ade20k.py'), '--out', str(tmp_path / 'no' / 'm.onnx'),
                    '--shape', '64', '64')
    assert code == 2 and '--out: folder' in err


def test_missing_checkpoint(capsys, tmp_path):
    code, err = run(capsys, config_path('semfpn_stvit_s_ade20k.py'), '--checkpoint', str(tmp_path / 'w.pth'),
                    '--out', str(tmp_path / 'm.onnx'), '--shape', '64', '64')
    assert code == 2 and 'checkpoint: no such file' in err


def test_shape_out_of_range(capsys, tmp_path):
    code, err = run(capsys, config_path('semfpn_stvit_s_ade20k.py'), '--out', str(tmp_path / 'm.onnx'), '--shape',
                    '16', '64', '--backbone-only')
    assert code == 2 and '--shape 16 64' in err


def test_verify_sizes_include_one_no_grid_divides():
    assert tool.verify_sizes((64, 64), False) == [(64, 64)]
    (h, w), (h2, w2) = tool.verify_sizes((512, 512), True)
    assert (h, w) == (512, 512) and h2 % 32 and w2 % 32


def test_dynamic_example_with_one_token_regions_is_one_line(capsys, tmp_path):
    """Full-size BiFormer-S (n_win=16) at 256 x 256: its stride-16 map is 16 x 16, one token a region, a size the
    tracer would fix; the tool refuses before tracing, in one line naming the size that works, and writes nothing."""
    out = tmp_path / 'm.onnx'
    config = str(REPO / 'configs/biformer/maskrcnn_biformer_s_coco.py')
    code, err = run(capsys, config, '--backbone-only', '--out', str(out), '--shape', '256', '256', '--dynamic')
    message = err.strip().splitlines()[-1]
    assert code == 2 and not out.exists()
    assert 'regions of model.backbone.stages.2.blocks.0.attn are 1x1 tokens' in message
    assert '--shape 288 288 or larger' in message
    assert 'Traceback' not in err and 'ConstraintViolation' not in err
