"""Features leave mmsparse's modules as contiguous NCHW tensors, and a detector's RoI features are right.

mmcv's RoIAlign indexes its input's memory as NCHW without looking at the strides. A backbone whose output norm
returned a permuted (channels-last strided) map made the FPN keep that layout, and Mask R-CNN's RoI heads then
pooled the wrong values: the ONNX graph of such a detector (which is contiguous) disagreed with PyTorch, and
detectors trained from scratch with the output LayerNorm did not learn.
"""
import pytest
import torch
from mmcv.ops import roi_align

from mmsparse.families import get_family, list_families
from mmsparse.models.layers import LayerNorm2d
from mmsparse.models.necks import MultiLevelSparseAttn, SparseAttnFPN
from mmsparse.models.plugins import SparseAttnBlock
from mmsparse.registry import MODELS

from tests.conftest import BIFORMER_REDUCED


def test_roi_align_reads_memory_as_nchw():
    """The premise: the same values with channels-last strides pool differently (if mmcv ever honours strides,
    this test says so and the contiguity contract below becomes a convenience)."""
    x = torch.randn(1, 4, 16, 16)
    rois = torch.tensor([[0., 1., 1., 10., 12.]])
    a = roi_align(x, rois, (7, 7), 1.0, 2, 'avg', True)
    b = roi_align(x.contiguous(memory_format=torch.channels_last), rois, (7, 7), 1.0, 2, 'avg', True)
    assert not torch.allclose(a, b)


def test_layernorm2d_returns_a_contiguous_map_of_the_right_values():
    norm = LayerNorm2d(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1., 7.))
        norm.bias.fill_(0.5)
    x = torch.randn(2, 6, 5, 3)
    out = norm(x)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * torch.arange(1., 7.).view(1, 6, 1, 1) + 0.5
    assert out.is_contiguous() and torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize('family', list_families())
def test_backbone_outputs_are_contiguous(family):
    """Every family's tiny backbone: with the default output norms, without them and with LN2d ones."""
    for kwargs in ({}, dict(out_norm_cfg=None), dict(out_norm_cfg=dict(type='LN2d', eps=1e-6))):
        torch.manual_seed(0)
        model = MODELS.build(dict(get_family(family).tiny_cfg(), **kwargs))
        with torch.no_grad():
            outs = model.eval()(torch.randn(1, 3, 72, 88))
        assert len(outs) == 4
        assert all(o.is_contiguous() for o in outs), [o.stride() for o in outs]


def test_necks_and_plugin_keep_contiguous_maps():
    channels = [16, 32, 32, 32]
    feats = [torch.randn(1, c, 32 // 2**i, 40 // 2**i) for i, c in enumerate(channels)]
    attn = dict(type='BiLevelRoutingAttention', num_heads=2, n_win=2, topk=2, auto_pad=True)
    necks = [SparseAttnFPN(channels, 16, num_outs=5, attn_levels=(3, ), attn_cfg=attn),
             MultiLevelSparseAttn(channels, attn_levels=(2, 3), attn_cfg=attn)]
    with torch.no_grad():
        for neck in necks:
            assert all(o.is_contiguous() for o in neck.eval()(feats)), type(neck).__name__
        block = SparseAttnBlock(32, attn_cfg=attn).eval()
        assert block(feats[1]).is_contiguous()


def test_mask_rcnn_roi_features_equal_those_of_contiguous_features():
    """A BiFormer Mask R-CNN with the default output LayerNorm: the RoI extractor pools from the FPN maps what it
    pools from contiguous copies of them (before the fix: differences of the order of the features)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import mmsparse  # noqa: F401
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile('configs/biformer/maskrcnn_biformer_s_coco.py')
    cfg.model.backbone = dict(type='mmsparse.BiFormer', **BIFORMER_REDUCED)  # default out_norm_cfg: LN2d
    cfg.model.neck.in_channels = BIFORMER_REDUCED['arch']['embed_dims']
    cfg.model.data_preprocessor = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    rois = torch.tensor([[0., 4., 6., 60., 50.], [0., 10., 2., 90., 70.]])
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 96, 128))
        extractor = model.roi_head.bbox_roi_extractor
        pooled = extractor(feats[:extractor.num_inputs], rois)
        reference = extractor([f.contiguous() for f in feats[:extractor.num_inputs]], rois)
    assert pooled.abs().max() > 0
    torch.testing.assert_close(pooled, reference, rtol=0, atol=0)
