"""The pieces of ``tools/analysis_tools/benchmark.py`` (the CLI):

* :mod:`.cases`: what is measured: case dicts, the layer / backbone presets, building one model of a case with a
  given implementation, and suite files (``tools/analysis_tools/suites/*.yaml``).
* :mod:`.measure`: how: interleaved timing, peak memory in a fresh subprocess, FLOPs, the GEMM roofline.
* :mod:`.report`: the Markdown table, the ratios and the size-sweep plots.
"""
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
for _path, _first in ((REPO, True), (osp.join(REPO, 'tools'), False)):
    if _path not in sys.path:  # mmsparse from this checkout; tools/_common.py appended (tools/test.py shadows)
        sys.path.insert(0, _path) if _first else sys.path.append(_path)
