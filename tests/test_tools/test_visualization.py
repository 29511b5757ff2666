"""Attention maps of the three families on a real photograph (matplotlib's Grace Hopper), through the library
(:mod:`mmsparse.visualization`) and the command line (tools/visualization/attention_map.py).

Backbones are small arch dicts in configs written to tmp_path; the operators are found by ``isinstance``, so
nothing here depends on module paths or constructor argument names.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from mmsparse.families import list_families
from mmsparse.ops import AttnConv, BiLevelRoutingAttention, SuperTokenAttention
from mmsparse.visualization import (attention_maps, attnconv_global_attention, attnconv_local_weights,
                                    bra_channels, bra_token_attention, capture_operator_inputs, load_backbone,
                                    preprocess, read_image, resize_for_model, sta_association)
from mmsparse.visualization.drawing import region_box
from tests.conftest import REPO

TOOL = 'tools/visualization/attention_map.py'
PREPROCESSOR = ("data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53], "
                "std=[58.395, 57.12, 57.375], bgr_to_rgb=True)")
BACKBONES = {
    'biformer': "dict(type='mmsparse.BiFormer', arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 1, 1]), "
                "n_win=4, topks=(1, 2, 4, -2))",
    'stvit': "dict(type='mmsparse.STViT', arch=dict(embed_dims=[32, 64, 64, 64], depths=[1, 1, 1, 1], "
             "num_heads=[1, 2, 2, 2]), stoken_size=[8, 4, 2, 1])",
    'cloformer': "dict(type='mmsparse.CloFormer', arch=dict(embed_dims=[16, 32, 64, 64], depths=[1, 1, 1, 1], "
                 "num_heads=[2, 4, 4, 4], group_splits=[[1, 1], [2, 2], [2, 2], [1, 3]], kernel_sizes=[[3], [5], "
                 "[7], [9]], window_sizes=[8, 4, 2, 1], mlp_kernel_sizes=[5, 5, 5, 5], mlp_ratios=[2, 2, 2, 2]))",
}
#: family -> the stages the tool draws for its backbone above (BiFormer's and STViT's last stage is global attention)
DRAWN_STAGES = {'biformer': [0, 1, 2], 'stvit': [0, 1, 2], 'cloformer': [0, 1, 2, 3]}
SIZE = 160  # longer side of the network input: the 512x600 (w x h) photograph becomes 128x160


def test_tables_cover_every_family():
    """``BACKBONES`` and ``DRAWN_STAGES`` are per family (a map wants settings the spec's ``tiny`` config lacks:
    grids coarse enough to see on a photograph): a new family fails here and in the command-line test until it has
    its entries, instead of going undrawn."""
    assert set(BACKBONES) == set(DRAWN_STAGES) == set(list_families())


def photograph():
    from matplotlib.cbook import get_sample_data
    path = get_sample_data('grace_hopper.jpg', asfileobj=False)
    assert os.path.isfile(path), 'matplotlib ships sample_data/grace_hopper.jpg'
    return str(path)


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp('configs')
    paths = {}
    for family, backbone in BACKBONES.items():
        path = root / f'tiny_{family}.py'
        path.write_text(f"default_scope = 'mmdet'\nmodel = dict(type='RetinaNet', {PREPROCESSOR},\n"
                        f"             backbone={backbone})\n")
        paths[family] = str(path)
    path = root / 'stock_cloformer.py'  # a stock mmdet config naming our backbone by its plain name
    path.write_text("_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n"
                    "custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)\n"
                    f"model = dict(backbone=dict(_delete_=True, **{BACKBONES['cloformer']}, "
                    "out_indices=(1, 2, 3)))\n".replace("type='mmsparse.CloFormer', ", "type='CloFormer', "))
    paths['stock'] = str(path)
    path = root / 'resnet.py'
    path.write_text("default_scope = 'mmdet'\nmodel = dict(type='RetinaNet', backbone=dict(type='ResNet', "
                    "depth=18, out_indices=(3,)))\n")
    paths['resnet'] = str(path)
    return paths


def setup(config, seed=0):
    torch.manual_seed(seed)
    backbone, cfg = load_backbone(config)
    img = resize_for_model(read_image(photograph()), SIZE)
    return backbone, img, preprocess(img, cfg)


def run_tool(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def interior(box, margin=3):
    x0, y0, x1, y1 = box
    return slice(y0 + margin, y1 - margin), slice(x0 + margin, x1 - margin)


def assert_only_routed_regions_drawn(panel, img, meta, stride):
    """Pixels of regions neither routed nor the query's equal the input; routed regions are drawn."""
    n, (rh, rw) = meta['n_win'], meta['region_hw']
    drawn = set(meta['routed']) | {meta['region']}
    for r in range(n * n):
        ys, xs = interior(region_box(r, n, (rh, rw), stride, img.shape[:2]), 0)
        if ys.stop <= ys.start or xs.stop <= xs.start:
            continue  # a region entirely in the auto-padding
        if r in drawn:
            if r in meta['routed']:
                inner = interior(region_box(r, n, (rh, rw), stride, img.shape[:2]))
                assert np.abs(panel[inner].astype(int) - img[inner]).mean() > 1, f'routed region {r} not drawn'
        else:
            assert np.array_equal(panel[ys, xs], img[ys, xs]), f'region {r} is not routed but was drawn on'


