"""flop_count: SDPA counted like the explicit matmuls, the operators' products counted, params, get_flops tool."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsparse.models.plugins import SparseAttnBlock
from mmsparse.ops import AttnConv, TokenMHSA
from mmsparse.utils import flop_count

from tests.conftest import REPO  # noqa: E402


class SDPA(nn.Module):

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class ExplicitAttention(nn.Module):

    def forward(self, q, k, v):
        return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v


def test_sdpa_counted_with_formula_and_like_matmul():
    b, h, lq, lk, dqk, dv = 2, 3, 5, 7, 4, 6
    args = (torch.randn(b, h, lq, dqk), torch.randn(b, h, lk, dqk), torch.randn(b, h, lk, dv))
    sdpa = flop_count(SDPA(), args)
    assert sdpa['flops'] == b * h * lq * lk * (dqk + dv) == 2100
    assert sdpa['by_operator'] == {'scaled_dot_product_attention': 2100}
    assert flop_count(ExplicitAttention(), args)['flops'] == sdpa['flops']
    # three batch dims, and a 3-d call
    args = (torch.randn(2, 2, 3, 9, 8), torch.randn(2, 2, 3, 11, 8), torch.randn(2, 2, 3, 11, 8))
    assert flop_count(SDPA(), args)['flops'] == 12 * 9 * 11 * 16
    assert flop_count(SDPA(), tuple(a[0, 0] for a in args))['flops'] == 3 * 9 * 11 * 16


def test_operator_paths_count_the_same():
    """The fast (SDPA) and reference (explicit matmul) implementations of an operator get the same count."""
    x = torch.randn(1, 32, 12, 10)
    torch.manual_seed(0)
    fused = TokenMHSA(32, 4, impl='fast')
    math = TokenMHSA(32, 4, impl='reference')
    math.load_state_dict(fused.state_dict())
    a, b = flop_count(fused, x), flop_count(math, x)
    n = 12 * 10
    attention = 4 * n * n * (8 + 8)
    convs = n * 32 * 96 + n * 32 * 32  # qkv and proj 1x1
    assert a['flops'] == b['flops'] == attention + convs
    fused = AttnConv(32, 4, [2, 2], [3], window_size=2, impl='fast')
    ref = AttnConv(32, 4, [2, 2], [3], window_size=2, impl='reference')
    ref.load_state_dict(fused.state_dict())
    assert flop_count(fused, x)['flops'] == flop_count(ref, x)['flops']


def test_params_and_by_module():
    block = SparseAttnBlock(32, dict(type='BiLevelRoutingAttention', num_heads=4, n_win=4, topk=2), ffn_ratio=2.)
    block.train()
    res = flop_count(block, torch.randn(1, 32, 16, 16))
    assert block.training  # mode restored
    assert res['params'] == sum(p.numel() for p in block.parameters())
    assert res['by_module'][''] == res['flops'] > 0
    assert res['by_module']['attn'] + res['by_module']['ffn'] + res['by_module']['norm1'] \
        + res['by_module']['norm2'] == res['flops']
    # BRA: qkv and proj linears over 256 tokens, then 16 regions x 16 queries x (2 regions x 16 keys) x (8 + 8)
    # per head, summed over 4 heads: the token attention is counted whatever its implementation
    attn = res['by_module']['attn']
    tokens = 16 * 16
    linear = tokens * 32 * 96 + tokens * 32 * 32
    lepe = tokens * 32 * 5 * 5
    routing = 16 * 32 * 16  # region-to-region logits: (16 x 32) @ (32 x 16)
    token_attention = 4 * 16 * 16 * 32 * (8 + 8)  # heads x regions x queries x keys x (q + v head dims)
    assert attn == linear + lepe + routing + token_attention


@pytest.mark.parametrize('config,expect', [
    ('configs/plugins/retinanet_r50-sta-c4-c5_fpn_1x_coco.py', 'SparseAttnBlock'),
    ('configs/plugins/upernet_r50_sta-fpn_4xb4-160k_ade20k-512x512.py', 'neck'),
])
def test_get_flops_tool(config, expect):
    out = subprocess.run([sys.executable, 'tools/analysis_tools/get_flops.py', config, '--shape', '96', '128'],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert 'Params' in text and 'FLOPs' in text and expect in text
    assert 'input shape: (1, 3, 96, 128)' in text
