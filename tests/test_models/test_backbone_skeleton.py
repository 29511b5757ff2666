"""The skeleton the three backbones share: names, ``impl``, output norms, freezing with ``with_cp``, and
checkpoints written by the first mmsparse layout (``tests/data/mmsparse_v1_checkpoints.pth``, saved by mmsparse
at commit 105ca5e before the rename) loading into the current modules."""
import pytest
import torch

from mmsparse.models import BiFormer, CloFormer, STViT
from mmsparse.ops import AttnConv, BiLevelRoutingAttention, GlobalAttentionLePE, SuperTokenAttention, TokenMHSA
from tests.conftest import REPO, V1_MODELS

V1_FILE = REPO / 'tests' / 'data' / 'mmsparse_v1_checkpoints.pth'

OPERATORS = (BiLevelRoutingAttention, GlobalAttentionLePE, AttnConv, SuperTokenAttention, TokenMHSA)


@pytest.fixture(scope='module')
def v1():
    return torch.load(V1_FILE, weights_only=True)


@pytest.mark.parametrize('name', list(V1_MODELS))
def test_first_layout_checkpoint_loads_and_computes_the_same(name, v1, tmp_path):
    old = v1[name]
    model = V1_MODELS[name]().eval()
    assert set(old['state_dict']) != set(model.state_dict())  # really the old names
    # as a raw state dict (no version metadata) and through an mmengine-style checkpoint of a whole model
    model.load_state_dict(old['state_dict'], strict=True)
    with torch.no_grad():
        outs = model(old['input'])
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    for ours, theirs in zip(outs, old['outputs'], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

    from mmengine.runner import load_checkpoint
    wrapper = torch.nn.Module()
    wrapper.backbone = V1_MODELS[name]().eval()
    path = tmp_path / 'v1.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in old['state_dict'].items()}}, path)
    load_checkpoint(wrapper, str(path), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(wrapper.backbone.state_dict()[k], v), k


@pytest.mark.parametrize('cls, arch', [
    (BiFormer, dict(embed_dims=[16, 32, 64, 64], depths=[1, 2, 1, 1], head_dim=16)),
    (CloFormer, 'xxs'),
    (STViT, dict(embed_dims=[16, 32, 32, 32], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 2])),
])
def test_one_layout_and_one_impl_switch(cls, arch):
    for impl in ('reference', 'fast'):
        extra = dict(n_win=2, topks=(1, 2, 2, -2)) if cls is BiFormer else {}
        model = cls(arch=arch, impl=impl, **extra)
        ops = [m for m in model.modules() if isinstance(m, OPERATORS)]
        assert ops and model.impl == impl and all(m.impl == impl for m in ops)
        tops = {k.split('.')[0] for k in model.state_dict()}
        assert tops == {'stem', 'stages', 'norm0', 'norm1', 'norm2', 'norm3'}, tops
        assert all(any(k.startswith(f'stages.{i}.blocks.') for k in model.state_dict()) for i in range(4))
    bare = cls(arch=arch, out_norm_cfg=None, out_indices=(1, 3), **extra)
    assert not any(k.startswith('norm') for k in bare.state_dict())  # None: no output-norm module at all
    assert len(bare.eval()(torch.randn(1, 3, 32, 32))) == 2


SMALL = [
    (BiFormer, dict(arch=dict(embed_dims=[16, 32, 64, 64], depths=[1, 2, 1, 1], head_dim=16), n_win=2,
                    topks=(1, 2, 2, -2))),
    (CloFormer, dict(arch='xxs')),
    (STViT, dict(arch=dict(embed_dims=[16, 32, 32, 32], depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 2]))),
]


@pytest.mark.parametrize('cls, kwargs', SMALL, ids=lambda v: getattr(v, '__name__', ''))
def test_frozen_stages_freeze_the_stem_stages_and_their_norms(cls, kwargs):
    model = cls(frozen_stages=2, **kwargs).train()
    frozen = ('stem.', 'stages.0.', 'stages.1.', 'norm0.', 'norm1.')
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen)), name
    for name, m in model.named_modules():
        if name.startswith(frozen):
            assert not m.training, name
    assert model.stages[2].training and model.norm2.training
    # frozen BN statistics stay put through a training-mode forward; trainable ones move
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    before = {n: m.running_mean.clone() for n, m in bns.items()}
    model(torch.randn(2, 3, 64, 64))
    for n, m in bns.items():
        assert torch.equal(m.running_mean, before[n]) == n.startswith(frozen), n
    with pytest.raises(ValueError, match=r'frozen_stages must be an int in \[-1, 4\]'):
        cls(frozen_stages=True, **kwargs)


@pytest.mark.parametrize('cls, kwargs', SMALL, ids=lambda v: getattr(v, '__name__', ''))
def test_with_cp_checkpoints_the_first_trainable_block_after_frozen_stages(cls, kwargs):
    model = cls(frozen_stages=1, with_cp=True, **kwargs).train()
    block = model.stages[1].blocks[0]  # its input comes from frozen stages: it does not require grad
    calls, forward = [], block.forward

    def counting_forward(*args):
        calls.append(1)
        return forward(*args)

    block.forward = counting_forward  # (forward hooks do not fire during a checkpoint's recomputation)
    outs = model(torch.randn(2, 3, 64, 64))
    assert len(calls) == 1
    sum(o.float().mean() for o in outs).backward()
    assert len(calls) == 2  # recomputed in the backward: the block was checkpointed
    assert all(p.grad is None for p in model.stages[0].parameters())
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)
