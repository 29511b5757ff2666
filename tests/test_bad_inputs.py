"""The catalogue of bad inputs: each fails at once with an error that names the argument and what is accepted.

One row per bad input, across operators, backbones, plug-ins, necks, converters, checkpoint files and tools:
(id, call, error type, text the message must contain). A row whose check is removed fails here, because the
error then comes from deep inside PyTorch (another type or text) or does not come at all.
"""
import contextlib
import io

import pytest
import torch
from mmengine.config import ConfigDict

from mmsparse.apis import check_pretrained, check_torchvision, task_of
from mmsparse.converters import convert
from mmsparse.models import BiFormer, CloFormer, MultiLevelSparseAttn, SparseAttnBlock, SparseAttnFPN, STViT
from mmsparse.ops import AttnConv, BiLevelRoutingAttention, GlobalAttentionLePE, SuperTokenAttention, TokenMHSA
from mmsparse.testing.official import model_from_official
from mmsparse.utils.checkpoint import CheckpointFileError, load_checkpoint_file, load_pretrained, unwrap_state_dict

# tiny valid arguments that each row spoils in one place
BIF = dict(embed_dims=[16, 32, 64, 64], depths=[1, 1, 1, 1], head_dim=16)
BIF_KW = dict(n_win=2, topks=(1, 2, 2, -2))
STV = dict(embed_dims=[16, 32, 32, 32], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 2])
CLO = dict(embed_dims=[16, 32, 32, 32], depths=[1, 1, 1, 1], num_heads=[2, 2, 2, 2], group_splits=[[1, 1]] * 4,
           kernel_sizes=[[3]] * 4, window_sizes=[4, 2, 1, 1], mlp_kernel_sizes=[3] * 4, mlp_ratios=[2] * 4)
CLO_OFFICIAL = dict(in_chans=3, embed_dims=[16, 32, 32, 32], depths=[1, 1, 1, 1], num_heads=[2] * 4,
                    group_splits=[[1, 1]] * 4, kernel_sizes=[[3]] * 4, window_sizes=[4, 2, 1, 1],
                    mlp_kernel_sizes=[3] * 4, mlp_ratios=[2] * 4)
STA = dict(type='SuperTokenAttention', num_heads=2)


def bif(arch=None, **kw):
    return BiFormer(arch=dict(BIF, **(arch or {})), **dict(BIF_KW, **kw))


def stv(arch=None, **kw):
    return STViT(arch=dict(STV, **(arch or {})), **kw)


def clo(arch=None, **kw):
    return CloFormer(arch=dict(CLO, **(arch or {})), **kw)


def switch(model, impl):
    from mmsparse import set_impl
    set_impl(model, impl)


def drop_path_rates(rate, depths):
    from mmsparse.models.layers import drop_path_rates
    return drop_path_rates(rate, depths)


def bad_file(tmp_path):
    path = tmp_path / 'weights.pth'
    path.write_text('not a checkpoint')
    return str(path)


def init_with(init_cfg):
    model = stv()
    model.init_cfg = init_cfg
    model.init_weights()


