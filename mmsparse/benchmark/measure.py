"""Measuring a case: interleaved timing, peak memory in a fresh subprocess, FLOPs and the GEMM roofline.

The method is described in the docstring of ``tools/analysis_tools/benchmark.py``; keep the two in step.
``python -m mmsparse.benchmark.measure PAYLOAD`` is the memory subprocess (:func:`memory_worker`).
"""
from __future__ import annotations

import copy
import gc
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import torch

from . import REPO
from .cases import Built, build

DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def autocast_ctx(device: torch.device, dtype_name: str) -> torch.autocast:
    """Autocast to ``dtype_name`` (a key of :data:`DTYPES`), or autocast disabled for ``'fp32'``."""
    dtype = DTYPES[dtype_name]
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def one_run(built: Built, mode: str, device: torch.device, dtype_name: str) -> None:
    """One step of a :class:`~.cases.Built` model: no grad for ``fwd``, gradients dropped afterwards."""
    built.module.train(mode != 'fwd')
    with (torch.no_grad() if mode == 'fwd' else torch.enable_grad()), autocast_ctx(device, dtype_name):
        built.run(mode)
    if mode != 'fwd':
        for p in built.module.parameters():
            p.grad = None  # every run allocates its gradients afresh, as a step after zero_grad() does


def time_runs(builts: dict[str, Built], mode: str, device: torch.device, dtype_name: str, warmup: int,
              repeats: int) -> dict[str, list[float]]:
    """Warm-up, then the models run alternately; returns name -> seconds of each run."""
    for _ in range(warmup):
        for built in builts.values():
            one_run(built, mode, device, dtype_name)
    times: dict[str, list[float]] = {name: [] for name in builts}
    for _ in range(repeats):
        for name, built in builts.items():
            sync(device)
            t0 = time.perf_counter()
            one_run(built, mode, device, dtype_name)
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def build_all(case: dict, impls: Sequence[str | None], device: torch.device) -> dict[str, Built]:
    """name -> Built for each implementation (``[None]``: as built, named ``'default'``), with equal weights.

    Each model is built on its own (with its own optimizer for a config's ``train`` step), then loads the first
    one's state dict.
    """
    builts: dict[str, Built] = {}
    for impl in impls:
        built = build(case, impl, device)
        if builts:
            built.module.load_state_dict(next(iter(builts.values())).module.state_dict())
        builts[impl or 'default'] = built
    return builts


def gemm_gflops(device: str | torch.device, size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """GFLOP/s of a float32 ``torch.mm`` of two ``size x size`` matrices: the roofline of a run.

    Timed with the current thread count, ``repeats`` times after a warm-up: ``gemm_gflops`` is the best run,
    ``gemm_median_gflops`` the median.
    """
    # why the best: a limit is what the machine can do; load only ever lowers a sample (a short burst's median
    # moved by up to a third on a shared 2-core machine and flattered the fractions)
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(device) for _ in range(2))
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):  # the first run is a warm-up
            sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            times.append(time.perf_counter() - t0)
    best, median = min(times[1:]), statistics.median(times[1:])
    flop = 2 * size**3
    return dict(gemm_gflops=flop / best / 1e9, gemm_median_gflops=flop / median / 1e9, gemm_size=size,
                gemm_best_s=best, gemm_median_s=median)


def flop_per_run(macs: int, mode: str) -> int:
    """FLOPs of one timed run from the forward multiply-adds: 2 per MAC, x3 for ``fwdbwd`` / ``train``."""
    # why x3: the backward costs about twice the forward (input and weight gradients); the optimizer step is not
    # counted
    return 2 * macs * (1 if mode == 'fwd' else 3)


