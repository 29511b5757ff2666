"""The pieces of ``tools/analysis_tools/benchmark.py`` (the CLI):

* :mod:`.cases`: what is measured: case dicts, the layer / backbone presets, building one model of a case with a
  given implementation, and suite files (``tools/analysis_tools/suites/*.yaml``).
* :mod:`.measure`: how: interleaved timing, peak memory in a fresh subprocess, FLOPs, the GEMM roofline.
* :mod:`.report`: the Markdown table, the ratios and the size-sweep plots.
"""
import os.path as osp

#: the repository root (configs, suites and figures are found from it)
REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