def cli(main, argv):
    """Run an argparse tool; its usage error (printed to stderr) becomes the SystemExit text."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            raise SystemExit(f'{exc.code}: {err.getvalue()}') from None


def benchmark_tool():
    from tests.conftest import load_tool
    return load_tool('tools/analysis_tools/benchmark.py')


def benchmark(argv):
    return cli(benchmark_tool().parse_args, argv)


CASES = [
    # ------------------------------------------------------------------ operators
    ('bra-heads-zero', lambda t: BiLevelRoutingAttention(64, num_heads=0),
     ValueError, 'num_heads must be a positive int'),
    ('bra-n_win-zero', lambda t: BiLevelRoutingAttention(64, n_win=0), ValueError, 'n_win must be a positive int'),
    ('bra-topk-zero', lambda t: BiLevelRoutingAttention(64, topk=0), ValueError, 'topk must be a positive int'),
    ('bra-topk-too-big', lambda t: BiLevelRoutingAttention(64, 2, n_win=2, topk=5),
     ValueError, 'topk=5 must be <= n_win**2'),
    ('bra-even-lepe', lambda t: BiLevelRoutingAttention(64, 2, n_win=2, topk=1, side_dwconv=4), ValueError,
     'side_dwconv must be 0 (no LePE) or an odd'),
    ('bra-qk_scale-negative', lambda t: BiLevelRoutingAttention(64, 2, n_win=2, topk=1, qk_scale=-1.), ValueError,
     'qk_scale must be None'),
    ('bra-auto_pad-str', lambda t: BiLevelRoutingAttention(64, 2, n_win=2, topk=1, auto_pad='yes'), TypeError,
     'auto_pad must be True or False'),
    ('bra-impl', lambda t: BiLevelRoutingAttention(64, 2, n_win=2, topk=1, impl='cuda'), ValueError,
     "impl='cuda' is not known; choose one of ['reference', 'fast']"),
    ('bra-3d-input', lambda t: BiLevelRoutingAttention(64, 2, n_win=2, topk=1)(torch.randn(1, 64, 8)), ValueError,
     'expects an NCHW tensor (N, 64, H, W), got shape (1, 64, 8)'),
    ('bra-size-without-pad', lambda t: BiLevelRoutingAttention(16, 2, n_win=2, topk=1)(torch.randn(1, 16, 5, 4)),
     ValueError, 'pass auto_pad=True'),
    ('global-heads-indivisible', lambda t: GlobalAttentionLePE(64, num_heads=3), ValueError,
     'num_heads=3 must divide embed_dims=64'),
    ('global-qk_scale-zero', lambda t: GlobalAttentionLePE(64, 2, qk_scale=0), ValueError, 'qk_scale must be None'),
    ('attnconv-even-kernel', lambda t: AttnConv(64, 2, [1, 1], [4]), ValueError, 'kernel_sizes entries must be odd'),
    ('attnconv-split-sum', lambda t: AttnConv(64, 4, [1, 1], [3]),
     ValueError, 'group_split=[1, 1] must sum to num_heads=4'),
    ('attnconv-split-len', lambda t: AttnConv(64, 4, [1, 1, 2], [3]), ValueError, 'one entry per kernel size'),
    ('attnconv-window-zero', lambda t: AttnConv(64, 2, [1, 1], [3], window_size=0), ValueError,
     'window_size must be a positive int'),
    ('attnconv-attn_drop', lambda t: AttnConv(64, 2, [1, 1], [3], attn_drop=1.5), ValueError,
     'attn_drop must be a float in [0, 1)'),
    ('sta-stoken-zero', lambda t: SuperTokenAttention(64, 2, stoken_size=0), ValueError,
     'stoken_size must be a positive int or a pair'),
    ('sta-n_iter-zero', lambda t: SuperTokenAttention(64, 2, n_iter=0), ValueError, 'n_iter must be a positive int'),
    ('sta-proj_drop', lambda t: SuperTokenAttention(64, 2, proj_drop=-0.1), ValueError,
     'proj_drop must be a float in [0, 1)'),
    ('sta-wrong-channels', lambda t: SuperTokenAttention(64, 2, stoken_size=2)(torch.randn(1, 32, 8, 8)), ValueError,
     'expects an NCHW tensor (N, 64, H, W)'),
    ('mhsa-heads-zero', lambda t: TokenMHSA(64, 0), ValueError, 'num_heads must be a positive int'),
    ('mhsa-qk_scale-bool', lambda t: TokenMHSA(64, 2, qk_scale=True), ValueError, 'qk_scale must be None'),
    # ------------------------------------------------------------------ backbones
    ('arch-unknown-name', lambda t: BiFormer(arch='huge'), ValueError, "arch='huge' is not a known variant"),
    ('arch-not-str-or-dict', lambda t: BiFormer(arch=3), TypeError, 'arch must be a variant name (str) or a dict'),
    ('arch-unknown-key-biformer', lambda t: bif(dict(foo=1)), ValueError, "arch dict has unknown keys ['foo']"),
    ('arch-unknown-key-cloformer', lambda t: clo(dict(bar=1)), ValueError, "arch dict has unknown keys ['bar']"),
    ('arch-unknown-key-stvit', lambda t: stv(dict(baz=1)), ValueError, "arch dict has unknown keys ['baz']"),
    ('arch-missing-key', lambda t: STViT(arch=dict(embed_dims=[16] * 4)), ValueError,
     "arch dict is missing the keys ['depths', 'num_heads']"),
    ('depth-zero', lambda t: bif(dict(depths=[1, 0, 1, 1])),
     ValueError, 'arch["depths"] entries must be a positive int'),
    ('depth-negative', lambda t: clo(dict(depths=[1, -1, 1, 1])), ValueError,
     'arch["depths"] entries must be a positive int, got -1'),
    ('depths-wrong-length', lambda t: stv(dict(depths=[1, 1, 1])), ValueError,
     'arch["depths"] must be one int or a sequence of 4 of them'),
    ('head_dim-zero', lambda t: bif(dict(head_dim=0)), ValueError, 'arch["head_dim"] must be a positive int, got 0'),
    ('head_dim-indivisible', lambda t: bif(dict(head_dim=24)), ValueError, 'head_dim=24 must divide qk_dims[0]=16'),
    ('global_num_heads-zero', lambda t: bif(dict(global_num_heads=0)), ValueError, 'arch["global_num_heads"]'),
    ('mlp_ratio-zero-biformer', lambda t: bif(dict(mlp_ratios=0)), ValueError,
     'arch["mlp_ratios"] entries must be a positive number, got 0'),
    ('mlp_ratio-zero-cloformer', lambda t: clo(dict(mlp_ratios=[0] * 4)), ValueError,
     'arch["mlp_ratios"] entries must be a positive number, got 0'),
    ('mlp_ratio-zero-stvit', lambda t: stv(mlp_ratio=0), ValueError, 'mlp_ratio must be a positive number'),
    ('even-kernel-cloformer', lambda t: clo(dict(kernel_sizes=[[4]] * 4)),
     ValueError, 'kernel_sizes entries must be odd'),
    ('even-mlp-kernel-cloformer', lambda t: clo(dict(mlp_kernel_sizes=[4] * 4)), ValueError,
     'arch["mlp_kernel_sizes"] entries must be odd (a same-size convolution kernel), got 4'),
    ('even-lepe-biformer', lambda t: bif(side_dwconv=4), ValueError, 'side_dwconv must be 0 (no LePE) or an odd'),
    ('topk-zero', lambda t: bif(topks=(0, 2, 2, -2)), ValueError, 'topk=0 is not supported'),
    ('topks-wrong-length', lambda t: bif(topks=(1, 2)), ValueError, 'topks must be one int or a sequence of 4'),
    ('stoken-zero', lambda t: stv(stoken_size=[0, 1, 1, 1]), ValueError, 'stoken_size must be a positive int'),
    ('heads-indivisible-stvit', lambda t: stv(dict(num_heads=[3, 2, 2, 2])), ValueError,
     'num_heads=3 must divide embed_dims=16'),
    ('layer_scale-str', lambda t: stv(dict(layer_scale='yes')), ValueError,
     'layer_scale must be one bool or a sequence of 4'),
    ('frozen_stages-true', lambda t: stv(frozen_stages=True), ValueError, 'frozen_stages must be an int in [-1, 4]'),
    ('frozen_stages-five', lambda t: bif(frozen_stages=5), ValueError, 'frozen_stages must be an int in [-1, 4]'),
    ('out_indices-out-of-range', lambda t: stv(out_indices=(4, )),
     ValueError, 'out_indices entries must be ints in [-4, 3]'),
    ('out_indices-empty', lambda t: stv(out_indices=()),
     TypeError, 'out_indices must be an int or a non-empty sequence'),
    ('drop_path_rate-one', lambda t: clo(drop_path_rate=1.), ValueError, 'drop_path_rate must be a float in [0, 1)'),
    ('norm_eval-str', lambda t: stv(norm_eval='no'), TypeError, 'norm_eval must be True or False'),
    ('with_cp-int', lambda t: clo(with_cp=1), TypeError, 'with_cp must be True or False'),
    ('norm_cfg-str', lambda t: bif(norm_cfg='BN'), TypeError, 'norm_cfg must be a dict with a "type"'),
    ('out_norm_cfg-str', lambda t: stv(out_norm_cfg='LN'), TypeError, 'out_norm_cfg (or None) must be a dict'),
    ('impl-backbone', lambda t: clo(impl='triton'), ValueError, "impl='triton' is not known"),
    ('impl-flex-without-bra', lambda t: clo(impl='flex'), ValueError,
     "CloFormer: impl='flex' is not known; choose one of ['reference', 'fast']"),
    ('impl-after-build', lambda t: setattr(stv(), 'impl', 'cuda'), ValueError,
     "set_impl: impl='cuda' is not known for STViT; choose one of ['reference', 'fast']"),
    ('impl-flex-after-build-without-bra', lambda t: setattr(clo(), 'impl', 'flex'), ValueError,
     "choose one of ['reference', 'fast'] ('flex' is offered by BiLevelRoutingAttention only"),
    ('set_impl-no-operator', lambda t: switch(torch.nn.Linear(2, 2), 'fast'), ValueError,
     "set_impl: Linear contains no mmsparse operator, so impl='fast' would change nothing"),
    ('set_impl-unknown-on-plugin', lambda t: switch(SparseAttnBlock(32, STA), 'fused'), ValueError,
     "set_impl: impl='fused' is not known for SparseAttnBlock; choose one of ['reference', 'fast']"),
    ('in_channels-zero', lambda t: stv(in_channels=0), ValueError, 'in_channels must be a positive int'),
    ('input-channels', lambda t: bif()(torch.randn(1, 4, 32, 32)),
     ValueError, 'BiFormer expects an NCHW tensor (N, 3, H, W)'),
    ('pretrained-and-init_cfg', lambda t: stv(pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth')),
     ValueError, 'init_cfg and pretrained cannot be set at the same time'),
    ('pretrained-bool', lambda t: stv(pretrained=True), TypeError, 'pretrained must be a str'),
    ('pretrained-stock-openmmlab', lambda t: stv(pretrained='open-mmlab://resnet50_v1c'), ValueError,
     'override it with model.pretrained=None'),
    ('init_cfg-torchvision', lambda t: bif(init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
     ValueError, "'torchvision://resnet50' is from the torchvision:// model zoo: the weights of another architecture"),
    ('pretrained-file-absent', lambda t: init_with(dict(type='Pretrained', checkpoint=str(t / 'absent.pth'))),
     FileNotFoundError, 'to train from scratch instead, remove the checkpoint (init_cfg=None, and '
     'model.pretrained=None where the config sets it)'),
    ('drop_path_rates-depth-zero', lambda t: drop_path_rates(0.1, [2, 0]), ValueError,
     'depths entries must be a positive int, got 0'),
    ('official-cloformer-unknown-kwarg', lambda t: model_from_official('CloFormer', dict(CLO_OFFICIAL, bogus=1)),
     ValueError, "CloFormer: unsupported constructor argument(s) ['bogus']; known:"),
    ('official-cloformer-required', lambda t: model_from_official('CloFormer', dict(embed_dims=[16] * 4)), ValueError,
     'are required (they have no default)'),
    ('official-attention-unknown-kwarg', lambda t: model_from_official(
        'EfficientAttention', dict(dim=64, num_heads=2, group_split=[1, 1], kernel_sizes=[3], foo=2)), ValueError,
     "EfficientAttention: unsupported constructor argument(s) ['foo']"),
    # ------------------------------------------------------------------ plug-ins and necks
    ('plugin-attn-type', lambda t: SparseAttnBlock(32, dict(type='Foo')), ValueError,
     "attn_cfg type='Foo' is not supported; accepted types are"),
    ('plugin-attn-no-type', lambda t: SparseAttnBlock(32, dict(num_heads=2)), TypeError,
     'attn_cfg must be a dict with a "type" key'),
    ('plugin-ffn_ratio-negative', lambda t: SparseAttnBlock(32, STA, ffn_ratio=-1), ValueError,
     'ffn_ratio must be a number >= 0'),
    ('plugin-layer_scale-str', lambda t: SparseAttnBlock(32, STA, layer_scale_init_value='0'), ValueError,
     "layer_scale_init_value must be a number, got '0'"),
    ('plugin-drop_path', lambda t: SparseAttnBlock(32, STA, drop_path_rate=1.), ValueError,
     'drop_path_rate must be a float in [0, 1)'),
    ('plugin-in_channels-zero', lambda t: SparseAttnBlock(0, STA), ValueError, 'in_channels must be a positive int'),
    ('plugin-embed_dims-conflict', lambda t: SparseAttnBlock(32, dict(STA, embed_dims=16)), ValueError,
     'attn_cfg embed_dims=16 does not match the block channels 32'),
    ('plugin-input-channels', lambda t: SparseAttnBlock(32, STA)(torch.randn(1, 16, 8, 8)), ValueError,
     'SparseAttnBlock expects an NCHW tensor (N, 32, H, W)'),
    ('fpn-attn_levels', lambda t: SparseAttnFPN([16, 32], 16, 2, attn_levels=[3], attn_cfg=STA), ValueError,
     'attn_levels must be distinct ints in [0, 1]'),
    ('fpn-attn_position', lambda t: SparseAttnFPN([16, 32], 16, 2, attn_levels=[0], attn_cfg=STA, attn_position='x'),
     ValueError, "attn_position must be one of ('lateral', 'output')"),
    ('fpn-no-attn_cfg', lambda t: SparseAttnFPN([16, 32], 16, 2, attn_levels=[0]), ValueError,
     'attn_levels=[0] needs attn_cfg=dict(type=...)'),
    ('fpn-in_channels-int', lambda t: SparseAttnFPN(16, 16, 2),
     TypeError, 'in_channels must be a non-empty list of ints'),
    ('fpn-num_outs', lambda t: SparseAttnFPN([16, 32], 16, 0), ValueError, 'num_outs=0 must be >='),
    ('fpn-out_channels-zero', lambda t: SparseAttnFPN([16, 32], 0, 2), ValueError,
     'SparseAttnFPN: out_channels must be a positive int'),
    ('neck-levels-duplicate', lambda t: MultiLevelSparseAttn([16, 32], [0, 0], STA), ValueError,
     'attn_levels must be distinct ints in [0, 1]'),
    ('neck-input-levels', lambda t: MultiLevelSparseAttn([16, 32], [0], STA)([torch.randn(1, 16, 8, 8)]), ValueError,
     'MultiLevelSparseAttn expects 2 levels, got 1'),
    # ------------------------------------------------------------------ converters and checkpoint files
    ('convert-family', lambda t: convert('swin', {}), ValueError,
     "family='swin' is not supported; choose one of ['biformer', 'cloformer', 'stvit']"),
    ('convert-unmapped-key', lambda t: convert('biformer', {'downsample_layers.0.0.weight': torch.zeros(1),
                                                            'foo.weight': torch.zeros(1)}), KeyError,
     'cannot be mapped to mmsparse: foo.weight'),
    ('convert-non-tensor', lambda t: convert('stvit', {'model': {'a': 1}}), TypeError,
     "state dict entry 'a' is a int, not a tensor"),
    ('convert-ema-absent', lambda t: convert('stvit', {'model': {}}, use_ema=True), KeyError,
     'use_ema=True but the checkpoint has no "model_ema" entry'),
    ('unwrap-not-dict', lambda t: unwrap_state_dict([1, 2]), TypeError, 'expected a checkpoint dict, got list'),
    ('checkpoint-text-file', lambda t: load_checkpoint_file(bad_file(t)), CheckpointFileError,
     'weights.pth\' is not a readable checkpoint: expected a file written by torch.save'),
    ('checkpoint-missing-file', lambda t: load_checkpoint_file(str(t / 'nope.pth')), FileNotFoundError,
     "nope.pth' does not exist"),
    ('pretrained-wrong-prefix', lambda t: load_pretrained(stv(), {'state_dict': {'backbone.x': torch.zeros(1)}},
                                                          prefix='encoder.'), KeyError,
     "no key of <state dict> starts with prefix 'encoder.'; its top-level prefixes are backbone."),
    ('pretrained-foreign-weights', lambda t: load_pretrained(stv(), {'head.weight': torch.zeros(2)}), KeyError,
     "stvit: the state dict holds none of the keys of the authors' stvit checkpoints"),
    ('init_cfg-unknown-key', lambda t: init_with(dict(type='Pretrained', checkpoint='x.pth', strict=False)), ValueError,
     "unknown keys ['strict']"),
    ('init_cfg-two-pretrained', lambda t: init_with([dict(type='Pretrained', checkpoint='a.pth'),
                                                     dict(type='Pretrained', checkpoint='b.pth')]), ValueError,
     'init_cfg has 2 Pretrained entries; give one checkpoint'),
    # ------------------------------------------------------------------ tools
    ('tool-default_scope', lambda t: task_of(ConfigDict(default_scope='mmpretrain')), ValueError,
     "default_scope='mmpretrain' in the config; mmsparse tools run configs whose default_scope is one of"),
    ('tool-torchvision-missing', lambda t: check_torchvision(ConfigDict(load_from='torchvision://resnet50'),
                                                             importer=lambda name: __import__('no_such_module_x')),
     SystemExit, '--cfg-options load_from='),
    ('tool-pretrained-file-missing', lambda t: check_pretrained(ConfigDict(model=dict(backbone=dict(
        init_cfg=dict(type='Pretrained', checkpoint=str(t / 'missing.pth')))))), SystemExit,
     'official2mmsparse.py FAMILY SRC'),
    ('tool-benchmark-layer-args', lambda t: benchmark_tool().parse_kwargs(['topk']), ValueError,
     "--layer-args entries must look like key=value, got 'topk'"),
    ('tool-benchmark-shape', lambda t: benchmark(['--layer', 'sta', '--shape', '1,64,8']), SystemExit,
     "--shape must be N,C,H,W"),
    ('tool-benchmark-layer-name', lambda t: benchmark(['--layer', 'nope', '--shape', '1,64,8,8']), SystemExit,
     "invalid choice: 'nope'"),
]


@pytest.mark.parametrize('call, error, text', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly(call, error, text, tmp_path):
    with pytest.raises(error) as info:
        call(tmp_path)
    assert type(info.value) is error or error is KeyError, f'{type(info.value).__name__} is not {error.__name__}'
    msg = str(info.value.code if isinstance(info.value, SystemExit) else info.value)
    assert text in msg, msg


#: every case of the catalogue, by id: a case dropped or renamed by accident fails :func:`test_catalogue_ids`
EXPECTED_IDS = {
    'bra-heads-zero', 'bra-n_win-zero', 'bra-topk-zero', 'bra-topk-too-big', 'bra-even-lepe',
    'bra-qk_scale-negative', 'bra-auto_pad-str', 'bra-impl', 'bra-3d-input', 'bra-size-without-pad',
    'global-heads-indivisible', 'global-qk_scale-zero', 'attnconv-even-kernel', 'attnconv-split-sum',
    'attnconv-split-len', 'attnconv-window-zero', 'attnconv-attn_drop', 'sta-stoken-zero', 'sta-n_iter-zero',
    'sta-proj_drop', 'sta-wrong-channels', 'mhsa-heads-zero', 'mhsa-qk_scale-bool', 'arch-unknown-name',
    'arch-not-str-or-dict', 'arch-unknown-key-biformer', 'arch-unknown-key-cloformer', 'arch-unknown-key-stvit',
    'arch-missing-key', 'depth-zero', 'depth-negative', 'depths-wrong-length', 'head_dim-zero',
    'head_dim-indivisible', 'global_num_heads-zero', 'mlp_ratio-zero-biformer', 'mlp_ratio-zero-cloformer',
    'mlp_ratio-zero-stvit', 'even-kernel-cloformer', 'even-mlp-kernel-cloformer', 'even-lepe-biformer', 'topk-zero',
    'topks-wrong-length', 'stoken-zero', 'heads-indivisible-stvit', 'layer_scale-str', 'frozen_stages-true',
    'frozen_stages-five', 'out_indices-out-of-range', 'out_indices-empty', 'drop_path_rate-one', 'norm_eval-str',
    'with_cp-int', 'norm_cfg-str', 'out_norm_cfg-str', 'impl-backbone', 'impl-flex-without-bra', 'impl-after-build',
    'impl-flex-after-build-without-bra', 'set_impl-no-operator', 'set_impl-unknown-on-plugin', 'in_channels-zero',
    'input-channels', 'pretrained-and-init_cfg', 'pretrained-bool', 'pretrained-stock-openmmlab',
    'init_cfg-torchvision', 'pretrained-file-absent', 'drop_path_rates-depth-zero',
    'official-cloformer-unknown-kwarg', 'official-cloformer-required', 'official-attention-unknown-kwarg',
    'plugin-attn-type', 'plugin-attn-no-type', 'plugin-ffn_ratio-negative', 'plugin-layer_scale-str',
    'plugin-drop_path', 'plugin-in_channels-zero', 'plugin-embed_dims-conflict', 'plugin-input-channels',
    'fpn-attn_levels', 'fpn-attn_position', 'fpn-no-attn_cfg', 'fpn-in_channels-int', 'fpn-num_outs',
    'fpn-out_channels-zero', 'neck-levels-duplicate', 'neck-input-levels', 'convert-family', 'convert-unmapped-key',
    'convert-non-tensor', 'convert-ema-absent', 'unwrap-not-dict', 'checkpoint-text-file', 'checkpoint-missing-file',
    'pretrained-wrong-prefix', 'pretrained-foreign-weights', 'init_cfg-unknown-key', 'init_cfg-two-pretrained',
    'tool-default_scope', 'tool-torchvision-missing', 'tool-pretrained-file-missing', 'tool-benchmark-layer-args',
    'tool-benchmark-shape', 'tool-benchmark-layer-name'
}


def test_catalogue_ids():
    """The catalogue is exactly :data:`EXPECTED_IDS`, each id once (a count floor let cases disappear)."""
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert set(ids) == EXPECTED_IDS, (sorted(EXPECTED_IDS - set(ids)), sorted(set(ids) - EXPECTED_IDS))
