"""Shared pytest fixtures.

Golden tensors from the authors' reference implementations and their official state-dict key lists live in
``tests/data`` (see its README). A parity test whose file is missing fails, naming the path: a clone that lost
them must not pass by skipping.
"""
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / 'tests' / 'data'
FIXTURE_DIR = DATA_DIR / 'fixtures'
KEYS_DIR = DATA_DIR / 'keys'


def data_file(path):
    """``path`` if it is a file, else fail the calling test naming it (parity data never skips)."""
    path = Path(path)
    if not path.is_file():
        pytest.fail(f'test data file {path} is missing (tests/data ships with the repository; restore it from git)')
    return path


def load_fixture(name):
    """Load ``name`` (relative to ``tests/data/fixtures``), or fail the calling test naming the missing file."""
    return torch.load(data_file(FIXTURE_DIR / name), map_location='cpu', weights_only=True)


def key_list_path(name):
    """The official key list ``tests/data/keys/<name>.txt``, or fail the calling test naming the missing file."""
    return data_file(KEYS_DIR / f'{name}.txt')


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
    """``module.impl = 'fast'`` gives the output and every gradient of ``module.impl = 'reference'`` (< ATOL)."""
    module.impl = 'reference'
    ref = run_fwd_bwd(module, x)
    module.impl = 'fast'
    fast = run_fwd_bwd(module, x)
    assert max_diff(fast[0], ref[0]) < ATOL, f'output differs by {max_diff(fast[0], ref[0]):.3g}'
    assert max_diff(fast[1], ref[1]) < ATOL, f'input grad differs by {max_diff(fast[1], ref[1]):.3g}'
    assert ref[2].keys() == fast[2].keys()
    for name in ref[2]:
        d = max_diff(fast[2][name], ref[2][name])
        assert d < ATOL, f'grad of {name} differs by {d:.3g}'