# ------------------------------------------------------------------------------------------ library: BiFormer
def test_bra_routed_regions_drawn_are_the_operators(configs):
    backbone, img, x = setup(configs['biformer'])
    points = [(img.shape[1] // 2, img.shape[0] // 2), (5, 5), (img.shape[1] - 3, img.shape[0] - 2)]
    maps, skipped = attention_maps(backbone, img, x, points)
    assert [m.stage for m in maps] == [0, 1, 2] and 3 in skipped  # stage 4 is global attention

    # the routing the operators compute on their own, with nothing of mmsparse.visualization in the loop
    ops = [m for m in backbone.modules() if isinstance(m, BiLevelRoutingAttention)]
    for op in ops:
        op.record_routing = True
    with torch.no_grad():
        backbone(x)
    for sm, op in zip(maps, ops):
        for panel, meta in zip(sm.panels, sm.meta):
            assert meta['routed'] == op.routing_idx[0, meta['region']].tolist()
            hp = -(-x.shape[-2] // sm.stride // op.n_win) * op.n_win
            region_rows = hp // op.n_win
            assert meta['region'] // op.n_win == meta['feature_yx'][0] // region_rows
            assert_only_routed_regions_drawn(panel, img, meta, sm.stride)
            assert not np.array_equal(panel, img)
            for r in meta['routed']:  # regions wholly in BRA's auto-padding are reported, not drawn
                x0, y0, x1, y1 = region_box(r, op.n_win, meta['region_hw'], sm.stride, img.shape[:2])
                assert (r in meta['in_padding']) == (x1 <= x0 or y1 <= y0)


def test_bra_token_attention_reproduces_the_operator_output(configs):
    """weights x V over the routed tokens == the operator's attention output (before LePE and proj)."""
    backbone, img, x = setup(configs['biformer'])
    calls = [c for c in capture_operator_inputs(backbone, x) if isinstance(c.module, BiLevelRoutingAttention)]
    assert len(calls) == 3
    for call in calls:
        op = call.module
        seen = {}
        hook = op.proj.register_forward_pre_hook(lambda m, a: seen.setdefault('in', a[0].detach()))
        try:
            with torch.no_grad():
                op(call.x)
        finally:
            hook.remove()
        h, w = call.x.shape[-2:]
        n = op.n_win
        with torch.no_grad():
            att0 = bra_token_attention(op, call.x, call.routing_idx, (0, 0))
            hp, wp, rh, rw = att0['layout']
            xp = F.pad(call.x, (0, wp - w, 0, hp - h))
            tokens = rearrange(xp, 'n c (j h) (i w) -> n (j i) (h w) c', j=n, i=n)
            qk_dim, v_dim = bra_channels(op)
            v = op.qkv(tokens)[..., 2 * qk_dim:]
            lepe = op.lepe(rearrange(v, 'n (j i) (h w) c -> n c (j h) (i w)', j=n, h=rh, w=rw))
            attn_out = seen['in'] - rearrange(lepe, 'n c (j h) (i w) -> n (j i) (h w) c', j=n, i=n)
        for fy, fx in [(0, 0), (h // 2, w // 3), (h - 1, w - 1), (h // 3, w - 2)]:
            att = bra_token_attention(op, call.x, call.routing_idx, (fy, fx))
            assert att['routed'] == call.routing_idx[att['region']].tolist()
            v_sel = v[0, att['routed']].reshape(-1, op.num_heads, v_dim // op.num_heads)
            ours = torch.einsum('ms,smd->md', att['per_head'], v_sel).reshape(-1)
            token = (fy % rh) * rw + fx % rw
            torch.testing.assert_close(ours, attn_out[0, att['region'], token], rtol=1e-4, atol=1e-5)
            # the placed map sums to one over the routed regions and is zero elsewhere
            assert att['weights'].sum().item() == pytest.approx(1.0, abs=1e-4)


def test_checkpoint_weights_are_loaded(configs, tmp_path):
    """A whole-model checkpoint (``backbone.*`` keys, as tools/train.py writes) gives the backbone its weights."""
    torch.manual_seed(1)
    source, _ = load_backbone(configs['stvit'])
    ckpt = tmp_path / 'model.pth'
    torch.save(dict(state_dict={'backbone.' + k: v for k, v in source.state_dict().items()}), ckpt)
    torch.manual_seed(2)
    loaded, _ = load_backbone(configs['stvit'], str(ckpt))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match='checkpoint: no such file'):
        load_backbone(configs['stvit'], str(tmp_path / 'missing.pth'))
    with pytest.raises(ValueError, match='does not fit'):
        load_backbone(configs['biformer'], str(ckpt))


# --------------------------------------------------------------------------------------------- library: STViT
def hand_association(x, cell):
    """One association round written out: cell means of the zero-padded map are the super tokens; every pixel's
    logits are ``C ** -0.5 * <pixel, token>`` over the 3x3 tokens around its own cell (zero vectors outside the grid),
    softmax over the 9. Returns the (9, h, w) weights, the (h, w) grid index of the argmax (-1 outside the grid)
    and the (h, w) margin between the two largest weights."""
    _, c, h, w = x.shape
    sh, sw = cell
    rows, cols = -(-h // sh), -(-w // sw)
    padded = F.pad(x[0], (0, cols * sw - w, 0, rows * sh - h))
    tokens = F.pad(padded.reshape(c, rows, sh, cols, sw).mean((2, 4)), (1, 1, 1, 1))
    own_y, own_x = torch.meshgrid(torch.arange(h) // sh, torch.arange(w) // sw, indexing='ij')
    logits, index = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ty, tx = own_y + dy, own_x + dx
            logits.append(c ** -0.5 * (x[0] * tokens[:, ty + 1, tx + 1]).sum(0))
            inside = (ty >= 0) & (ty < rows) & (tx >= 0) & (tx < cols)
            index.append(torch.where(inside, ty * cols + tx, torch.full_like(ty, -1)))
    assoc = torch.stack(logits).softmax(0)
    top2 = assoc.topk(2, dim=0).values
    return assoc, torch.stack(index).gather(0, assoc.argmax(0, keepdim=True))[0], top2[0] - top2[1]


def test_sta_association_is_the_operators_and_drawn(configs):
    """Each stage's super-token assignment equals a hand computation of STA's association (cell means, 9-way
    softmax, argmax) on the operator's captured input, and the panel shows that assignment: the tint laid over the
    image (``2 * panel - image`` at the default alpha 0.5) is one colour inside each super token's pixels, a
    different colour for each super token, black where the argmax is outside the grid, and every boundary
    between two super tokens is drawn white on one side.

    Catches: ``SuperTokenAttention.assignment`` reading the neighbour offset transposed (``k % 3`` as the row),
    which the old self-comparison passed; and a panel coloured from another label map (``draw_association``
    drawing ``labels[::-1]``), which the old "differs from the image" check passed."""
    backbone, img, x = setup(configs['stvit'])
    maps, skipped = attention_maps(backbone, img, x, [(10, 10)])
    assert [m.stage for m in maps] == [0, 1, 2] and 'global' in skipped[3]
    calls = {c.stage: c for c in capture_operator_inputs(backbone, x)}
    for sm in maps:
        call = calls[sm.stage]
        assert call.module.n_iter == 1
        out = sta_association(call.module, call.x)
        assoc, labels, margin = hand_association(call.x.detach(), call.module.stoken_size)
        torch.testing.assert_close(out['association'], assoc, atol=1e-5, rtol=1e-4)
        clear = margin > 5e-6  # the weights agree to ~1e-6: closer top two can swap by rounding
        assert clear.float().mean() > 0.95 and torch.equal(out['assignment'][clear], labels[clear])
        labels = out['assignment'].numpy()
        assert len(np.unique(labels)) > 4

        (panel,) = sm.panels
        assert panel.shape == img.shape
        stride = img.shape[0] // labels.shape[0]
        assert labels.shape[0] * stride == img.shape[0] and labels.shape[1] * stride == img.shape[1]
        up = np.repeat(np.repeat(labels, stride, 0), stride, 1)  # the label of every image pixel
        tint = 2 * panel.astype(int) - img.astype(int)
        # pixels whose 3x3 neighbourhood has one label: no boundary can be drawn there
        same = np.ones(up.shape, bool)
        for dy, dx in [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]:
            same[1:-1, 1:-1] &= up[1 + dy:up.shape[0] - 1 + dy, 1 + dx:up.shape[1] - 1 + dx] == up[1:-1, 1:-1]
        same[[0, -1]] = same[:, [0, -1]] = False
        colours = {}
        for label in np.unique(labels):
            pixels = tint[same & (up == label)]
            assert len(pixels), f'stage {sm.stage}: super token {label} has no interior pixel'
            spread = (pixels.max(0) - pixels.min(0)).max()
            assert spread <= 2, f'stage {sm.stage}: super token {label} is not one colour'
            colours[label] = pixels.mean(0)
        if -1 in colours:
            assert np.abs(colours.pop(-1)).max() <= 1  # out-of-grid argmax: black
        tints = np.stack(list(colours.values()))
        gaps = np.abs(tints[:, None] - tints[None]).max(-1) + 255 * np.eye(len(tints))
        assert gaps.min() > 4, f'stage {sm.stage}: two super tokens share a colour'
        white = (panel == 255).all(-1)
        for a, b in [(np.s_[:, 1:], np.s_[:, :-1]), (np.s_[1:, :], np.s_[:-1, :])]:
            change = up[a] != up[b]
            assert change.any() and (white[a] | white[b])[change].all(), f'stage {sm.stage}: boundary not drawn'


def test_assignment_labels_follow_the_grid():
    """8x8 super tokens on a 64x96 map: an 8x12 grid; every argmax is one of the pixel's 9 neighbours."""
    op = SuperTokenAttention(16, 2, stoken_size=8).eval()
    out = sta_association(op, torch.randn(1, 16, 64, 96))
    labels = out['assignment'].numpy()
    assert out['grid'] == (8, 12) and labels.shape == (64, 96)
    assert labels.min() >= -1 and labels.max() < 8 * 12
    own = (np.arange(64)[:, None] // 8) * 12 + np.arange(96)[None] // 8
    inside = labels >= 0  # -1: the argmax is an out-of-grid (zero) neighbour
    assert inside.mean() > 0.5
    assert np.abs(labels[inside] // 12 - own[inside] // 12).max() <= 1
    assert np.abs(labels[inside] % 12 - own[inside] % 12).max() <= 1


# ----------------------------------------------------------------------------------------- library: CloFormer
def test_attnconv_maps_reproduce_the_operator_branches(configs):
    backbone, img, x = setup(configs['cloformer'])
    calls = [c for c in capture_operator_inputs(backbone, x) if isinstance(c.module, AttnConv)]
    assert sorted({c.stage for c in calls}) == [0, 1, 2, 3]
    for call in calls:
        op, xin = call.module, call.x
        with torch.no_grad():
            branches = op.forward_branches(xin)[0]  # (C, h, w): local groups first, global last
            gch = op.global_heads * op.head_dim
            kv = op.global_kv(F.avg_pool2d(xin, op.window_size, op.window_size, ceil_mode=True,
                                           count_include_pad=False) if op.window_size > 1 else xin)
            v = rearrange(kv[0, gch:], '(m d) hk wk -> m (hk wk) d', d=op.head_dim)
            u = [to_qkv(xin)[0] for to_qkv in op.qkvs]
        h, w = xin.shape[-2:]
        for fy, fx in [(0, 0), (h // 2, w // 2), (h - 1, w - 2)]:
            glob = attnconv_global_attention(op, xin, (fy, fx))
            ours = torch.einsum('mk,mkd->md', glob['per_head'], v).reshape(-1)
            torch.testing.assert_close(ours, branches[-gch:, fy, fx], rtol=1e-4, atol=1e-5)
            assert glob['weights'].sum().item() == pytest.approx(1.0, abs=1e-4)
            start = 0
            for group, conv, ug in zip(attnconv_local_weights(op, xin, (fy, fx)), op.convs, u):
                k, ch = group['kernel_size'], group['gate'].numel()
                r = k // 2
                padded = F.pad(ug[2 * ch:], (r, r, r, r))
                window = padded[:, fy:fy + k, fx:fx + k]  # the neighbours the depthwise conv mixes, zero outside
                ours = (group['per_channel'] * window).sum((1, 2)) + group['gate'] * conv.bias[2 * ch:]
                torch.testing.assert_close(ours, branches[start:start + ch, fy, fx], rtol=1e-4, atol=1e-5)
                start += ch
    maps, _ = attention_maps(backbone, img, x, [(40, 60)])
    assert [m.stage for m in maps] == [0, 1, 2, 3]
    for sm in maps:
        kinds = [m['kind'] for m in sm.meta]
        assert kinds == ['attnconv_global', 'attnconv_local']
        assert not np.array_equal(sm.panels[0], img)


# ------------------------------------------------------------------------------------- stock configs
def test_stock_resnet_with_bra_plugins():
    """configs/plugins: a stock mmdet ResNet-50 with BRA plugins in stages 3-4, through custom_imports."""
    backbone, img, x = setup(str(REPO / 'configs/plugins/retinanet_r50-bra-c4-c5_fpn_1x_coco.py'))
    maps, _ = attention_maps(backbone, img, x, [(30, 40)])
    assert [m.stage for m in maps] == [2, 3] and {m.family for m in maps} == {'biformer'}
    assert [m.stride for m in maps] == [16, 32]


def test_stock_config_naming_our_backbone(configs):
    backbone, img, x = setup(configs['stock'])
    assert type(backbone).__name__ == 'CloFormer'
    maps, _ = attention_maps(backbone, img, x, [(30, 40)])
    assert [m.stage for m in maps] == [0, 1, 2, 3] and {m.family for m in maps} == {'cloformer'}


# ------------------------------------------------------------------------------------------ command line
@pytest.mark.parametrize('family', list_families())
def test_tool_writes_every_stage_and_a_sheet(configs, tmp_path, family):
    out = tmp_path / 'maps'
    proc = run_tool(configs[family], photograph(), '--out-dir', out, '--size', SIZE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / 'attention_map.json').read_text())
    assert report['checkpoint'] is None and 'RANDOM WEIGHTS' in report['weights']
    assert len(report['points']) == 3  # centre + 2 salient points by default
    assert [s['stage'] for s in report['stages']] == DRAWN_STAGES[family]
    assert (out / 'sheet.png').is_file()
    import cv2
    img = resize_for_model(read_image(photograph()), SIZE)
    for stage in report['stages']:
        canvas = cv2.imread(str(out / stage['file']))
        for panel in stage['panels']:
            x0, y0, x1, y1 = panel['box']
            crop = canvas[y0:y1, x0:x1]
            if panel['kind'] == 'attnconv_local':
                continue  # a zoom, not the image
            assert crop.shape == img.shape and not np.array_equal(crop, img)


def test_tool_draws_the_routing_the_operator_returns(configs, tmp_path):
    out = tmp_path / 'maps'
    points = [(256, 300), (40, 560)]  # pixels of the 512x600 photograph
    proc = run_tool(configs['biformer'], photograph(), '--out-dir', out, '--size', SIZE, '--points',
                    *[f'{x},{y}' for x, y in points], '--stages', 1, 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / 'attention_map.json').read_text())
    assert [s['stage'] for s in report['stages']] == [1, 2]

    backbone, img, x = setup(configs['biformer'])  # same seed, same random weights as the tool
    ops = [m for m in backbone.modules() if isinstance(m, BiLevelRoutingAttention)]
    for op in ops:
        op.record_routing = True
    with torch.no_grad():
        backbone(x)
    import cv2
    for stage in report['stages']:
        canvas = cv2.imread(str(out / stage['file']))
        op = ops[stage['stage']]
        for panel in stage['panels']:
            assert panel['routed'] == op.routing_idx[0, panel['region']].tolist()
            x0, y0, x1, y1 = panel['box']
            assert_only_routed_regions_drawn(canvas[y0:y1, x0:x1], img, panel, stage['stride'])


def load_tool():
    """The command-line module, imported in-process (its main() exits through argparse on bad input)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('attention_map_tool', REPO / TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_reports_bad_inputs(configs, tmp_path, capsys):
    proc = run_tool(configs['biformer'], tmp_path / 'missing.jpg', '--out-dir', tmp_path)
    assert proc.returncode == 2 and 'no such file' in proc.stderr and 'missing.jpg' in proc.stderr
    tool = load_tool()
    not_image = tmp_path / 'notes.jpg'
    not_image.write_text('not an image')
    for args, message in [
        ((configs['resnet'], photograph()), ['none of mmsparse', 'ResNet']),
        ((configs['biformer'], photograph(), '--points', '600,10'), ['outside the image', '512x600']),
        ((configs['biformer'], photograph(), '--points', '1;2'), ['X,Y']),
        ((configs['biformer'], photograph(), '--stages', '7'), ['stages [7]']),
        ((configs['biformer'], str(not_image)), ['cannot decode']),
        ((str(tmp_path / 'none.py'), photograph()), ['config: no such file']),
    ]:
        with pytest.raises(SystemExit) as exc:
            tool.main([*args, '--out-dir', str(tmp_path), '--size', '96'])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and all(m in err for m in message), (args, err)
    assert not list(Path(tmp_path).glob('*.png'))
