"""The three attention operators (NCHW in and out) and :func:`set_impl`, one switch of their implementation."""
from __future__ import annotations

from .routing_attention import *  # noqa: F401,F403
from .attn_conv import *  # noqa: F401,F403
from .super_token_attention import *  # noqa: F401,F403
from .impl import accepted_impls, set_impl  # noqa: F401
