"""BiFormer key maps: the authors' key lists, unknown keys, the command-line converter, dense checkpoints."""
import argparse
import re
import json
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from mmsparse.converters import UnmappedKeysError, convert, convert_checkpoint
from mmsparse.models.backbones import BiFormer
from mmsparse.testing import model_from_official
from tests.conftest import BIFORMER_REDUCED as REDUCED
from tests.conftest import REPO, assert_close_to_reference, load_fixture, num_elements, official_state_dict


@pytest.mark.parametrize('name, arch, learnable', [
    ('biformer_tiny', 'tiny', 13_142_760), ('biformer_small', 'small', 25_536_232),
    ('biformer_base', 'base', 56_804_968)])
def test_official_key_lists_convert_and_load_strictly(name, arch, learnable):
    official = official_state_dict(name, device='meta')
    assert len(official) == (264 if arch == 'tiny' else 518)
    buffers = re.compile(r'running_(mean|var)|num_batches_tracked')
    assert sum(v.numel() for k, v in official.items() if not buffers.search(k)) == learnable
    ours = convert('biformer', {'model': official})  # wrapped like the released files
    assert not any(k.startswith(('head.', 'norm.')) for k in ours)
    with torch.device('meta'):
        model = BiFormer(arch, out_norm_cfg=None)
    model.load_state_dict(ours, strict=True, assign=True)
    head_and_norm = sum(v.numel() for k, v in official.items() if k.startswith(('head.', 'norm.'))
                        and not buffers.search(k))
    assert num_elements(model) == learnable - head_and_norm
    assert num_elements(model, with_buffers=True) == sum(v.numel() for v in ours.values())


def test_converter_rejects_unknown_keys():
    sd = OrderedDict([('downsample_layers.0.0.weight', torch.zeros(32, 3, 3, 3)),
                      ('stages.0.0.attn.kv_down.weight', torch.zeros(1)), ('pre_logits.fc.weight', torch.zeros(1))])
    with pytest.raises(UnmappedKeysError, match=r'2 key\(s\).*kv_down.*pre_logits'):
        convert('biformer', sd)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(kv_downsample_mode='ada_avgpool'), NotImplementedError, 'kv_downsample_mode'),
    (dict(layer_scale_init_value=1e-6), NotImplementedError, 'layer_scale_init_value'),
    (dict(bogus=1), ValueError, r"BiFormer: unsupported constructor argument\(s\) \['bogus'\]"),
])
def test_model_from_official_rejects_unsupported_options(kwargs, error, match):
    cfg = dict(depth=[1, 1, 1, 1], embed_dim=[32, 64, 128, 256], qk_dims=[32, 64, 128, 256], head_dim=32,
               kv_downsample_mode='identity', topks=[1, 2, 4, -2], n_win=2, mlp_ratios=[3] * 4)
    cfg.update(kwargs)
    with pytest.raises(error, match=match):
        model_from_official('BiFormer', cfg)


def test_cli_round_trip_and_pretrained_init(tmp_path):
    fx = load_fixture('biformer_reduced_cls_autopad.pt')
    src, dst = tmp_path / 'biformer_official.pth', tmp_path / 'biformer_mmsparse.pth'
    # the authors' training checkpoints also pickle argparse args next to the weights
    torch.save({'model': fx['state_dict'], 'args': argparse.Namespace(lr=5e-4), 'epoch': 299}, src)
    res = subprocess.run([sys.executable, 'tools/model_converters/official2mmsparse.py', 'biformer', str(src),
                          str(dst), '--backbone-args', json.dumps(REDUCED)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    ckpt = torch.load(dst, weights_only=True)
    assert all(k.startswith('backbone.') for k in ckpt['state_dict'])

    ref = model_from_official('BiFormer', fx['config'], fx['state_dict'])
    # the reference BRA, as model_from_official builds, so the outputs must be bit-identical
    model = BiFormer(**REDUCED, out_norm_cfg=None, impl='reference',
                     init_cfg=dict(type='Pretrained', checkpoint=str(dst), prefix='backbone.'))
    model.init_weights()
    model.eval()
    x = fx['inputs'][1]
    with torch.no_grad():
        for ours, theirs in zip(model(x), ref(x)):
            assert torch.equal(ours, theirs)


def test_pretrained_init_accepts_raw_official_file(tmp_path):
    fx = load_fixture('biformer_reduced_cls_autopad.pt')
    src = tmp_path / 'raw.pth'
    torch.save({'model': fx['state_dict']}, src)
    model = BiFormer(**REDUCED, init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    model.init_weights()
    ref = model_from_official('BiFormer', fx['config'], fx['state_dict'])
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # the output norms are not in the classification file: they keep their unit init
    assert torch.equal(model.norm0.weight, torch.ones(32))
    # anything else missing is an error that lists it, unless a partial load is asked for
    del fx['state_dict']['stages.3.0.mlp.3.bias']
    torch.save({'model': fx['state_dict']}, src)
    with pytest.raises(RuntimeError, match=r'1 missing key\(s\): stages.3.blocks.0.mlp.fc2.bias.*allow_partial'):
        BiFormer(**REDUCED, init_cfg=dict(type='Pretrained', checkpoint=str(src))).init_weights()
    partial = BiFormer(**REDUCED, init_cfg=[dict(type='Pretrained', checkpoint=str(src), allow_partial=True)])
    partial.init_weights()
    assert torch.equal(partial.stages[0].blocks[0].attn.qkv.weight, ref.stages[0].blocks[0].attn.qkv.weight)


def test_dense_checkpoint_conversion():
    fx = load_fixture('biformer_mm_reduced_autopad.pt')
    heads = OrderedDict([
        ('neck.lateral_convs.0.conv.weight', torch.randn(256, 32, 1, 1)),
        ('neck.fpn_convs.0.conv.bias', torch.randn(256)),
        ('rpn_head.rpn_conv.weight', torch.randn(256, 256, 3, 3)),
        ('roi_head.bbox_head.fc_cls.weight', torch.randn(81, 1024)),
        ('roi_head.mask_head.conv_logits.bias', torch.randn(80)),
    ])
    sd = OrderedDict(('backbone.' + k, v) for k, v in fx['state_dict'].items())
    sd.update(heads)
    out = convert_checkpoint('biformer', {'state_dict': sd, 'meta': {'epoch': 12}})['state_dict']
    for k, v in heads.items():
        assert torch.equal(out[k], v)
    backbone = OrderedDict((k[len('backbone.'):], v) for k, v in out.items() if k.startswith('backbone.'))
    assert 'norm3.weight' in backbone and torch.equal(backbone['norm3.weight'],
                                                      fx['state_dict']['extra_norms.3.weight'])
    model = BiFormer(**REDUCED)
    model.load_state_dict(backbone, strict=True)
    model.eval()
    with torch.no_grad():
        outs = model(fx['inputs'][0])
    for s, (ours, theirs) in enumerate(zip(outs, fx['outputs'][0]['dense_outs'])):
        assert_close_to_reference(ours, theirs, f'dense_outs[{s}]')
    with pytest.raises(UnmappedKeysError, match='teacher.fc.weight'):
        convert_checkpoint('biformer', {'state_dict': {**sd, 'teacher.fc.weight': torch.zeros(1)}})
