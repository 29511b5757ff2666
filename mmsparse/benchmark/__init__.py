"""What ``tools/analysis_tools/`` (``benchmark.py``, ``get_flops.py``, ``gpu_check.py``) and ``tools/demo.py``
do besides parsing arguments:

* :mod:`.cases`: what is measured: case dicts, the layer / backbone presets, building one model of a case with a
  given implementation, and suite files (``tools/analysis_tools/suites/*.yaml``).
* :mod:`.measure`: how: interleaved timing, peak memory in a fresh subprocess, FLOPs, the GEMM roofline.
* :mod:`.report`: the Markdown table, the ratios and the size-sweep plots.
* :mod:`.runs`: a benchmark run (cases or inference backends) as ``benchmark.py`` prints and records it.
* :mod:`.end2end`: ``benchmark.py --end2end``: a detector, image file in, detections out, mmdet eager against its
  end-to-end graph in ONNX Runtime.
* :mod:`.flops`: the module and input ``get_flops.py`` counts, and its summary.
* :mod:`.device_check`: the prepared GPU check of ``gpu_check.py``.
* :mod:`.demo`: the demo of ``tools/demo.py`` (synthetic data or real images).

Not imported by ``import mmsparse``: import the submodule you need (they import torch, mmengine and more).
"""
from __future__ import annotations

import os.path as osp

#: the repository root (configs, suites, tools and figures are found from it)
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
