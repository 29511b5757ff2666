"""A run of ``tools/analysis_tools/benchmark.py``: its cases measured, or its inference backends timed, as the
tool prints and records them (the method is in the tool's docstring)."""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import platform
import time
from typing import Any

import torch
import torch.nn as nn

from .cases import BACKBONES
from .measure import gemm_gflops, inference_runners, limit_address_space, run_case, time_backends
from .report import case_label, plot_sweeps, ratios, table


def allocator_settings() -> dict[str, str]:
    """The environment that changes how this process allocates memory (glibc ``MALLOC_*``, ``LD_PRELOAD``)."""
    # why recorded with every result: on CPU the allocator moves the timings by up to ~20 % (docs/benchmarks.md)
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith('MALLOC_') or k == 'LD_PRELOAD'}


def backend_model(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, str]:
    """``(module, image batch, label)`` for ``--backend``: a backbone, or a config's network as its ONNX graph
    sees it (segmentor: logits; detector: head or neck outputs, see mmsparse.deployment)."""
    import mmsparse  # noqa: F401
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, *args.input_size, generator=torch.Generator().manual_seed(1))
    if args.backbone:
        from mmsparse.registry import MODELS
        typ, kwargs = BACKBONES[args.backbone]
        module = MODELS.build(dict(type=f'mmsparse.{typ}', **kwargs, **({'impl': args.impl} if args.impl else {})))
        module.init_weights()
        return module.eval(), x, f'{args.backbone} {args.batch}x3x{args.input_size[0]}x{args.input_size[1]}'
    from mmsparse.apis import build_model
    from mmsparse.deployment import ExportWrapper, load_config, model_kind
    model = build_model(load_config(args.config), impl=args.impl)
    return (ExportWrapper(model, model_kind(model)).eval(), x,
            f'{osp.basename(args.config)} {args.batch}x3x{args.input_size[0]}x{args.input_size[1]}')


def run_backends(args: argparse.Namespace) -> dict[str, Any]:
    """``--backend``: inference time of each backend, interleaved, with GFLOP/s and the GEMM-limit fraction."""
    if not (args.backbone or args.config) or args.device != 'cpu':
        raise SystemExit('--backend takes --backbone or --config, on --device cpu')
    if args.threads:
        torch.set_num_threads(args.threads)
    gemm = gemm_gflops('cpu', args.gemm_size) if args.gemm_size else None
    module, x, label = backend_model(args)
    macs = None
    if not args.no_flops:
        from mmsparse.utils.complexity import flop_count
        try:
            macs = int(flop_count(module, (x, ))['flops'])
        except Exception as e:  # timing still stands
            print(f'   flop count failed: {type(e).__name__}: {e}')
    runners = inference_runners(module, x, args.backend, opt_level=args.ort_opt_level)
    load = os.getloadavg()
    times = time_backends(runners, args.warmup, args.repeats)
    load_after = os.getloadavg()
    base = sorted(times['pytorch'])[len(times['pytorch']) // 2] if 'pytorch' in times else None
    rows = []
    print(f'== {label}, {torch.get_num_threads()} threads, GEMM limit '
          f'{gemm["gemm_gflops"]:.1f} GFLOP/s' if gemm else f'== {label}')
    print(f'   load average (1 min) {load[0]:.2f} before, {load_after[0]:.2f} after; '
          f'{args.warmup} warm-up + {args.repeats} interleaved runs')
    print(f'   {"backend":<12} {"median ms":>10} {"min ms":>9} {"GFLOP/s":>8} {"GEMM %":>7} {"vs eager":>9}')
    for name, ts in times.items():
        median = sorted(ts)[len(ts) // 2]
        gflops = 2 * macs / median / 1e9 if macs else None
        row: dict[str, Any] = dict(backend=name, median_s=median, min_s=min(ts), gflops=gflops,
                                   gemm_fraction=gflops / gemm['gemm_gflops'] if gflops and gemm else None,
                                   speedup_vs_eager=base / median if base else None)
        rows.append(row)
        fmt = lambda v, f: format(v, f) if v is not None else '-'  # noqa: E731
        print(f'   {name:<12} {median * 1e3:>10.1f} {min(ts) * 1e3:>9.1f} {fmt(gflops, ">8.1f")} '
              f'{fmt(row["gemm_fraction"] and 100 * row["gemm_fraction"], ">7.1f")} '
              f'{fmt(row["speedup_vs_eager"], ">8.2f")}x')
    result = dict(label=label, threads=torch.get_num_threads(), macs=macs, gemm=gemm, load=[load, load_after],
                  ort_opt_level=args.ort_opt_level, rows=rows)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    return result


def run_cases(args: argparse.Namespace, cases: list[tuple[dict, list]]) -> list[dict]:
    """Measure ``[(case, impls), ...]`` with the settings of ``benchmark.py``'s ``args``, printing each table and
    writing ``args.out`` (JSON) after every case; returns the records."""
    if {args.device} | {c['device'] for c, _ in cases} == {'cpu'}:
        # the timing process gets the same guard as the memory subprocesses
        limit_address_space(args.mem_limit_gib, 'cpu')
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = dict(machine=platform.machine(), processor=platform.processor(), python=platform.python_version(),
                torch=torch.__version__, threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                device=args.device, cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                warmup=args.warmup, repeats=args.repeats, date=time.strftime('%Y-%m-%d %H:%M'),
                allocator=allocator_settings())
    gemm = gemm_gflops(args.device, args.gemm_size) if args.gemm_size else None
    meta.update(gemm or {})
    if gemm:
        print(f'== fp32 GEMM {args.gemm_size}^2 on {args.device}, {meta["threads"]} threads: '
              f'{gemm["gemm_gflops"]:.1f} GFLOP/s', flush=True)
    print('== allocator: ' + (' '.join(f'{k}={v}' for k, v in meta['allocator'].items()) or 'defaults'),
          flush=True)

    def dump(records: list[dict]) -> None:
        if args.out:  # rewritten after every case, so a long suite that is stopped keeps what it measured
            os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
            with open(args.out, 'w') as f:
                json.dump(dict(meta=meta, records=records), f, indent=1)

    records: list[dict] = []
    for case, impls in cases:
        print(f'== {case_label(case)}: {", ".join(i or "default" for i in impls)}', flush=True)
        try:
            results = run_case(case, impls, case.get('warmup', args.warmup), case.get('repeats', args.repeats),
                               memory=not args.no_memory, mem_limit_gib=args.mem_limit_gib,
                               flops=not args.no_flops, gemm=gemm)
        except Exception as e:  # a suite goes on; the error is recorded
            if not args.suite:
                raise
            print(f'   error: {type(e).__name__}: {e}', flush=True)
            records.append(dict(case=case, results={}, error=f'{type(e).__name__}: {e}'))
            dump(records)
            continue
        records.append(dict(case=case, results=results, ratios=ratios(results)))
        dump(records)
        print(table([records[-1]]), flush=True)
    print('\n' + table([r for r in records if r['results']]))
    if args.out:
        print(f'wrote {args.out}')
        if args.suite:
            for path in plot_sweeps(args.out, args.figures):
                print('wrote', path)
    return records