class _ExtractFeat(torch.nn.Module):
    """A detector / segmentor seen as its feature extractor (backbone + neck), for FLOP counting."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model.extract_feat(x)  # type: ignore[operator]  # mmdet / mmseg models' extract_feat


def macs_of(built: Built) -> tuple[int | None, str]:
    """``(multiply-adds of one forward or None, note)`` through ``mmsparse.utils.complexity.flop_count``."""
    try:
        from mmsparse.utils.complexity import flop_count
    except ImportError as e:
        return None, f'mmsparse.utils.complexity not available ({e})'
    module: torch.nn.Module = copy.deepcopy(built.module)
    args = built.args
    note = 'flop_count, one forward'
    if isinstance(args[0], dict):  # a whole model: backbone + neck on the batch tensor (heads not counted)
        module, args = _ExtractFeat(module), (args[0]['inputs'], )
        note = 'flop_count of extract_feat (backbone + neck only), one forward'
    try:
        return int(flop_count(module, args)['flops']), note
    except Exception as e:  # reported, not fatal: timing and memory still stand
        return None, f'flop_count failed: {type(e).__name__}: {e}'


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def measure_peak_memory(built: Built, mode: str, device: torch.device, dtype_name: str) -> tuple[int, str]:
    """``(peak extra bytes of one run, method)``; the method is in benchmark.py's docstring."""
    one_run(built, mode, device, dtype_name)  # warm-up: lazy allocations, kernel caches, optimizer state
    gc.collect()
    if device.type == 'cuda':
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        one_run(built, mode, device, dtype_name)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base, 'cuda max_memory_allocated delta'
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current RSS
    base = _status_kib('VmRSS')
    one_run(built, mode, device, dtype_name)
    return (_status_kib('VmHWM') - base) * 1024, 'cpu peak RSS delta (VmHWM reset), fresh subprocess'


