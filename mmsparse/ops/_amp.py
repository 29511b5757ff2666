"""Device-generic autocast handling for mmsparse's custom ``torch.autograd.Function`` classes.

``torch.amp.custom_fwd`` / ``custom_bwd`` take one ``device_type`` fixed when the class is defined, but the
operators run on CPU and CUDA alike. These two decorators do the same job for whatever device the inputs live
on: the forward records that device's autocast state (enabled, dtype), and the backward runs under exactly that
state. Without them a backward called inside an ``autocast`` region (on CPU the backward runs in the caller's
thread, so it inherits the region) would cast the hand-written backward's convolutions and matmuls to half
precision although its forward ran in float32.
"""
import functools

import torch

from mmsparse.utils.compat import autocast_state

__all__ = ['amp_forward', 'amp_backward']

#: devices whose autocast state is recorded (others run the backward as they are)
_AUTOCAST_DEVICES = ('cpu', 'cuda', 'xpu')


def _device_type(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device.type
    return 'cpu'


def amp_forward(forward):
    """Decorate a ``Function.forward(ctx, ...)``: record the autocast state of the first tensor argument's device."""

    @functools.wraps(forward)
    def wrapper(ctx, *args, **kwargs):
        device = _device_type(args)
        ctx.amp_device = device if device in _AUTOCAST_DEVICES else None
        if ctx.amp_device is not None:
            ctx.amp_enabled, ctx.amp_dtype = autocast_state(device)
        return forward(ctx, *args, **kwargs)

    return wrapper


def amp_backward(backward):
    """Decorate a ``Function.backward(ctx, ...)``: run it under the autocast state its forward recorded."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if ctx.amp_device is None:
            return backward(ctx, *grads)
        with torch.autocast(ctx.amp_device, enabled=ctx.amp_enabled, dtype=ctx.amp_dtype):
            return backward(ctx, *grads)

    return wrapper
