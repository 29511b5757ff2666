"""The prepared GPU check of ``tools/analysis_tools/gpu_check.py`` (steps and output in the tool's docstring).

:func:`run_check` runs every step, writing ``gpu_check.json`` / ``gpu_check.md`` as results arrive; ``--dry-run``
runs the same code on CPU with tiny shapes. The deterministic-mode CUDA tests need ``CUBLAS_WORKSPACE_CONFIG``,
which the tool sets before torch is imported.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsparse.families import LiveMapping
from . import REPO


def _operator_cases() -> dict[str, tuple[type, dict, Any, Any]]:
    from mmsparse.families import get_family, list_families
    return {case_name: (op.cls, dict(case.kwargs), case.shape, case.dry_shape)
            for spec in map(get_family, list_families()) for op in spec.operators
            for case_name, case in op.device_cases.items()}


def _detectors() -> dict[str, tuple]:
    from mmsparse.families import get_family, list_families
    return {name: tuple(step) for spec in map(get_family, list_families()) for name, step in spec.detectors.items()}


#: operator cases: name -> (operator class, kwargs, input shape on the device, input shape in a dry run), from each
#: family's operators (``device_cases``)
OPERATORS = LiveMapping(_operator_cases, 'device-check operator cases')
DRY_RUN_N_WIN = 4  # BRA regions per side at the dry run's tiny shapes

#: detector steps: name -> (config, backbone preset of benchmark.py), from each family's ``detectors``
DETECTORS = LiveMapping(_detectors, 'device-check detector steps')
DRY_RUN_DETECTOR = ('maskrcnn_demo', ('configs/demo/maskrcnn_demo_synthetic.py', 'biformer-t'))


class Check:
    """The run's state: settings, the results so far, and writing them out."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.out = args.out
        self.budget = args.budget_s
        self.t0 = time.perf_counter()
        self.device = torch.device('cpu' if self.dry else 'cuda')
        self.warmup, self.repeats = (1, 2) if self.dry else (2, 5)
        self.result: dict[str, Any] = dict(meta=self.meta(), tests=None, operators=[], detectors=[])

    def meta(self) -> dict[str, Any]:
        """Versions, device and start time of the run."""
        versions = {}
        for pkg in ('mmengine', 'mmcv', 'mmdet', 'mmseg'):
            try:
                versions[pkg] = __import__(pkg).__version__
            except Exception as e:  # not installed here, or broken: the record says which
                versions[pkg] = f'unavailable ({type(e).__name__})'
        cuda = torch.cuda.is_available()
        return dict(dry_run=self.dry, torch=torch.__version__, cuda=torch.version.cuda,
                    device_name=torch.cuda.get_device_name(0) if cuda and not self.dry else platform.processor(),
                    python=platform.python_version(), packages=versions,
                    started=time.strftime('%Y-%m-%d %H:%M:%S'))

    def elapsed(self) -> float:
        """Seconds since the check started."""
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > self.budget

    def save(self) -> None:
        """Write ``gpu_check.json`` and ``gpu_check.md`` to ``out``."""
        os.makedirs(self.out, exist_ok=True)
        self.result['meta']['elapsed_s'] = round(self.elapsed(), 1)
        with open(osp.join(self.out, 'gpu_check.json'), 'w') as f:
            json.dump(self.result, f, indent=1)
        with open(osp.join(self.out, 'gpu_check.md'), 'w') as f:
            f.write(markdown(self.result))


# ---------------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype_name: str) -> torch.autocast:
    """Autocast to ``'bf16'`` / ``'fp16'``, or autocast disabled for ``'fp32'``."""
    if dtype_name == 'fp32':
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dict(bf16=torch.bfloat16, fp16=torch.float16)[dtype_name])