def limit_address_space(mem_limit_gib: float | None, device: str | torch.device) -> bool:
    """``RLIMIT_AS`` of ``mem_limit_gib`` on CPU runs; none on CUDA (it breaks CUDA's start-up). True if set."""
    if not mem_limit_gib or torch.device(device).type != 'cpu':
        return False
    limit = int(mem_limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return True


def memory_in_subprocess(case: dict, impl: str | None, mem_limit_gib: float | None,
                         timeout: float) -> dict[str, Any]:
    """:func:`measure_peak_memory` of one implementation in a fresh interpreter; a dict, with ``error`` on failure."""
    payload = json.dumps(dict(case=case, impl=impl, mem_limit_gib=mem_limit_gib))
    # a fixed mmap threshold: every large tensor is its own mapping, returned to the system when freed, so RSS
    # follows live memory (glibc's adaptive threshold would recycle freed heap and hide peaks)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', MALLOC_TRIM_THRESHOLD_='131072')
    try:
        res = subprocess.run([sys.executable, '-m', 'mmsparse.benchmark.measure', payload],
                             capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return dict(error=f'timed out after {timeout}s')
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith('{')]
    if res.returncode != 0 or not lines:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return dict(error=f'exit {res.returncode}: ' + ' | '.join(tail))
    return json.loads(lines[-1])


def memory_worker(payload: str) -> None:
    """The subprocess side of :func:`memory_in_subprocess`: prints one JSON line."""
    spec = json.loads(payload)
    case = spec['case']
    device = torch.device(case['device'])
    limit_address_space(spec['mem_limit_gib'], device)
    if case.get('threads'):
        torch.set_num_threads(case['threads'])
    built = build(case, spec['impl'], device)
    peak, method = measure_peak_memory(built, case['mode'], device, case['dtype'])
    # the whole process's high-water mark (interpreter, model, inputs, optimizer state)
    total = _status_kib('VmHWM') * 1024 if device.type == 'cpu' else torch.cuda.max_memory_allocated(device)
    print(json.dumps(dict(peak_bytes=peak, total_bytes=total, method=method)))


def run_case(case: dict, impls: Sequence[str | None], warmup: int, repeats: int, memory: bool = True,
             mem_limit_gib: float | None = 20., timeout: float = 1800, flops: bool = True,
             gemm: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Measure ``case`` for each implementation; returns impl name -> results.

    Args:
        impls: names, or ``[None]`` for as built (named ``'default'``).
        mem_limit_gib: address-space limit of the memory subprocess on CPU (None or 0: none).
        timeout: seconds the memory subprocess of each implementation may take.
        gemm: the run's :func:`gemm_gflops`, for each result's fraction of it.
    """
    device = torch.device(case['device'])
    if case.get('threads'):
        torch.set_num_threads(case['threads'])
    builts = build_all(case, impls, device)
    first = next(iter(builts.values()))
    params = sum(p.numel() for p in first.module.parameters())
    macs, macs_note = macs_of(first) if flops else (None, 'not asked')
    times = time_runs(builts, case['mode'], device, case['dtype'], warmup, repeats)
    del builts, first
    gc.collect()
    results = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        r: dict[str, Any] = dict(time_median_s=median, time_min_s=min(ts), time_max_s=max(ts), repeats=len(ts),
                                 params=params, macs=macs, macs_note=macs_note)
        if macs:
            r['flop_per_run'] = flop_per_run(macs, case['mode'])
            r['gflops'] = r['flop_per_run'] / median / 1e9
            if gemm:
                r['gemm_fraction'] = r['gflops'] / gemm['gemm_gflops']
        if case['mode'] != 'fwd' or case['kind'] != 'layer':
            r['images_per_s'] = (case.get('batch') or case['shape'][0]) / median
        if memory:
            mem = memory_in_subprocess(case, None if name == 'default' else name, mem_limit_gib, timeout)
            r.update(peak_mem_bytes=mem.get('peak_bytes'), peak_mem_total_bytes=mem.get('total_bytes'),
                     mem_method=mem.get('method'), mem_error=mem.get('error'))
        results[name] = r
    return results


BACKENDS = ('pytorch', 'compile', 'onnxruntime')


class _TupleOut(torch.nn.Module):
    """A backbone (or any module) with a tuple of tensors as output, the form the ONNX exporter takes."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, input: torch.Tensor) -> tuple:  # noqa: A002  (the graph input's name)
        out = self.module(input)
        return tuple(out) if isinstance(out, (list, tuple)) else (out, )


def inference_runners(module: torch.nn.Module, x: torch.Tensor, backends: Iterable[str], opt_level: str = 'all',
                      onnx_dir: str | None = None) -> dict[str, Callable[[], Any]]:
    """name -> zero-argument callable running one inference of ``module`` on ``x`` with each backend.

    ``pytorch``: eager (the caller sets ``no_grad``); ``compile``: ``torch.compile`` (inductor; the first call
    compiles); ``onnxruntime``: exported with ``torch.onnx`` at ``x``'s shape, run by a CPU session with the
    process's thread count and graph optimisation ``opt_level``. Raises ``ValueError`` for another backend.
    """
    import tempfile
    module = _TupleOut(module).eval()
    runners: dict[str, Callable[[], Any]] = {}
    for backend in backends:
        if backend not in BACKENDS:
            raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
        if backend == 'pytorch':
            runners[backend] = lambda: module(x)
        elif backend == 'compile':
            compiled = torch.compile(module)
            runners[backend] = lambda: compiled(x)
        else:
            from mmsparse.deployment import make_session
            path = osp.join(onnx_dir or tempfile.mkdtemp(prefix='bench_onnx_'), 'model.onnx')
            with torch.no_grad():
                program = torch.export.export(module, (x, ), strict=False)
                torch.onnx.export(program, (x, ), path, input_names=['input'], dynamo=True)
            session = make_session(path, threads=torch.get_num_threads(), opt_level=opt_level)
            feed = {'input': x.numpy()}
            runners[backend] = lambda: session.run(None, feed)
    return runners


def time_backends(runners: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Warm-up, then the backends run alternately under ``no_grad`` (load hits all alike); returns name -> seconds
    of each run."""
    with torch.no_grad():
        for _ in range(warmup):
            for run in runners.values():
                run()
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(repeats):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    return times


if __name__ == '__main__':
    memory_worker(sys.argv[1])
