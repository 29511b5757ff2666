"""The three attention operators, one module each (NCHW in, NCHW out)."""
from .routing_attention import *  # noqa: F401,F403
from .attn_conv import *  # noqa: F401,F403
from .super_token_attention import *  # noqa: F401,F403
