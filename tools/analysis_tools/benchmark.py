"""Speed and memory of mmsparse operators, backbones and whole configs, reference vs fast implementations.

Examples::

    # one BRA layer at BiFormer-S COCO stage-1 shape, both implementations interleaved, with ratios
    python tools/analysis_tools/benchmark.py --layer bra --shape 2,64,200,304 \\
        --layer-args num_heads=2 n_win=16 topk=1 --compare reference fast
    # a backbone at 224x224, batch 8, inference only, bf16 autocast
    python tools/analysis_tools/benchmark.py --backbone biformer-s --input-size 224 224 --batch 8 \\
        --mode fwd --dtype bf16
    # a detector training step (loss + backward + optimizer step) on synthetic boxes and masks
    python tools/analysis_tools/benchmark.py --config configs/biformer/maskrcnn_biformer_s_coco.py \\
        --input-size 800 1216 --batch 2 --mode train
    # a detector end to end, image file in, detections out: mmdet eager vs the exported graph in ONNX Runtime
    python tools/analysis_tools/benchmark.py --end2end configs/biformer/retinanet_biformer_s_coco.py \
        --checkpoint retinanet_biformer_s.pth --input-size 800 1216 --image demo.jpg --threads 2 --repeats 5 \
        --profile --out work_dirs/end2end/retinanet_biformer_s.json
    # everything docs/benchmarks.md reports (JSON + the PNG plots under docs/figures/)
    python tools/analysis_tools/benchmark.py --suite cpu_reference_vs_fast --threads 1 \\
        --out docs/benchmarks.json

The pieces live in ``mmsparse/benchmark/`` (``cases``: what is built; ``measure``: time, memory, FLOPs;
``report``: table and plots; ``runs``: a whole run; ``end2end``: ``--end2end``, whose method is in that
module's docstring); suites are YAML files in ``tools/analysis_tools/suites/``
(``--suite`` takes a file path or the name of one of those).

Method.

* Time: ``--warmup`` untimed runs, then ``--repeats`` timed runs; the median is reported (and min/max). On GPU
  every run is bracketed by ``torch.cuda.synchronize``. With ``--compare A B`` both implementations are built
  in one process (B loads A's weights; each has its own optimizer in a config's ``train`` step), get the same
  inputs and run alternately (A, B, A, B, ...), so load from other processes hits both alike. The speed-up is
  ``time(A) / time(B)`` of the medians, the memory ratio ``mem(B) / mem(A)`` (JSON: ``ratios``).
* Memory: on GPU ``torch.cuda.max_memory_allocated`` over one run after a reset, minus what was allocated
  before it. On CPU the case runs in a *fresh subprocess*: after one warm-up run the kernel's peak-RSS counter
  is reset (``/proc/self/clear_refs``, value 5) and the reported number is ``VmHWM - VmRSS`` across one run,
  i.e. the extra resident memory the run needed on top of the model and inputs (gradients included: each run
  starts with ``grad = None``). ``MALLOC_MMAP_THRESHOLD_`` is fixed so that freed tensors leave the RSS (glibc
  would otherwise keep them for reuse and hide peaks). ``peak_mem_total_bytes`` is the subprocess's whole
  high-water mark (CPU: ``VmHWM``, interpreter, model and optimizer state included; GPU:
  ``max_memory_allocated``). GPU cases also measure memory in a fresh subprocess. On CPU the subprocess (and
  the timing process) run under ``RLIMIT_AS`` (``--mem-limit-gib``) so that a case that would exhaust the
  machine fails alone, reported as ``"error"``; CUDA runs get no ``RLIMIT_AS`` (it breaks CUDA's start-up).
* Parameters: trainable and frozen parameter count.
* FLOPs: ``mmsparse.utils.complexity.flop_count`` counts the multiply-adds (MACs) of one forward, attention
  matmuls included (``macs``; for a config: backbone + neck only, so a config's rates are lower bounds);
  ``null`` with a reason when the count fails. One timed run does ``flop_per_run`` = 2 x MACs FLOPs in
  ``fwd`` mode and 3 x 2 x MACs in ``fwdbwd`` / ``train`` (backward ~ twice the forward; the optimizer step is
  not counted). ``gflops`` = ``flop_per_run`` / median time.
* Roofline: once per run a plain float32 ``torch.mm`` of two ``--gemm-size`` squares (default 2048) is timed on
  the same device with the same threads, 10 times after a warm-up; the best sample is ``meta.gemm_gflops``
  (load only lowers a sample; the median is ``meta.gemm_median_gflops``). Each case reports
  ``gemm_fraction`` = ``gflops / gemm_gflops`` (also for fp16 / bf16 cases: the roofline stays fp32).
* Compilation: ``--compile`` (or ``compile: true`` in a suite case) times the layer / backbone through
  ``torch.compile`` (inductor); the first warm-up run compiles. FLOPs are counted on the eager module.
* Allocator: ``meta.allocator`` records the ``MALLOC_*`` / ``LD_PRELOAD`` environment of the run (the memory
  subprocesses set their own ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``, see Memory).

Implementations: ``reference`` (the authors-exact path) and ``fast`` (the default), for every operator family;
``--impl flex`` for BRA (layers, BiFormer and models holding BRA).
Layers and backbones are built with ``impl=``; a config's operators are switched after building.
"""
import argparse
import json
import os.path as osp

