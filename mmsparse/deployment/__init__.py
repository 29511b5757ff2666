"""Deployment: ONNX export of mmsparse models (``torch.onnx``) and ONNX Runtime inference with parity checks.

``tools/deployment/export_onnx.py`` is the command line; ``docs/deployment.md`` the graph contract.
"""
from __future__ import annotations

from .export import (KINDS, MAX_SIZE, MIN_SIZE, OPSET, ExportWrapper, build_model, export_onnx, graph_ops,
                     load_config, model_kind)
from .pooling import adaptive_avg_pool2d, size_generic_pooling
from .runtime import (OPT_LEVELS, OnnxNetwork, attach_onnx, attach_to_inferencer, compare, graph_meta, make_session,
                      verify)

__all__ = [
    'KINDS', 'MAX_SIZE', 'MIN_SIZE', 'OPSET', 'OPT_LEVELS', 'ExportWrapper', 'OnnxNetwork', 'adaptive_avg_pool2d',
    'attach_onnx', 'attach_to_inferencer', 'build_model', 'compare', 'export_onnx', 'graph_meta', 'graph_ops',
    'load_config', 'make_session', 'model_kind', 'size_generic_pooling', 'verify'
]
