"""tools/model_converters/official2mmsparse.py as users run it: a complete official file converts and loads; a
fragment, an empty file and a non-checkpoint are refused in one line before anything is written; a missing output
folder is created and named."""
import os
import subprocess
import sys
from collections import OrderedDict

import torch

from mmsparse.models.backbones import CloFormer
from mmsparse.utils.checkpoint import load_pretrained
from tests.conftest import REPO, key_list_path

TOOL = 'tools/model_converters/official2mmsparse.py'


def official_cloformer_xxs():
    """A state dict with the authors' CloFormer-XXS keys and shapes (random values)."""
    gen = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    for line in key_list_path('cloformer_xxs').read_text().splitlines():
        key, shape = line.split('\t')
        sd[key] = torch.randn(eval(shape), generator=gen)  # shapes are written as Python tuples
    return sd


def convert(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)


def test_complete_file_converts_into_a_missing_folder_and_loads(tmp_path):
    src = tmp_path / 'cloformer_xxs.pth'
    torch.save({'model': official_cloformer_xxs()}, src)
    dst = tmp_path / 'new' / 'folder' / 'xxs_mmsparse.pth'
    proc = convert('cloformer', src, dst)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'creating the output folder {dst.parent}' in proc.stdout
    assert "(cloformer: xxs)" in proc.stdout
    model = CloFormer(arch='xxs')
    missing, unexpected, mismatched = load_pretrained(model, str(dst), prefix='backbone.')
    assert not missing and not unexpected and not mismatched


def test_fragment_is_refused_naming_the_keys(tmp_path):
    sd = official_cloformer_xxs()
    first = next(iter(sd))
    src = tmp_path / 'one_key.pth'
    torch.save({'model': {first: sd[first]}}, src)
    dst = tmp_path / 'out.pth'
    proc = convert('cloformer', src, dst)
    assert proc.returncode == 2 and not dst.exists()
    assert 'not a whole cloformer backbone' in proc.stderr and 'missing key(s)' in proc.stderr
    assert 'Traceback' not in proc.stderr
    # one unexpected key beside a complete set is named as such
    sd['extra.weight'] = torch.zeros(3)
    torch.save({'model': sd}, src)
    proc = convert('cloformer', src, dst)
    assert proc.returncode == 2 and not dst.exists() and 'extra.weight' in proc.stderr


def test_empty_and_foreign_files_fail_in_one_line(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint\n')
    for src in (empty, text):
        proc = convert('biformer', src, tmp_path / 'out.pth')
        assert proc.returncode == 2, proc.stderr
        assert 'Traceback' not in proc.stderr and 'is not a readable checkpoint' in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 3  # usage line(s) and the one error line
    proc = convert('biformer', tmp_path / 'missing.pth', tmp_path / 'out.pth')
    assert proc.returncode == 2 and 'src: no such file' in proc.stderr
