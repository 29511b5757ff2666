"""UPerNet with ``--dynamic``: its pyramid pooling (adaptive average pooling to 1, 2, 3, 6) exported size-generic.

The reference is PyTorch itself: ``nn.AdaptiveAvgPool2d`` for the pooling function, the PyTorch model for the
exported graphs (one export per module: the UPerNet export takes tens of seconds).
"""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsparse.deployment import build_model, export_onnx, load_config, model_kind, verify
from mmsparse.deployment.pooling import adaptive_avg_pool2d

from .reduced import config_path, reduced_options

CONFIG = 'upernet_cloformer_s_ade20k.py'
EXPORT_SIZE = (64, 64)
# neither 6 nor 32 divides these; at stride 32 the maps are 3 x 3 and 7 x 5 (the 64 x 64 example's is 2 x 2)
OTHER_SIZES = [(87, 71), (221, 157)]
SCALES = (1, 2, 3, 6)


@pytest.mark.parametrize('h, w, k', [(87, 71, 6), (3, 3, 6), (2, 5, 3), (1, 1, 2), (13, 7, 2), (12, 18, 6),
                                     (22, 3, (6, None)), (9, 4, (None, 3))])
def test_pooling_equals_adaptive_avg_pool(h, w, k):
    """Exact bins at sizes 6 does not divide, and smaller than the grid (bins then overlap, as in PyTorch)."""
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w)) * 5 + 2
    expected = nn.AdaptiveAvgPool2d(k)(x)
    out = adaptive_avg_pool2d(x, k)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


class _Pyramid(nn.Module):
    """A stand-in backbone: a stride-16 map (4 x 4 to 13 x 9 here, smaller than 6 too) pooled to 1, 2, 3, 6."""

    def __init__(self) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(k) for k in SCALES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.avg_pool2d(x, 16, ceil_mode=True)
        return [pool(x) for pool in self.pools]


@pytest.fixture(scope='module')
def pyramid_onnx(tmp_path_factory):
    model = nn.Module()
    model.backbone = _Pyramid()
    path = str(tmp_path_factory.mktemp('onnx') / 'pyramid.onnx')
    export_onnx(model.eval(), path, EXPORT_SIZE, 'backbone', dynamic=True)
    return model, path


@pytest.mark.parametrize('size', [EXPORT_SIZE, (87, 71), (208, 145)])
def test_pooling_onnx_round_trip_at_three_sizes(pyramid_onnx, size):
    """One dynamic graph, three input sizes: ONNX Runtime equals ``nn.AdaptiveAvgPool2d`` at each."""
    model, path = pyramid_onnx
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.backbone(x)
    outs = ort.InferenceSession(path).run(None, {'input': x.numpy()})
    for k, out, ref in zip(SCALES, outs, expected):
        assert out.shape == (2, 3, k, k)
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def upernet(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config(config_path(CONFIG), reduced_options(CONFIG, 'cloformer'))
    model = build_model(cfg)
    path = str(tmp_path_factory.mktemp('onnx') / 'upernet.onnx')
    export_onnx(model, path, EXPORT_SIZE, model_kind(model), dynamic=True)
    return model, path


@pytest.mark.parametrize('batch', [1, 2])
def test_upernet_dynamic_matches_pytorch_at_three_sizes(upernet, batch):
    """seg_logits within 1e-4 relative at the export size and two sizes neither 6 nor 32 divides."""
    model, path = upernet
    rows = verify(model, path, [EXPORT_SIZE] + OTHER_SIZES, batch=batch, printer=None)
    assert [r['name'] for r in rows] == ['seg_logits'] * 3
    assert all(r['rel_err'] <= 1e-4 for r in rows)


def test_dynamic_axes_are_named(upernet):
    """The input's axes read batch / height / width, and seg_logits' follow them."""
    _, path = upernet
    graph = onnx.load(path, load_external_data=False).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert dims(graph.input[0]) == ['batch', 3, 'height', 'width']
    assert dims(graph.output[0]) == ['batch', 5, 'height', 'width']


def test_adaptive_max_pooling_is_still_refused(tmp_path):
    """A model that still has no size-generic graph gets one line naming the module, before any export."""
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveMaxPool2d(3))
    with pytest.raises(ValueError, match=r'^--dynamic: backbone\.1 \(AdaptiveMaxPool2d to 3\)[^\n]*$'):
        export_onnx(model, str(tmp_path / 'x.onnx'), EXPORT_SIZE, 'backbone', dynamic=True)
