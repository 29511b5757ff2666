"""One prepared GPU check for a lent device (<= 8 minutes): CUDA tests, operators against an SDPA roofline, detectors.

Usage::

    python tools/analysis_tools/gpu_check.py --out $OUT            # on the device
    python tools/analysis_tools/gpu_check.py --out gpu_check_out --dry-run  # here, CPU, tiny shapes (CI runs this)

Steps (each result is written to ``gpu_check.json`` / ``gpu_check.md`` in ``--out`` as soon as it exists, so a
run stopped by its time limit still leaves what it measured):

1. ``pytest tests/test_ops/test_cuda.py tests/test_ops/test_flex_attention.py`` (summary line and skip reasons).
2. Operators at the issue's shapes, forward + backward of ``sum(mean(out²))``, in fp32 and bf16 autocast, each
   implementation (BRA: reference, fast, flex): median time, peak memory (CUDA: ``max_memory_allocated`` over one
   run minus what was allocated before), achieved TFLOP/s (3 x 2 x the fast path's forward MACs from
   ``flop_count``, the same for every implementation: same maths) and, as the roofline, dense
   ``scaled_dot_product_attention`` fwd+bwd in the same dtype at the same FLOPs (batch 1, 8 heads of 64, the
   sequence length that gives those FLOPs); ``of_sdpa`` = TFLOP/s / SDPA's TFLOP/s.
3. A training step (loss + backward + AdamW) of Mask R-CNN with BiFormer-S, STViT-S and CloFormer-S at 1333x800,
   batch 2, AMP (fp16 autocast): median time, peak memory. Mask R-CNN needs mmdet and mmcv's compiled ops
   (RoIAlign); where they are missing the step is skipped with the reason recorded, and the backbone's own
   fwd+bwd at the same size and precision (measured for every model anyway) remains.

``--dry-run`` runs the same code on CPU with tiny shapes, a reduced detector and fp32 detector steps (mmcv's
CPU NMS rejects half precision); memory is not measured on CPU (``null``).
"""
import argparse
import os
import os.path as osp
import sys

os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # the deterministic-mode tests need it

import torch  # noqa: E402

from mmsparse.benchmark.device_check import markdown, run_check  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True, help='folder for gpu_check.json and gpu_check.md')
    p.add_argument('--dry-run', action='store_true', help='CPU, tiny shapes: checks the script itself')
    p.add_argument('--budget-s', type=float, default=450., help='skip what would start after this many seconds')
    p.add_argument('--skip-tests', action='store_true', help='do not run the pytest step')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit('gpu_check: no CUDA device here; use --dry-run to check the script on CPU')
    check = run_check(args)
    print(markdown(check.result))
    print(f'wrote {osp.join(args.out, "gpu_check.json")} and gpu_check.md in {check.elapsed():.0f} s')


if __name__ == '__main__':
    main()
