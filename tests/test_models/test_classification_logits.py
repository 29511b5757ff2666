"""The authors' classification logits, reached through our backbones: the fixtures of the three classification
networks hold their head weights and the logits their code produced. The heads are not part of mmsparse; each is
applied here as the authors' classification code computes it, on the last stage of our
backbone built by ``model_from_official`` with the converted weights. Matching logits pin the whole backbone,
last stage included, to the authors' end-to-end output."""
import pytest
import torch
import torch.nn.functional as F

from mmsparse.testing import model_from_official
from tests.conftest import assert_close_to_reference, load_fixture


def biformer_head(x, sd):
    """BN(C3) -> mean over H*W -> Linear."""
    x = F.batch_norm(x, sd['norm.running_mean'], sd['norm.running_var'], sd['norm.weight'], sd['norm.bias'],
                     training=False, eps=1e-5)
    return F.linear(x.mean((2, 3)), sd['head.weight'], sd['head.bias'])


def cloformer_head(x, sd):
    """GroupNorm(1, C3) -> global average pool -> Linear."""
    x = F.group_norm(x, 1, sd['norm.weight'], sd['norm.bias'], eps=1e-5)
    return F.linear(x.mean((2, 3)), sd['head.weight'], sd['head.bias'])


def stvit_head(x, sd):
    """1x1 conv to the projection width -> BN -> Swish -> global average pool -> Linear."""
    x = F.conv2d(x, sd['proj.weight'], sd['proj.bias'])
    x = F.batch_norm(x, sd['norm.running_mean'], sd['norm.running_var'], sd['norm.weight'], sd['norm.bias'],
                     training=False, eps=1e-5)
    x = x * torch.sigmoid(x)
    return F.linear(x.mean((2, 3)), sd['head.weight'], sd['head.bias'])


@pytest.mark.parametrize('name, head', [
    ('biformer_reduced_cls_autopad.pt', biformer_head),
    ('cloformer_reduced.pt', cloformer_head),
    ('stvit_reduced_layerscale.pt', stvit_head),
    ('stvit_reduced_nolayerscale.pt', stvit_head),
])
@pytest.mark.parametrize('impl', ['reference', 'fast'])
def test_logits_through_our_backbone_match_the_authors(name, head, impl):
    fx = load_fixture(name)
    model = model_from_official(fx['official_class'], fx['config'], fx['state_dict'])
    model.impl = impl  # the backbone's one switch reaches every operator
    for i, (x, ref) in enumerate(zip(fx['inputs'], fx['outputs'])):
        with torch.no_grad():
            last = model(x)[-1]
            logits = head(last, fx['state_dict'])
        assert logits.shape == ref['logits'].shape
        assert_close_to_reference(logits, ref['logits'], f'{name} input {i} logits ({impl})')
        assert torch.equal(logits.argmax(-1), ref['logits'].argmax(-1))
