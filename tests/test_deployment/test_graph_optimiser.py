"""torch.onnx's final graph optimisation under :func:`mmsparse.deployment.export.without_slow_rewrites`: every
default onnxscript rewrite rule but ``SlicesSplit`` still applies, and the rule list is restored afterwards."""
import numpy as np
import onnx
import pytest
import torch

from mmsparse.deployment.export import SKIPPED_REWRITE_RULES, without_slow_rewrites

ort = pytest.importorskip('onnxruntime')
rewriter = pytest.importorskip('onnxscript.rewriter')


class HalvesAndCast(torch.nn.Module):
    """The two halves of the last axis (the pattern ``SlicesSplit`` looks for) and a Cast to the input's own dtype
    (what ``CastIdentity`` removes)."""

    def forward(self, x):
        return x[..., :2] * 2, x[..., 2:].to(torch.float32) + 1


def export(**kwargs):
    x = torch.randn(1, 3, 4)
    program = torch.onnx.export(HalvesAndCast().eval(), (x, ), input_names=['x'], dynamo=True, opset_version=18,
                                verbose=False, **kwargs)
    ops = [node.op_type for node in program.model_proto.graph.node]
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=['CPUExecutionProvider'])
    for got, expected in zip(session.run(None, {'x': x.numpy()}), HalvesAndCast()(x)):
        np.testing.assert_allclose(got, expected.numpy())
    return ops


def rule_names():
    return [getattr(rule, 'name', None) for rule in rewriter._DEFAULT_REWRITE_RULES]


def test_one_rule_left_out_the_others_apply():
    assert SKIPPED_REWRITE_RULES == ('SlicesSplit', )
    before, names = rewriter._DEFAULT_REWRITE_RULES, rule_names()
    assert 'SlicesSplit' in names
    default_ops = export()
    with without_slow_rewrites():
        assert rule_names() == [name for name in names if name != 'SlicesSplit']
        ops = export()
    assert rewriter._DEFAULT_REWRITE_RULES is before
    assert ops == default_ops == ['Slice', 'Mul', 'Slice', 'Add']  # 5-input Slices (with steps): no SlicesSplit match
    assert 'Cast' in export(optimize=False)  # CastIdentity, still applied, had a Cast to remove


def test_rules_restored_after_an_error():
    before = rewriter._DEFAULT_REWRITE_RULES
    with pytest.raises(RuntimeError, match='in the block'):
        with without_slow_rewrites():
            raise RuntimeError('in the block')
    assert rewriter._DEFAULT_REWRITE_RULES is before


def test_exporter_optimises_without_the_rule(tmp_path, monkeypatch):
    """mmsparse's exporter runs torch.onnx's optimiser with the rule left out."""
    from mmsparse.deployment import export as export_module
    seen = []
    onnx_export = torch.onnx.export

    def spy(*args, **kwargs):
        seen.append(rule_names())
        return onnx_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, 'export', spy)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = HalvesAndCast()

    out = tmp_path / 'halves.onnx'
    export_module.export_onnx(Model().eval(), out, (64, 64), 'backbone')
    assert len(seen) == 1 and 'SlicesSplit' not in seen[0] and 'CastIdentity' in seen[0]
    assert [node.op_type for node in onnx.load(out).graph.node] == ['Slice', 'Mul', 'Slice', 'Add']
