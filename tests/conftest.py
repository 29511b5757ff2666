"""Shared pytest fixtures.

Golden tensors from the authors' reference implementations live in ``../shared/reference/fixtures`` next to
the repository (override with ``MMSPARSE_FIXTURES=<dir>``). Tests that need them skip, saying why, when the
folder is absent.
"""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DIR = Path(os.environ.get('MMSPARSE_FIXTURES', REPO.parent / 'shared' / 'reference' / 'fixtures'))


def load_fixture(name):
    """Load ``name`` from the golden-fixture folder, or skip the calling test with the reason."""
    path = FIXTURE_DIR / name
    if not path.is_file():
        pytest.skip(f'golden fixture {path} is absent (set MMSPARSE_FIXTURES to the folder that holds it)')
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_close_to_reference(ours, ref, name='output', max_abs=1e-4, max_rel_l2=1e-5):
    """The fixtures' tolerance: max |ours - ref| < 1e-4 and ||ours - ref|| / ||ref|| < 1e-5."""
    assert ours.shape == ref.shape, f'{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}'
    diff = (ours.double() - ref.double())
    abs_err = diff.abs().max().item()
    rel = (diff.norm() / ref.double().norm().clamp_min(1e-30)).item()
    assert abs_err < max_abs and rel < max_rel_l2, f'{name}: max abs {abs_err:.3g}, rel L2 {rel:.3g}'


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


def assert_same_outputs_and_grads(model_a, model_b, x):
    """Train-mode forward + backward of two models with equal weights give equal outputs and gradients
    (used for ``with_cp``: checkpointing must not change the numbers)."""
    results = []
    for model in (model_a, model_b):
        model.train()
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        results.append(([o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters()}))
    (o1, g1), (o2, g2) = results
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)


# -------------------------------------------------- fast vs reference: outputs and every gradient

ATOL = 1e-4


def max_diff(a, b):
    return (a - b).abs().max().item()


def clone_params(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def run_fwd_bwd(module, x, seed=0):
    """Output, input gradient and parameter gradients for a fixed random cotangent."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    out = module(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    out.backward(g)
    return out.detach(), x.grad, clone_params(module)


def assert_impls_agree(module, x):
    """``set_impl(module, 'fast')`` gives the output and every gradient of ``set_impl(module, 'reference')``
    (< ATOL); ``module`` is an operator or anything that contains operators."""
    from mmsparse import set_impl
    set_impl(module, 'reference')
    ref = run_fwd_bwd(module, x)
    set_impl(module, 'fast')
    fast = run_fwd_bwd(module, x)
    assert max_diff(fast[0], ref[0]) < ATOL, f'output differs by {max_diff(fast[0], ref[0]):.3g}'
    assert max_diff(fast[1], ref[1]) < ATOL, f'input grad differs by {max_diff(fast[1], ref[1]):.3g}'
    assert ref[2].keys() == fast[2].keys()
    for name in ref[2]:
        d = max_diff(fast[2][name], ref[2][name])
        assert d < ATOL, f'grad of {name} differs by {d:.3g}'