import torch
from mmengine.config import DictAction

from mmsparse.benchmark import REPO
from mmsparse.benchmark.cases import ALL_IMPLS, BACKBONES, IMPLS, LAYERS, MODES, load_suite
from mmsparse.benchmark.measure import BACKENDS, DTYPES, memory_worker
from mmsparse.benchmark.report import case_label, plot_sweeps
from mmsparse.benchmark.runs import run_backends, run_cases
from mmsparse.deployment.end2end import MASKS


def parse_value(text):
    """``'16'`` -> 16, ``'[3,1]'`` -> [3, 1], ``'True'`` -> True, ``'None'`` -> None, anything else a string."""
    try:
        return json.loads(text.replace("'", '"').replace('True', 'true').replace('False', 'false')
                          .replace('None', 'null'))
    except ValueError:
        return text


def parse_kwargs(items):
    out = {}
    for item in items or []:
        if '=' not in item:
            raise ValueError(f'--layer-args entries must look like key=value, got {item!r}')
        k, v = item.split('=', 1)
        out[k] = parse_value(v)
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument('--layer', choices=sorted(LAYERS), help='one operator')
    what.add_argument('--backbone', choices=sorted(BACKBONES), help='one backbone')
    what.add_argument('--config', help='an mmdet/mmseg config file (whole model, synthetic ground truth)')
    what.add_argument('--suite', metavar='PATH_OR_NAME',
                      help='a suite file (YAML/JSON), or the name of one in tools/analysis_tools/suites/')
    what.add_argument('--end2end', metavar='CONFIG',
                      help='an mmdet detector config: image file in, detections out, mmdet eager against the '
                      'end-to-end ONNX graph in ONNX Runtime (needs --image; --input-size is the size every image '
                      'is resized to, the graph\'s fixed input)')
    what.add_argument('--plot', metavar='JSON', help='draw the size-sweep plots of a suite result file')
    what.add_argument('--_memory-worker', dest='memory_worker', help=argparse.SUPPRESS)
    p.add_argument('--shape', help='layer input N,C,H,W (e.g. 2,64,200,304)')
    p.add_argument('--layer-args', nargs='*', default=[],
                   help='constructor overrides of the --layer or --backbone, key=value (e.g. n_win=8)')
    p.add_argument('--input-size', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--dtype', choices=sorted(DTYPES), default='fp32',
                   help='fp32, or fp16/bf16 autocast (weights stay fp32)')
    p.add_argument('--mode', choices=MODES, default='fwdbwd',
                   help='fwd (no grad), fwdbwd (forward + backward), train (configs: + AdamW step)')
    p.add_argument('--impl', choices=ALL_IMPLS, help='implementation (default: as built, i.e. fast)')
    p.add_argument('--compare', nargs=2, choices=IMPLS, metavar=('IMPL_A', 'IMPL_B'),
                   help='two implementations, interleaved in one process; ratios are A / B')
    p.add_argument('--compile', action='store_true',
                   help='--layer / --backbone: run the module through torch.compile (inductor); the first '
                        'warm-up run compiles')
    p.add_argument('--backend', nargs='+', choices=BACKENDS, metavar='BACKEND',
                   help='--backbone / --config inference (fwd) through any of pytorch (eager), compile '
                   '(torch.compile) and onnxruntime (torch.onnx export, CPU session), interleaved in one process')
    p.add_argument('--ort-opt-level', choices=('disable', 'basic', 'extended', 'all'), default='all',
                   help='--backend onnxruntime: ONNX Runtime graph optimisation level (default all)')
    p.add_argument('--checkpoint', help='--end2end: the weights (default: the initialised model)')
    p.add_argument('--image', help='--end2end: the image file both paths read')
    p.add_argument('--profile', action='store_true',
                   help='--end2end: write ONNX Runtime\'s profile and print the top node types and nodes')
    p.add_argument('--masks', choices=MASKS, default='full',
                   help='--end2end: a Mask R-CNN graph\'s masks (export_onnx.py --masks): pasted into the input, or '
                   'the 28 x 28 RoI masks that the runtime pastes into the image')
    p.add_argument('--work-dir', default='work_dirs/end2end', help='--end2end: where the ONNX file and profile go')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                   help='--end2end: override config entries')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, help='torch.set_num_threads for every process (and the GEMM)')
    p.add_argument('--no-memory', action='store_true', help='skip the memory subprocesses')
    p.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    p.add_argument('--gemm-size', type=int, default=2048, help='side of the fp32 GEMM roofline; 0 skips it')
    p.add_argument('--mem-limit-gib', type=float, default=20., help='RLIMIT_AS of CPU processes; 0: none')
    p.add_argument('--only', help='suite: run only cases whose label contains this text')
    p.add_argument('--out', help='write the results as JSON here')
    p.add_argument('--figures', default=osp.join(REPO, 'docs/figures'), help='--plot / --suite: PNG folder')
    args = p.parse_args(argv)
    if args.compile and not (args.layer or args.backbone):
        p.error('--compile applies to --layer and --backbone (a suite case sets compile: true itself)')
    if args.compile and args.warmup < 1:
        p.error('--compile needs --warmup >= 1: the first run compiles and must not be timed')
    if args.end2end and not args.image:
        p.error('--end2end needs --image IMG')
    if args.layer:
        if not args.shape:
            p.error('--layer needs --shape N,C,H,W')
        try:
            args.shape = [int(v) for v in args.shape.split(',')]
        except ValueError:
            p.error(f'--shape must be N,C,H,W integers, got {args.shape!r}')
        if len(args.shape) != 4:
            p.error(f'--shape must be N,C,H,W, got {",".join(map(str, args.shape))!r}')
    return args


