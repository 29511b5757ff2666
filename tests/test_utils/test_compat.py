"""The torch-version shims of ``mmsparse.utils.compat``, exercised on the installed torch and, where a branch
depends on the version, on the older branch too (forced by patching ``TORCH_VERSION`` / availability)."""
import argparse
import os
import pickle

import numpy as np
import pytest
import torch

from mmsparse.ops.routing_attention import BiLevelRoutingAttention, check_bra_impl
from mmsparse.utils import compat
from mmsparse.utils.checkpoint import CheckpointFileError, load_checkpoint_file


class _Payload:
    """Pickles as a call of ``os.getcwd``: a global no allowlist names."""

    def __reduce__(self):
        return os.getcwd, ()


@pytest.mark.parametrize('api', ['installed', 'torch<2.4 path'])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_autocast_state_follows_the_region(api, monkeypatch):
    """Catches a shim that reads another device's state or ignores the region (e.g. cuda's on cpu); the second
    case takes the branch of torch < 2.4, the per-device functions torch 2.1 has."""
    if api != 'installed':
        monkeypatch.setattr(compat, '_DEVICE_GENERIC_AUTOCAST', False)
    assert compat.autocast_state('cpu')[0] is False
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert compat.autocast_state('cpu') == (True, torch.bfloat16)
        assert compat.autocast_state('cuda')[0] is False
    if api != 'installed':
        with pytest.raises(ValueError, match=r"device_type='mps'.*\['cpu', 'cuda', 'xpu'\]"):
            compat.autocast_state('mps')


def test_version_tuple_reads_local_and_prerelease_versions():
    assert compat._version_tuple('2.1.2+cu121') == (2, 1)
    assert compat._version_tuple('2.13.0.dev20260101') == (2, 13)
    assert compat.TORCH_VERSION >= compat.MIN_TORCH


@pytest.mark.parametrize('version', [compat.TORCH_VERSION, (2, 1)], ids=['installed', 'torch<2.6 path'])
def test_load_restricted_allows_only_the_listed_globals(version, tmp_path, monkeypatch):
    """Both branches load tensors plus a listed class and refuse an unlisted global; the pre-2.6 branch is the
    one torch 2.1 takes (catches an unpickler that resolves any global, or one that refuses the listed ones)."""
    monkeypatch.setattr(compat, 'TORCH_VERSION', version)
    good = tmp_path / 'good.pth'
    torch.save({'model': {'w': torch.arange(4.)}, 'args': argparse.Namespace(lr=0.1)}, good)
    out = compat.load_restricted(good, extra_globals=[argparse.Namespace])
    assert torch.equal(out['model']['w'], torch.arange(4.)) and out['args'].lr == 0.1

    with pytest.raises(Exception, match='Namespace'):
        compat.load_restricted(good)  # Namespace not listed this time
    bad = tmp_path / 'bad.pth'
    torch.save({'w': torch.ones(1), 'x': _Payload()}, bad)
    with pytest.raises(Exception, match='getcwd'):
        compat.load_restricted(bad, extra_globals=[argparse.Namespace])


def test_checkpoint_files_load_on_the_pre_2_6_path(tmp_path, monkeypatch):
    """What torch 2.1 users hit: a converted state dict and an authors'-style checkpoint with ``args`` load,
    numpy values too (under numpy < 2 their bytes pickle as ``_codecs.encode``, which the unpickler must allow: the
    torch 2.1 lane catches dropping it); a file pickling code is still refused with the readable-checkpoint error."""
    monkeypatch.setattr(compat, 'TORCH_VERSION', (2, 1))
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': {'w': torch.zeros(2)}, 'args': argparse.Namespace(model='biformer_tiny'),
                'meta': {'loss': np.float64(0.5), 'seen': np.arange(3)}}, path)  # numpy as mmengine's runner saves
    ckpt = load_checkpoint_file(path)
    assert ckpt['args'].model == 'biformer_tiny' and ckpt['meta']['loss'] == 0.5
    assert ckpt['meta']['seen'].tolist() == [0, 1, 2]
    torch.save(_Payload(), path)
    with pytest.raises(CheckpointFileError, match='not a readable checkpoint'):
        load_checkpoint_file(path)
    with open(path, 'wb') as f:
        pickle.dump({'w': 1}, f)  # a plain pickle, not torch.save: also refused, naming the file
    with pytest.raises(CheckpointFileError, match='ckpt.pth'):
        load_checkpoint_file(path)


def test_flex_without_flexattention_is_a_clear_error(monkeypatch):
    """On a torch without FlexAttention (< 2.5) impl='flex' fails at construction, naming the alternatives."""
    monkeypatch.setattr(compat, 'flex_attention_available', lambda: (False, 'torch 2.1.2 has no FlexAttention'))
    msg = r"BiLevelRoutingAttention: impl='flex' needs FlexAttention \(torch >= 2.5\).*impl='fast'"
    with pytest.raises(RuntimeError, match=msg):
        BiLevelRoutingAttention(64, num_heads=2, n_win=2, topk=1, impl='flex')
    assert check_bra_impl('fast', 'x') == 'fast'


def test_loading_a_checkpoint_keeps_mmengine_objects_allowlisted(tmp_path):
    """``load_checkpoint_file`` used to wrap ``torch.load`` in ``torch.serialization.safe_globals``, whose exit
    removes what it was handed, HistoryBuffer included: afterwards mmengine's own ``torch.load`` of a Runner
    checkpoint (``--resume`` after a pretrained backbone was loaded in the same process) failed."""
    from mmengine.logging import HistoryBuffer

    import mmsparse  # noqa: F401  (allowlists mmengine's objects)
    buf = HistoryBuffer()
    buf.update(2.0)
    runner_ckpt = tmp_path / 'iter_1.pth'
    torch.save({'message_hub': {'log': buf}, 'meta': {'seed': np.int64(3)}}, runner_ckpt)
    pretrained = tmp_path / 'backbone.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}}, pretrained)
    load_checkpoint_file(pretrained)
    loaded = torch.load(runner_ckpt, map_location='cpu')  # mmengine 0.10.7 calls it like this
    assert loaded['message_hub']['log'].mean() == 2.0 and loaded['meta']['seed'] == 3