def timed(step: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> tuple[float, int | None]:
    """(median seconds, peak extra bytes or None on CPU) of ``step()``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    peak = None
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    return statistics.median(times), peak


def fwd_bwd_step(module: nn.Module, x: torch.Tensor, device: torch.device, dtype_name: str) -> Callable[[], None]:
    """A zero-argument step: forward of ``module`` on ``x`` under autocast, then the backward of a scalar."""
    def step() -> None:
        module.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_()
        with autocast(device, dtype_name):
            out = module(xi)
        out = out if isinstance(out, (tuple, list)) else (out, )
        sum(o.float().square().mean() for o in out).backward()
    return step


def sdpa_roofline(flop: float, device: torch.device, dtype_name: str, warmup: int, repeats: int) -> dict[str, Any]:
    """TFLOP/s of dense SDPA fwd+bwd doing about ``flop`` FLOPs (3 x the 4*S^2*D*H of the forward matmuls)."""
    heads, d = 8, 64
    s = max(128, int(round(math.sqrt(flop / (12 * heads * d)) / 128)) * 128)
    dtype = torch.float32 if dtype_name == 'fp32' else dict(bf16=torch.bfloat16, fp16=torch.float16)[dtype_name]
    q, k, v = (torch.randn(1, heads, s, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))

    def step() -> None:
        for t in (q, k, v):
            t.grad = None
        F.scaled_dot_product_attention(q, k, v).float().square().mean().backward()

    seconds, _ = timed(step, device, warmup, repeats)
    sdpa_flop = 12 * heads * d * s * s
    return dict(seq_len=s, flop=sdpa_flop, median_s=seconds, tflops=sdpa_flop / seconds / 1e12)


# ---------------------------------------------------------------------------------------------------- steps


def run_tests(check: Check) -> None:
    """Run the CUDA and FlexAttention test files (240 s at most) and record their summary."""
    files = ['tests/test_ops/test_cuda.py', 'tests/test_ops/test_flex_attention.py']
    cmd = [sys.executable, '-m', 'pytest', *files, '-q', '-rs', '-p', 'no:cacheprovider', '-W', 'ignore']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        lines = proc.stdout.strip().splitlines()
        summary = lines[-1] if lines else proc.stderr.strip()[-500:]
        rc = proc.returncode
        failed = [ln for ln in lines if ln.startswith(('FAILED', 'ERROR'))]
        skipped = [ln for ln in lines if ln.startswith('SKIPPED')]
    except subprocess.TimeoutExpired:
        rc, summary, failed, skipped = None, 'timed out after 240 s', [], []
    check.result['tests'] = dict(files=files, returncode=rc, summary=summary, failed=failed[:30],
                                 skipped=skipped[:30], seconds=round(time.perf_counter() - t, 1))
    check.save()


def build_operator(cls: type, kwargs: dict, shape: Any, dry: bool) -> nn.Module:
    """The operator for an input of ``shape`` (seeded), with BRA's ``n_win`` shrunk for a dry run."""
    kwargs = dict(kwargs)
    if dry and 'n_win' in kwargs:
        kwargs['n_win'] = DRY_RUN_N_WIN
    torch.manual_seed(0)
    return cls(shape[1], **kwargs)


def forward_macs(module: nn.Module, x: torch.Tensor) -> tuple[int | None, str]:
    """``(multiply-adds of one forward or None, note)``."""
    try:
        from mmsparse.utils.complexity import flop_count
        return int(flop_count(module, (x, ))['flops']), 'flop_count of the fast path, one forward'
    except Exception as e:  # mmengine missing on the device, say: times still stand
        return None, f'flop_count failed: {type(e).__name__}: {e}'


def run_operators(check: Check) -> None:
    """Time fwd+bwd of every operator case, each implementation, fp32 and bf16, against dense SDPA."""
    from mmsparse.ops import accepted_impls, set_impl
    dev = check.device
    for name, (cls, kwargs, shape, dry_shape) in OPERATORS.items():
        shape = dry_shape if check.dry else shape
        module = build_operator(cls, kwargs, shape, check.dry).to(dev).train()
        x = torch.randn(shape, device=dev)
        set_impl(module, 'fast')
        macs, macs_note = forward_macs(module, x)
        flop = 6 * macs if macs else None
        impls = accepted_impls(module)  # BRA: reference, fast, flex
        for dtype_name in ('fp32', 'bf16'):
            roof = None
            for impl in impls:
                rec = dict(case=name, shape=list(shape), impl=impl, dtype=dtype_name, macs=macs, macs_note=macs_note)
                if check.over_budget():
                    rec['skipped'] = f'time budget of {check.budget:.0f} s spent'
                else:
                    if flop and roof is None:
                        roof = sdpa_roofline(flop, dev, dtype_name, check.warmup, check.repeats)
                    rec.update(measure_impl(module, x, impl, dev, dtype_name, check, flop, roof))
                check.result['operators'].append(rec)
                check.save()
        del module, x
        if dev.type == 'cuda':
            torch.cuda.empty_cache()


def measure_impl(module: nn.Module, x: torch.Tensor, impl: str, dev: torch.device, dtype_name: str, check: Check,
                 flop: float | None, roof: dict[str, Any] | None) -> dict[str, Any]:
    """The record of one implementation: time, memory and TFLOP/s against ``roof``, or the error."""
    from mmsparse.ops import set_impl
    set_impl(module, impl)
    rec: dict[str, Any] = {}
    if impl == 'flex' and dev.type == 'cpu':
        rec['note'] = 'FlexAttention has no backward on CPU: the flex layer ran the fast path'
    try:
        seconds, peak = timed(fwd_bwd_step(module, x, dev, dtype_name), dev, check.warmup, check.repeats)
    except Exception as e:  # one failing implementation must not stop the check
        return dict(rec, error=f'{type(e).__name__}: {str(e)[:400]}')
    rec.update(median_s=seconds, peak_mem_bytes=peak)
    if flop:
        rec['tflops'] = flop / seconds / 1e12
        rec['sdpa'] = roof
        rec['of_sdpa'] = rec['tflops'] / roof['tflops']  # type: ignore[index]  # run_operators sets it with flop
    return rec


def detector_skip_reason(dry: bool) -> str | None:
    """Why the detector steps cannot run here (a missing package or compiled mmcv.ops), or None."""
    for pkg in ('mmengine', 'mmcv', 'mmdet'):
        if importlib.util.find_spec(pkg) is None:
            return f'{pkg} is not installed'
    try:
        import mmcv.ops  # noqa: F401  (RoIAlign, NMS: compiled)
    except Exception as e:
        return f'mmcv.ops (compiled RoIAlign / NMS) is not available: {type(e).__name__}: {e}'
    return None


def run_detectors(check: Check) -> None:
    """Time a training step of each detector and its backbone (AMP on the device, fp32 in a dry run)."""
    from .cases import build
    from .measure import one_run
    dev = check.device
    detectors = dict([DRY_RUN_DETECTOR]) if check.dry else DETECTORS
    batch, size = (1, [96, 128]) if check.dry else (2, [800, 1333])
    dtype_name = 'fp32' if check.dry else 'fp16'  # AMP; mmcv's CPU NMS takes no half
    reason = detector_skip_reason(check.dry)
    for name, (config, backbone) in detectors.items():
        steps: list[tuple[str, dict[str, Any]]] = [
            ('backbone', dict(kind='backbone', name=backbone, batch=batch, input_size=size, mode='fwdbwd')),
            ('detector', dict(kind='config', name=config, batch=batch, input_size=size, mode='train'))]
        for what, case in steps:
            rec = dict(model=name, step=what, config=config if what == 'detector' else backbone, batch=batch,
                       input_size=size, dtype=dtype_name)
            if check.over_budget():
                rec['skipped'] = f'time budget of {check.budget:.0f} s spent'
            elif what == 'detector' and reason:
                rec['skipped'] = reason
            else:
                try:
                    built = build(case, device=dev)
                    mode = case['mode']
                    seconds, peak = timed(lambda: one_run(built, mode, dev, dtype_name), dev, 1,
                                          check.repeats if check.dry else 3)
                    rec.update(median_s=seconds, peak_mem_bytes=peak)
                    del built
                except Exception as e:
                    rec['error'] = f'{type(e).__name__}: {str(e)[:400]}'
                if dev.type == 'cuda':
                    torch.cuda.empty_cache()
            check.result['detectors'].append(rec)
            check.save()


# ---------------------------------------------------------------------------------------------------- report


def _num(v: float | None, fmt: str) -> str:
    return 'n/a' if v is None else format(v, fmt)


def _mem(b: float | None) -> str:
    return 'n/a' if b is None else f'{b / 2**20:.0f} MiB'


def _status(r: dict[str, Any]) -> str:
    return r.get('skipped') and f'skipped: {r["skipped"]}' or r.get('error') and f'error: {r["error"]}' or ''


def markdown(result: dict[str, Any]) -> str:
    """The Markdown report of a check's results."""
    m = result['meta']
    lines = [f'# gpu_check {"(dry run, CPU)" if m["dry_run"] else ""}', '',
             f'torch {m["torch"]}, CUDA {m["cuda"]}, device: {m["device_name"]}; '
             + ', '.join(f'{k} {v}' for k, v in m['packages'].items()) + f'; elapsed {m.get("elapsed_s")} s', '']
    t = result.get('tests')
    if t:
        lines += ['## Tests', '', f'`{" ".join(t["files"])}`: {t["summary"]} (rc {t["returncode"]}, '
                  f'{t["seconds"]} s)', ''] + [f'- {ln}' for ln in t['failed'] + t['skipped']] + ['']
    lines += ['## Operators, fwd+bwd', '', '| case | impl | dtype | median | peak mem | TFLOP/s | SDPA TFLOP/s | '
              'of SDPA | note |', '|---|---|---|---|---|---|---|---|---|']
    for r in result['operators']:
        sd = r.get('sdpa') or {}
        lines.append(f'| {r["case"]} {"x".join(map(str, r["shape"]))} | {r["impl"]} | {r["dtype"]} | '
                     f'{_num(r.get("median_s") and r["median_s"] * 1e3, ".2f")} ms | {_mem(r.get("peak_mem_bytes"))} | '
                     f'{_num(r.get("tflops"), ".3f")} | {_num(sd.get("tflops"), ".3f")} | '
                     f'{_num(r.get("of_sdpa") and 100 * r["of_sdpa"], ".0f")} % | {_status(r) or r.get("note", "")} |')
    lines += ['', '## Training steps (AMP)', '', '| model | step | input | dtype | median | peak mem | note |',
              '|---|---|---|---|---|---|---|']
    for r in result['detectors']:
        lines.append(f'| {r["model"]} | {r["step"]} ({r["config"]}) | {r["batch"]}x3x{r["input_size"][0]}x'
                     f'{r["input_size"][1]} | {r["dtype"]} | {_num(r.get("median_s"), ".3f")} s | '
                     f'{_mem(r.get("peak_mem_bytes"))} | {_status(r)} |')
    return '\n'.join(lines) + '\n'


def run_check(args: argparse.Namespace) -> Check:
    """Every step of the check for ``args`` (``out``, ``dry_run``, ``budget_s``, ``skip_tests``); the results are
    saved after each, and returned as the :class:`Check`."""
    check = Check(args)
    check.save()
    if not args.skip_tests:
        run_tests(check)
    import mmsparse  # noqa: F401  (registers the models; needs mmengine)
    run_operators(check)
    run_detectors(check)
    check.save()
    return check
