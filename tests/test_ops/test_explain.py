"""Each operator's ``explain(x, query_yx)`` agrees with its own forward.

The forwards run with ``impl='fast'`` (fused SDPA, fused projections, channels-last layouts), a code path that
shares no attention-weight step with ``explain``; values are projected here with the operators' layers and
the layouts written out by hand. The property checked is the one the pictures rely on: the explained weights,
applied to the values, give the forward's output at the query.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmsparse import families
from mmsparse.ops import AttnConv, BiLevelRoutingAttention, SuperTokenAttention

QUERIES = [(0, 0), (5, 7), (10, 12)]  # corner, interior, bottom-right corner of an 11 x 13 map


def _capture_input(module: torch.nn.Module, store: dict, key: str) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_pre_hook(lambda m, args: store.setdefault(key, args[0].detach()))


# --------------------------------------------------------------------------------------------------------- BRA
@torch.no_grad()
def test_bra_weights_times_gathered_values_give_the_forward_output():
    torch.manual_seed(0)
    op = BiLevelRoutingAttention(16, num_heads=2, n_win=3, topk=2, auto_pad=True, impl='fast').eval()
    op.record_routing = True
    x = torch.randn(1, 16, 11, 13)
    seen = {}
    _capture_input(op.proj, seen, 'pre_proj')  # (1, P, T, C): attention output + LePE
    op(x)
    # the padded map cut into 3 x 3 regions of 4 x 5 tokens, written out here
    xp = F.pad(x, (0, 2, 0, 1))[0].permute(1, 2, 0)  # (12, 15, C)
    regions = xp.reshape(3, 4, 3, 5, 16).permute(0, 2, 1, 3, 4).reshape(9, 20, 16)
    v = op.qkv(regions)[..., 32:]  # [q | k | v], qk_dim = 16
    lepe = op.lepe(op.qkv(xp)[..., 32:].permute(2, 0, 1)[None])[0]  # depthwise conv over the padded V map
    for fy, fx in QUERIES:
        out = op.explain(x, (fy, fx))
        region, token = (fy // 4) * 3 + fx // 5, (fy % 4) * 5 + fx % 5
        assert out['region'] == region and out['layout'] == (12, 15, 4, 5)
        assert out['routed'] == op.routing_idx[0, region].tolist()
        given = op.explain(x, (fy, fx), routing_idx=op.routing_idx[0])
        assert given['routed'] == out['routed'] and torch.equal(given['per_head'], out['per_head'])
        values = v[out['routed']].reshape(-1, 2, 8)  # (topk * T, heads, d), head-major channels
        mixed = torch.einsum('ms,smd->md', out['per_head'], values).reshape(16)
        want = seen['pre_proj'][0, region, token] - lepe[:, fy, fx]
        torch.testing.assert_close(mixed, want, rtol=1e-5, atol=1e-5)
        # the placed map: a distribution over the routed regions' tokens, zero elsewhere
        weights = out['weights']
        assert weights.shape == (12, 15) and weights.sum().item() == pytest.approx(1, abs=1e-5)
        routed = torch.zeros(3, 3, dtype=torch.bool)
        routed.view(-1)[out['routed']] = True
        assert (weights[~routed.repeat_interleave(4, 0).repeat_interleave(5, 1)] == 0).all()


@torch.no_grad()
def test_bra_given_routing_is_used():
    torch.manual_seed(0)
    op = BiLevelRoutingAttention(8, num_heads=2, n_win=2, topk=1, impl='fast').eval()
    x = torch.randn(1, 8, 4, 4)
    own = op.explain(x, (0, 0))
    other = [r for r in range(4) if r != own['routed'][0]][0]
    forced = op.explain(x, (0, 0), routing_idx=torch.full((4, 1), other))
    assert forced['routed'] == [other] and forced['weights'].view(2, 2, 2, 2).sum((1, 3)).view(-1)[other] > 0.99


# ---------------------------------------------------------------------------------------------------- AttnConv
@torch.no_grad()
def test_attnconv_weights_reproduce_the_branch_outputs():
    torch.manual_seed(0)
    op = AttnConv(16, num_heads=4, group_split=[1, 1, 2], kernel_sizes=[3, 5], window_size=4, impl='fast').eval()
    x = torch.randn(1, 16, 11, 13)
    branches = op.forward_branches(x)[0]  # (C, H, W): local groups first, global last
    # pooled keys/values: 4 x 4 windows, a border window averages its real pixels only
    pooled = F.avg_pool2d(x, 4, 4, ceil_mode=True, count_include_pad=False)
    assert pooled.shape[-2:] == (3, 4)
    v = op.global_kv(pooled)[0, 8:].reshape(2, 4, 12)  # (heads, d, keys), heads channel-major
    for fy, fx in QUERIES:
        out = op.explain(x, (fy, fx))
        glob = out['global']
        torch.testing.assert_close(torch.einsum('mk,mdk->md', glob['per_head'], v).reshape(8),
                                   branches[8:, fy, fx], rtol=1e-5, atol=1e-5)
        assert glob['weights'].shape == (3, 4) and glob['weights'].sum().item() == pytest.approx(1, abs=1e-5)
        assert out['weights'] is glob['weights']
        start = 0
        for group, to_qkv, conv in zip(out['local'], op.qkvs, op.convs):
            k, ch = group['kernel_size'], group['gate'].numel()
            u_v = F.pad(to_qkv(x)[0, 2 * ch:], (k // 2,) * 4)  # zeros outside the map, as the conv pads
            window = u_v[:, fy:fy + k, fx:fx + k]
            mixed = (group['per_channel'] * window).sum((1, 2)) + group['gate'] * conv.bias[2 * ch:]
            torch.testing.assert_close(mixed, branches[start:start + ch, fy, fx], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(group['weights'], group['per_channel'].abs().mean(0))
            start += ch


@torch.no_grad()
def test_attnconv_without_global_group_places_the_local_window():
    torch.manual_seed(0)
    op = AttnConv(8, num_heads=2, group_split=[2, 0], kernel_sizes=[5]).eval()
    x = torch.randn(1, 8, 9, 10)
    for fy, fx in [(0, 0), (4, 5)]:
        out = op.explain(x, (fy, fx))
        assert out['global'] is None and out['weights'].shape == (9, 10)
        local = out['local'][0]['weights']  # (5, 5) centred on the query
        torch.testing.assert_close(out['weights'][max(fy - 2, 0):fy + 3, max(fx - 2, 0):fx + 3],
                                   local[max(2 - fy, 0):, max(2 - fx, 0):])
        assert out['weights'].sum().item() == pytest.approx(local[max(2 - fy, 0):, max(2 - fx, 0):].sum().item())


# --------------------------------------------------------------------------------------------------------- STA
@pytest.fixture
def sta() -> tuple[SuperTokenAttention, torch.Tensor]:
    """4 x 4 super tokens on an 11 x 13 map: a 3 x 4 grid, the last row and column of cells partly padding."""
    torch.manual_seed(0)
    return SuperTokenAttention(16, num_heads=2, stoken_size=4, impl='fast').eval(), torch.randn(1, 16, 11, 13)


@torch.no_grad()
def test_sta_association_reconstructs_the_forward_output(sta):
    """Every pixel's output is its association-weighted sum of the refined super tokens around its cell."""
    op, x = sta
    seen = {}
    op.refine.register_forward_hook(lambda m, args, out: seen.update(refined=out[0]))
    want = op(x)[0]
    refined = F.pad(seen['refined'], (1, 1, 1, 1))  # (C, 3 + 2, 4 + 2): zero tokens outside the grid
    out = op.explain(x, (5, 7))
    assoc = out['association']
    assert assoc.shape == (9, 11, 13) and out['grid'] == (3, 4)
    torch.testing.assert_close(assoc.sum(0), torch.ones(11, 13))
    gy, gx = torch.meshgrid(torch.arange(11) // 4, torch.arange(13) // 4, indexing='ij')
    rebuilt = sum(assoc[k] * refined[:, gy + k // 3, gx + k % 3] for k in range(9))
    torch.testing.assert_close(rebuilt, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(out['assignment'], op.assignment(x)[0])


@torch.no_grad()
def test_sta_query_weights_and_super_token_attention(sta):
    op, x = sta
    seen = {}
    _capture_input(op.refine, seen, 'tokens')
    _capture_input(op.refine.proj, seen, 'pre_proj')
    op(x)
    qkv = op.refine.qkv(seen['tokens'])[0].reshape(2, 3, 8, 12)  # per head: [q | k | v], 3 x 4 tokens
    for fy, fx in QUERIES:
        out = op.explain(x, (fy, fx))
        gy, gx = fy // 4, fx // 4
        attn = out['stoken_attention']  # (heads, 3, 4)
        assert attn.shape == (2, 3, 4)
        mixed = torch.einsum('mt,mdt->md', attn.reshape(2, 12), qkv[:, 2]).reshape(16)
        torch.testing.assert_close(mixed, seen['pre_proj'][0, :, gy, gx], rtol=1e-5, atol=1e-5)
        # the query's association on the grid: its 9 weights at the cells around its own, dropped outside
        grid = torch.zeros(5, 6)
        grid[gy:gy + 3, gx:gx + 3] = out['association'][:, fy, fx].view(3, 3)
        torch.testing.assert_close(out['weights'], grid[1:4, 1:5])


def test_sta_global_cell_cannot_explain():
    op = SuperTokenAttention(8, num_heads=2, stoken_size=1)
    with pytest.raises(ValueError, match='1x1'):
        op.explain(torch.randn(1, 8, 4, 4), (0, 0))


# ------------------------------------------------------------------------------------------------ the contract
@pytest.mark.parametrize('op', [
    BiLevelRoutingAttention(16, num_heads=2, n_win=3, topk=2, auto_pad=True),
    AttnConv(16, num_heads=2, group_split=[1, 1], kernel_sizes=[3], window_size=4),
    SuperTokenAttention(16, num_heads=2, stoken_size=4)], ids=lambda op: type(op).__name__)
def test_spec_explainer_follows_the_contract(op):
    """Through the family spec: a 2-D ``weights`` over the map or a coarser grid covering it, and a caption."""
    x = torch.randn(2, 16, 11, 13)
    out = families.operator_spec(op).explainer()(op.eval(), x, (10, 12))
    weights = out['weights']
    assert weights.dim() == 2 and isinstance(out['caption'], str) and out['caption']
    cell = -(-11 // weights.shape[0])
    assert weights.shape[0] * cell >= 11 and weights.shape[1] * cell >= 13 and torch.isfinite(weights).all()
    with pytest.raises(ValueError, match='outside'):
        op.explain(x, (11, 0))
