"""The feed-forward's CPU inference path (blocks of FF_ROWS_PER_BLOCK tokens) against one pass."""

from __future__ import annotations

import torch

from pipelines.models.attention import FF_ROWS_PER_BLOCK, FeedForward


def test_blocked_feedforward_equals_one_pass():
    torch.manual_seed(0)
    ff = FeedForward(16).eval()
    x = torch.randn(3, FF_ROWS_PER_BLOCK + 77, 16)  # more rows than a block, not a multiple of it
    one_pass = ff.net(x)  # with autograd: the one-pass path
    assert torch.equal(ff(x), one_pass)
    with torch.no_grad():
        blocked = ff(x)
    assert blocked.shape == x.shape
    torch.testing.assert_close(blocked, one_pass.detach(), rtol=1e-6, atol=1e-6)
