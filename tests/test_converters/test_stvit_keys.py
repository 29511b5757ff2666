"""STViT key maps: the authors' key lists, converter errors, the command-line converter."""
import argparse
import json
import subprocess
import sys

import pytest
import torch

from mmsparse.converters import UnmappedKeysError, convert, convert_checkpoint
from mmsparse.models import STViT
from mmsparse.testing import model_from_official
from tests.conftest import REPO, load_fixture
from tests.conftest import official_state_dict as key_list_state_dict


def official_state_dict(arch):
    """Zero tensors of the listed shapes (the frozen unfold/fold constants as the eye kernels they are)."""
    sd = key_list_state_dict(f'stvit_{arch}')
    for key in sd:
        if key.endswith('fold.weights'):
            sd[key] = torch.eye(9).view(9, 1, 3, 3)
    return sd


@pytest.mark.parametrize('arch, params', [('small', 23_943_264), ('base', 50_138_928), ('large', 93_287_664)])
def test_official_keys_convert_and_load_strictly(arch, params):
    sd = official_state_dict(arch)
    model = STViT(arch[0], out_norm_cfg=None)  # via the alias
    assert sum(p.numel() for p in model.parameters()) == params
    converted = convert('stvit', {'model': sd})
    assert not any(k.startswith(('proj.', 'norm.', 'head.')) for k in converted)
    assert not any('fold' in k for k in converted)
    model.load_state_dict(converted, strict=True)
    # classification-only and frozen keys are the only ones dropped
    dropped = [k for k in sd if k.startswith(('proj.', 'norm.', 'head.')) or k.endswith('fold.weights')]
    assert len(converted) == len(sd) - len(dropped)


def test_converter_errors():
    sd = official_state_dict('small')
    with pytest.raises(UnmappedKeysError, match='layers.9.mystery'):
        convert('stvit', {**sd, 'layers.9.mystery': torch.zeros(1)})
    bad = dict(sd)
    bad['layers.0.blocks.0.attn.fold.weights'] = torch.ones(9, 1, 3, 3)
    with pytest.raises(ValueError, match='eye'):
        convert('stvit', bad)
    with pytest.raises(ValueError, match='ResDWC'):
        convert('stvit', {**sd, 'layers.0.blocks.0.pos_embed.shortcut': torch.zeros(1, 1, 3, 3)})


def test_cli_round_trip_and_pretrained_init(tmp_path):
    fx = load_fixture('stvit_reduced_layerscale.pt')
    src, dst = tmp_path / 'official.pth', tmp_path / 'converted.pth'
    # the authors' training checkpoints pickle an argparse.Namespace next to the weights
    torch.save({'model': fx['state_dict'], 'args': argparse.Namespace(model='stvit')}, src)
    cfg = fx['config']
    backbone_args = dict(arch=dict(embed_dims=cfg['embed_dim'], depths=cfg['depths'], num_heads=cfg['num_heads']),
                         stoken_size=cfg['stoken_size'], layer_scale=cfg['layerscale'])
    proc = subprocess.run([sys.executable, 'tools/model_converters/official2mmsparse.py', 'stvit', str(src), str(dst),
                           '--backbone-args', json.dumps(backbone_args)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ckpt = torch.load(dst, weights_only=True)
    assert all(k.startswith('backbone.') for k in ckpt['state_dict'])

    reference = model_from_official('STViT', fx['config'], fx['state_dict'])
    cfg = fx['config']
    model = STViT(arch=dict(embed_dims=cfg['embed_dim'], depths=cfg['depths'], num_heads=cfg['num_heads']),
                  stoken_size=cfg['stoken_size'], layer_scale=cfg['layerscale'], out_norm_cfg=None,
                  impl='reference',  # as model_from_official builds: bit-identical outputs expected
                  init_cfg=dict(type='Pretrained', checkpoint=str(dst), prefix='backbone.'))
    model.init_weights()
    model.eval()
    x = fx['inputs'][1]
    with torch.no_grad():
        for ours, ref in zip(model(x), reference(x)):
            torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_convert_checkpoint_layout():
    sd = official_state_dict('small')
    out = convert_checkpoint('stvit', {'model': sd})
    model = STViT('small', out_norm_cfg=None)
    assert set(out['state_dict']) == {'backbone.' + k for k in model.state_dict()}
