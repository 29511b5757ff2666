"""tools/deployment/export_onnx.py: its errors name the problem (the export itself: test_export_parity.py)."""
import pytest

from tests.conftest import load_tool

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
