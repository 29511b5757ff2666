"""CloFormer key maps: the authors' key lists, unknown keys, the command-line converter."""
import json
import subprocess
import sys

import pytest
import torch

from mmsparse.converters import UnmappedKeysError, convert
from mmsparse.models import CloFormer
from mmsparse.testing import model_from_official
from tests.conftest import CLOFORMER_REDUCED as REDUCED
from tests.conftest import REPO, assert_close_to_reference, load_fixture, official_state_dict


@pytest.mark.parametrize('variant', ['xxs', 'xs', 's'])
def test_convert_official_key_lists(variant):
    sd = official_state_dict(f'cloformer_{variant}')
    assert len(sd) == 351
    converted = convert('cloformer', {'model': sd})
    assert not any(k.startswith(('norm.', 'head.')) for k in converted)
    assert len(converted) == 351 - 4
    CloFormer(variant, out_norm_cfg=None).load_state_dict(converted, strict=True)
    missing, unexpected = CloFormer(variant).load_state_dict(converted, strict=False)
    assert not unexpected and sorted(missing) == sorted(f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias'))


def test_convert_rejects_unknown_keys():
    sd = {'patch_embed.conv5.weight': torch.zeros(1), 'layers.0.blocks.0.attn.rel_pos.weight': torch.zeros(1),
          'head.weight': torch.zeros(1)}
    with pytest.raises(UnmappedKeysError, match='rel_pos') as info:
        convert('cloformer', sd)
    assert info.value.keys == ['layers.0.blocks.0.attn.rel_pos.weight']


def test_model_from_official_attention_rejects_backbone_keys():
    fx = load_fixture('cloformer_efficient_attention_d64.pt')
    sd = dict(fx['state_dict'], **{'norm1.weight': torch.zeros(64)})
    with pytest.raises(UnmappedKeysError, match='norm1.weight'):
        model_from_official('EfficientAttention', fx['config'], sd)


def test_cli_round_trip_and_pretrained_init(tmp_path):
    fx = load_fixture('cloformer_reduced.pt')
    src, dst = tmp_path / 'official.pth', tmp_path / 'converted.pth'
    torch.save({'model': fx['state_dict'], 'epoch': 300}, src)
    proc = subprocess.run([sys.executable, 'tools/model_converters/official2mmsparse.py', 'cloformer',
                           str(src), str(dst), '--backbone-args', json.dumps(dict(arch=REDUCED))],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = torch.load(dst, weights_only=True)
    assert all(k.startswith('backbone.') for k in saved['state_dict'])
    x, ref = fx['inputs'][0], fx['outputs'][0]
    for checkpoint, prefix in ((str(dst), 'backbone.'), (str(src), None)):  # converted, and raw official
        model = CloFormer(REDUCED, out_norm_cfg=None,
                          init_cfg=dict(type='Pretrained', checkpoint=checkpoint, prefix=prefix))
        model.init_weights()
        model.eval()
        with torch.no_grad():
            outs = model(x)
        # the fixture's dense outputs: taps inside the stride-2 blocks of stages 1-3, then stage 4's output
        for s, (ours, exp) in enumerate(zip(outs, list(ref['dense_taps']) + [ref['stages'][3]])):
            assert_close_to_reference(ours, exp, f'{checkpoint} output {s}')
