"""Device-generic ``custom_fwd`` / ``custom_bwd`` for mmsparse's ``torch.autograd.Function`` classes.

The forward records its inputs' device autocast state; the backward runs under exactly that state.
"""
# why: torch.amp.custom_fwd fixes one device_type at class definition, and a CPU backward inherits the caller's
# autocast region, which would run a float32 forward's hand-written backward in half precision
from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from mmsparse.utils.compat import autocast_state

__all__ = ['amp_forward', 'amp_backward']

#: devices whose autocast state is recorded (others run the backward as they are)
_AUTOCAST_DEVICES = ('cpu', 'cuda', 'xpu')


def _device_type(args: tuple[Any, ...]) -> str:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device.type
    return 'cpu'


def amp_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a ``Function.forward(ctx, ...)``: record the autocast state of the first tensor argument's device."""

    @functools.wraps(forward)
    def wrapper(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        device = _device_type(args)
        ctx.amp_device = device if device in _AUTOCAST_DEVICES else None
        if ctx.amp_device is not None:
            ctx.amp_enabled, ctx.amp_dtype = autocast_state(device)
        return forward(ctx, *args, **kwargs)

    return wrapper


def amp_backward(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a ``Function.backward(ctx, ...)``: run it under the autocast state its forward recorded."""

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        if ctx.amp_device is None:
            return backward(ctx, *grads)
        with torch.autocast(ctx.amp_device, enabled=ctx.amp_enabled, dtype=ctx.amp_dtype):
            return backward(ctx, *grads)

    return wrapper
