"""The three attention operators, one module each (NCHW in, NCHW out), and :func:`set_impl`, the one switch of
their implementation in any model that contains them."""
from .routing_attention import *  # noqa: F401,F403
from .attn_conv import *  # noqa: F401,F403
from .super_token_attention import *  # noqa: F401,F403
from .impl import accepted_impls, set_impl  # noqa: F401
