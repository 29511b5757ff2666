"""Mixed precision (fp16 / bf16 autocast) and torch.compile on the three backbones, fast paths (the defaults).

Reduced architectures keep the run short; the operators and their precision handling are the full ones
(BRA routing and STA association run in float32 under autocast, the rest in the autocast dtype).
"""
import pytest
import torch

from mmsparse.families import list_families
from mmsparse.utils.compat import TORCH_VERSION
from tests.conftest import AMP_BUILDERS as BUILDERS
from tests.conftest import check_finite, fwd_bwd

#: every registered family. ``BUILDERS`` (tests/conftest.py) is a table of reduced models wider than the families'
#: ``tiny`` configs (the tolerances below are set for them), so it is checked to cover exactly these families:
#: a new family fails here until it has its builder, instead of going untested.
FAMILIES = list_families()


def test_builders_cover_every_family():
    assert set(BUILDERS) == set(FAMILIES)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('name', FAMILIES)
def test_cpu_autocast_forward_backward_is_finite(name, dtype):
    if dtype == torch.float16 and TORCH_VERSION < (2, 4):
        pytest.skip(f'torch {torch.__version__} has no float16 CPU autocast (bfloat16 only before 2.4)')
    torch.manual_seed(0)
    model = BUILDERS[name]()
    model.init_weights()
    x = torch.randn(2, 3, 70, 90)  # odd size: padding paths of every operator
    outs, loss = fwd_bwd(model, x, 'cpu', dtype)
    check_finite(model, outs, loss, dtype)
    # autocast changes the rounding, not the function: close to the float32 result
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=dtype):
            low = model(x)
    for r, lo in zip(ref, low):
        rel = (lo.float() - r).norm() / r.norm()
        assert rel < 0.05, f'{name} {dtype}: relative error {rel:.3g} against float32'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device (fp16 autocast on GPU)')
@pytest.mark.parametrize('name', FAMILIES)
def test_cuda_fp16_autocast_forward_backward_is_finite(name):
    torch.manual_seed(0)
    model = BUILDERS[name]().cuda()
    outs, loss = fwd_bwd(model, torch.randn(2, 3, 70, 90, device='cuda'), 'cuda', torch.float16)
    check_finite(model, outs, loss, torch.float16)


@pytest.mark.slow
@pytest.mark.parametrize('name', FAMILIES)
def test_torch_compile_matches_eager(name):
    """torch.compile (inductor, CPU) of each backbone: runs and gives the eager outputs (1-2 min each)."""
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    x = torch.randn(1, 3, 64, 96)
    compiled = torch.compile(model)
    with torch.no_grad():
        eager = model(x)
        outs = compiled(x)
    assert len(outs) == len(eager) == 4
    for e, o in zip(eager, outs):
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-4)
