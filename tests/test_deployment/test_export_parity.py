"""ONNX export and ONNX Runtime parity on reduced models of the shipped configs, one per family and graph kind.

Every graph is exported once per module (the exporter takes tens of seconds even for these models) and compared
with PyTorch at the export size and, for dynamic graphs, at a size no window / super-token grid divides (the
operators pad it themselves) and another batch.
"""
import json
import os.path as osp

import pytest
import torch

import onnxruntime  # noqa: E402,F401  (a dependency of the project: missing, the tests fail)
import onnxscript  # noqa: E402,F401

from mmsparse.deployment import (build_model, export_onnx, graph_meta, graph_ops, load_config,  # noqa: E402
                                 model_kind, verify)

from mmsparse.families import list_families  # noqa: E402

from .reduced import check_families, config_path, reduced_options  # noqa: E402

EXPORT_SIZE = (64, 64)
OTHER_SIZE = (87, 71)  # 87 / 4 and 71 / 4 divide no grid of the reduced models


def _export(tmp_path_factory, config, family, dynamic, backbone_only=False):
    torch.manual_seed(0)
    cfg = load_config(config_path(config), reduced_options(config, family))
    model = build_model(cfg)
    kind = model_kind(model, backbone_only)
    path = str(tmp_path_factory.mktemp('onnx') / f'{family}_{kind}.onnx')
    export_onnx(model, path, EXPORT_SIZE, kind, dynamic=dynamic)
    return model, path


#: every registered family
FAMILIES = list_families()
#: (family, graph) -> the config it is exported from; every graph is dynamic (batch, H, W). Checked to hold every
#: graph of every family (``test_tables_cover_every_family``): a new family fails until it has its configs here.
GRAPHS = {
    ('biformer', 'backbone'): 'semfpn_biformer_s_ade20k.py',
    ('cloformer', 'backbone'): 'semfpn_cloformer_s_ade20k.py',
    ('stvit', 'backbone'): 'semfpn_stvit_s_ade20k.py',
    ('biformer', 'segmentor'): 'semfpn_biformer_s_ade20k.py',
    ('cloformer', 'segmentor'): 'semfpn_cloformer_s_ade20k.py',
    ('stvit', 'segmentor'): 'semfpn_stvit_s_ade20k.py',
    # Mask R-CNN where the backbone has output LayerNorms (its RoIAlign reads the FPN maps' memory directly)
    ('biformer', 'detector'): 'maskrcnn_biformer_s_coco.py',
    ('cloformer', 'detector'): 'retinanet_cloformer_s_coco.py',
    ('stvit', 'detector'): 'maskrcnn_stvit_s_coco.py',
}
_exported = {}


def exported(tmp_path_factory, family, graph):
    """The model and its ONNX file, exported once per session."""
    if (family, graph) not in _exported:
        _exported[family, graph] = _export(tmp_path_factory, GRAPHS[family, graph], family, dynamic=True,
                                           backbone_only=graph == 'backbone')
    return _exported[family, graph]


def test_tables_cover_every_family():
    check_families()
    assert set(GRAPHS) == {(family, graph) for family in FAMILIES for graph in ('backbone', 'segmentor', 'detector')}


@pytest.fixture(scope='module')
def biformer_semfpn(tmp_path_factory):
    return exported(tmp_path_factory, 'biformer', 'segmentor')


@pytest.mark.parametrize('family', FAMILIES)
def test_backbone_features_match_at_two_sizes_and_batches(family, tmp_path_factory):
    """feat0..feat3 within 1e-4 relative; catches e.g. a graph frozen to the example size (no padding)."""
    model, path = exported(tmp_path_factory, family, 'backbone')
    assert graph_meta(path)['outputs'] == ['feat0', 'feat1', 'feat2', 'feat3']
    rows = verify(model, path, [EXPORT_SIZE, OTHER_SIZE], batch=1, printer=None)
    rows += verify(model, path, [OTHER_SIZE], batch=3, printer=None)
    assert len(rows) == 12 and all(r['rel_err'] <= 1e-4 for r in rows)


@pytest.mark.parametrize('family', FAMILIES)
def test_segmentor_logits_match_at_two_sizes(family, tmp_path_factory):
    """seg_logits [B, num_classes, H, W] at the input size, within 1e-4 relative."""
    model, path = exported(tmp_path_factory, family, 'segmentor')
    rows = verify(model, path, [EXPORT_SIZE, OTHER_SIZE], batch=2, printer=None)
    assert [r['name'] for r in rows] == ['seg_logits', 'seg_logits']
    import onnxruntime as ort
    out = ort.InferenceSession(path).run(None, {'input': torch.zeros(2, 3, *OTHER_SIZE).numpy()})[0]
    assert out.shape == (2, 5, *OTHER_SIZE)


@pytest.mark.parametrize('family', FAMILIES)
def test_detector_same_boxes_and_labels_at_two_sizes(family, tmp_path_factory):
    """Raw head / neck outputs within 1e-4 relative; after mmdet's post-processing the same boxes (1e-3) and
    labels, and for Mask R-CNN the same masks (at most 0.1 % of the pixels differ)."""
    model, path = exported(tmp_path_factory, family, 'detector')
    assert graph_meta(path)['layout'] == 'raw'  # export_onnx's default: the head / neck outputs
    rows = verify(model, path, [EXPORT_SIZE, OTHER_SIZE], batch=2, printer=None)
    dets = [r for r in rows if r['name'].startswith('detections')]
    assert len(dets) == 4
    for r in dets:
        assert r['count'][0] == r['count'][1] > 0 and r['labels_equal']
        assert r['box_err'] <= 1e-3 * max(OTHER_SIZE)
        if 'maskrcnn' in GRAPHS[family, 'detector']:
            assert r['mask_mismatch'] <= 1e-3


def test_verify_reports_a_wrong_graph(biformer_semfpn):
    """The check itself fails when the graph and the model differ (here: one weight changed after export)."""
    model, path = biformer_semfpn
    import copy
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.decode_head.conv_seg.bias.add_(1.)
    with pytest.raises(AssertionError, match='seg_logits'):
        verify(changed, path, [EXPORT_SIZE], printer=None)


def test_graph_ops_and_metadata(biformer_semfpn):
    """BiFormer's routing exports as TopK + Gather(Elements); the file records what it is."""
    _, path = biformer_semfpn
    ops = graph_ops(path)
    assert 'TopK' in ops and any(op.startswith('Gather') for op in ops)
    meta = graph_meta(path)
    assert meta['kind'] == 'segmentor' and meta['dynamic'] is True
    json.dumps(meta)


@pytest.mark.parametrize('shape', [(64, ), (32, 64), (64, 10000)])
def test_bad_shape_is_named(tmp_path, shape):
    with pytest.raises(ValueError, match='--shape'):
        export_onnx(torch.nn.Identity(), str(tmp_path / 'x.onnx'), shape, 'backbone')


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='config'):
        load_config(str(tmp_path / 'nope.py'))
    cfg = load_config(config_path('semfpn_stvit_s_ade20k.py'), reduced_options('semfpn_stvit_s_ade20k.py', 'stvit'))
    with pytest.raises(FileNotFoundError, match='checkpoint'):
        build_model(cfg, str(tmp_path / 'nope.pth'))
    assert osp.isfile(config_path('semfpn_stvit_s_ade20k.py'))