def cases_of(args):
    """``[(case, impls), ...]`` from the command line (a suite, or the one case it describes), defaults filled."""
    if args.suite:
        cases = load_suite(args.suite)
    elif args.layer:
        cases = [dict(kind='layer', name=args.layer, shape=args.shape, layer_args=parse_kwargs(args.layer_args))]
    elif args.backbone:
        cases = [dict(kind='backbone', name=args.backbone, batch=args.batch, input_size=args.input_size,
                      layer_args=parse_kwargs(args.layer_args))]
    else:
        cases = [dict(kind='config', name=args.config, batch=args.batch, input_size=args.input_size)]
    if not args.suite:
        if args.compile:
            cases[0]['compile'] = True
        cases = [(cases[0], list(args.compare) if args.compare else [args.impl])]
    out = []
    for case, impls in cases:
        case = dict(dict(mode=args.mode, device=args.device, dtype=args.dtype, threads=args.threads), **case)
        if case['mode'] == 'train' and case['kind'] != 'config':
            case['mode'] = 'fwdbwd'  # a layer or backbone has no optimizer step of its own
        if not args.only or args.only in case_label(case):
            out.append((case, impls))
    return out


def main(argv=None):
    return run(parse_args(argv))


def run(args):
    """What ``main`` does with the parsed ``args``."""
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return None
    if args.plot:
        for path in plot_sweeps(args.plot, args.figures):
            print('wrote', path)
        return None
    if args.backend:
        return run_backends(args)
    if args.end2end:
        from mmsparse.benchmark.end2end import run_end2end
        return run_end2end(args.end2end, args.input_size, args.image, checkpoint=args.checkpoint,
                           threads=args.threads, warmup=args.warmup, repeats=args.repeats, work_dir=args.work_dir,
                           profile=args.profile, out=args.out, cfg_options=args.cfg_options, masks=args.masks)
    return run_cases(args, cases_of(args))


if __name__ == '__main__':
    main()
