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
