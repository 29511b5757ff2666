"""``--dynamic`` export of full-size backbones through tools/deployment/export_onnx.py, and the one-line errors of
mmsparse.deployment.dynamic.

One export per family (its smallest registered variant), shared by the comparisons: ONNX Runtime against PyTorch
at the export size and at 87 x 71, which none of the window or super-token grids divides (BiFormer-T's stride-16
map is then 6 x 5 in n_win=16 regions: regions of one token, which the export example does not have).
"""
import numpy as np
import pytest
import torch

from mmsparse.deployment import build_model, load_config
from mmsparse.deployment.dynamic import check_dynamic_example, explain_export_failure, region_sizes
from mmsparse.ops import BiLevelRoutingAttention
from tests.conftest import REPO, load_tool

ort = pytest.importorskip('onnxruntime')
tool = load_tool('tools/deployment/export_onnx.py')

#: family variant -> (config, --cfg-options, export size); BiFormer-T: n_win=16 needs 288 for 2-token regions.
#: STViT-S's export is the longest (about 90 s on two cores: tracing its symbolic shapes)
FULL_SIZE = {
    'biformer-t': ('configs/biformer/retinanet_biformer_s_coco.py', ['model.backbone.arch=tiny'], 288),
    'cloformer-xxs': ('configs/cloformer/retinanet_cloformer_xxs_coco.py', [], 160),
    'stvit-s': ('configs/stvit/retinanet_stvit_s_coco.py', [], 160),
}
ODD_SIZE = (87, 71)
RTOL = 1e-4


@pytest.fixture(scope='module', params=list(FULL_SIZE))
def exported(request, tmp_path_factory):
    """(backbone in PyTorch, ONNX Runtime session, export size) of one full-size variant, exported once."""
    config, options, size = FULL_SIZE[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    model = build_model(load_config(str(REPO / config), dict(o.split('=') for o in options) or None))
    checkpoint = folder / 'weights.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    out = folder / 'backbone.onnx'
    argv = [str(REPO / config), '--checkpoint', str(checkpoint), '--out', str(out), '--shape', str(size), str(size),
            '--backbone-only', '--dynamic'] + (['--cfg-options'] + options if options else [])
    assert tool.main(argv) == 0
    return model.backbone.eval(), ort.InferenceSession(str(out), providers=['CPUExecutionProvider']), size


def compare(backbone, session, x):
    with torch.no_grad():
        expected = [t.numpy() for t in backbone(x)]
    got = session.run(None, {'input': x.numpy()})
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
        assert err < RTOL, f'{x.shape[-2:]}: relative error {err:.2e}'


def test_full_size_export_size(exported):
    backbone, session, size = exported
    assert session.get_inputs()[0].shape == ['batch', 3, 'height', 'width']
    compare(backbone, session, torch.randn(1, 3, size, size))


def test_full_size_size_no_grid_divides(exported):
    backbone, session, _ = exported
    compare(backbone, session, torch.randn(2, 3, *ODD_SIZE))


class OneBra(torch.nn.Module):
    """A BRA layer on the input itself: its regions are ceil(size / 8) tokens high."""

    def __init__(self):
        super().__init__()
        self.attn = BiLevelRoutingAttention(16, num_heads=2, n_win=8, topk=2, auto_pad=True)

    def forward(self, input):  # noqa: A002
        return self.attn(input)


class WidthBranch(torch.nn.Module):
    """Traced at width 128: valid for widths over 100 (``exact=False``) or for 128 only (``exact=True``)."""

    def __init__(self, exact=False):
        super().__init__()
        self.exact = exact

    def forward(self, input):  # noqa: A002
        width = input.shape[3]
        return input * 2 if (width == 128 if self.exact else width > 100) else input


def export(model, example):
    dim = torch.export.Dim
    dynamic = {'input': {0: dim('batch', min=1, max=64), 2: dim('height', min=8, max=512),
                         3: dim('width', min=8, max=512)}}
    return torch.export.export(model, (example, ), dynamic_shapes=dynamic, strict=False,
                               prefer_deferred_runtime_asserts_over_guards=True)


def test_one_token_regions_refused_with_the_size_that_works():
    model, example = OneBra().eval(), torch.randn(2, 16, 8, 12)
    # the map is 8 x 12, regions 1 x 2 tokens
    assert [layer['region'] for layer in region_sizes(model, example)] == [(1, 2)]
    with pytest.raises(ValueError, match=r'^--dynamic: at the example size 8x12 .* --shape 32 32 or larger') as err:
        check_dynamic_example(model, example)
    assert '\n' not in str(err.value)
    with pytest.raises(Exception) as traced:  # what the refusal prevents: the tracer fixes the height at 8
        export(model, example)
    assert explain_export_failure(traced.value, model, example) == str(err.value)
    # the suggested size traces, and its ONNX graph also runs the one-token regions of the refused size
    bigger = torch.randn(2, 16, 32, 32)
    check_dynamic_example(model, bigger)
    with torch.no_grad():
        onnx_program = torch.onnx.export(export(model, bigger), (bigger, ), input_names=['input'], dynamo=True,
                                         opset_version=18, verbose=False)
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString(), providers=['CPUExecutionProvider'])
    for x in (example, torch.randn(1, 16, 9, 13)):
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {'input': x.numpy()})[0], expected, rtol=1e-5, atol=1e-5)


def test_explain_constraint_violation_in_one_line():
    model, example = WidthBranch(), torch.randn(2, 3, 64, 128)
    with pytest.raises(Exception) as traced:
        export(model, example)
    message = explain_export_failure(traced.value, model, example)
    assert message == ('--dynamic: torch.export cannot keep width symbolic over 8 <= width <= 512: the traced model '
                       'only holds for 101 <= width and width <= 512 (a shape-dependent branch or reshape); export '
                       'at a fixed --shape, or find the line with TORCH_LOGS="+dynamic"')
    model = WidthBranch(exact=True)
    with pytest.raises(Exception) as traced:
        export(model, example)
    assert explain_export_failure(traced.value, model, example).startswith(
        '--dynamic: torch.export cannot keep width symbolic over 8 <= width <= 512: the traced model only holds '
        'for 128 <= width and width <= 128 (')


def test_explain_other_errors():
    assert explain_export_failure(ValueError('not from torch'), WidthBranch(), torch.zeros(1)) is None
    err = torch._dynamo.exc.Unsupported('first line\nsecond line')
    assert explain_export_failure(err, WidthBranch(), torch.zeros(1)) == \
        '--dynamic: torch.export failed (Unsupported): first line'
