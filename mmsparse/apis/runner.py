"""Config loading for ``tools/train.py`` / ``tools/test.py``, adapted to the launcher and the machine; how a
process of a distributed run ends."""
from __future__ import annotations

import argparse
import gc
import logging
import os
import os.path as osp
import sys
import traceback
import warnings
from typing import Any, Callable

import torch

from .inference import task_of


def prepare(cfg: Any, args: argparse.Namespace) -> str:
    """Adapt ``cfg`` to ``args.launcher`` and the machine, in place; returns the config's task (:func:`task_of`).

    Without a GPU, a distributed run uses gloo, per-process BN instead of SyncBN and DDP without ``device_ids``.
    """
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    if args.launcher != 'none' and not torch.cuda.is_available():
        # NCCL needs GPUs; CPU-only distributed runs (tests, debugging) use gloo.
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        if args.launcher == 'pytorch' and not torch.distributed.is_initialized():
            # mmengine's init_dist calls torch.cuda.set_device, which a CPU-only torch lacks; the Runner
            # skips its own initialisation when a process group already exists.
            torch.distributed.init_process_group(backend='gloo')
        revert_sync_bn_on_cpu(cfg)
        if cfg.get('model_wrapper_cfg') is None:
            # mmengine passes device_ids=[LOCAL_RANK], which DDP rejects for CPU modules
            cfg.model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
    if args.launcher != 'none':
        os.environ.setdefault('LOCAL_RANK', str(getattr(args, 'local_rank', 0)))
    return task_of(cfg)


def sync_bn_to_bn(node: Any) -> int:
    """Replace ``type='SyncBN'`` by ``'BN'`` in a config tree, in place; returns how many were replaced."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'SyncBatchNorm', 'MMSyncBN'):
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += sync_bn_to_bn(value)
    return count


def revert_sync_bn_on_cpu(cfg: Any) -> int:
    """Build BN instead of SyncBN (no CPU implementation), in place, with a one-line notice; returns the count."""
    count = sync_bn_to_bn(cfg.get('model') or {})
    if cfg.get('sync_bn'):
        cfg.sync_bn = None
        count += 1
    if count:
        print('No GPU: SyncBN has no CPU implementation, so this distributed run uses per-process BN instead.')
    return count


def _exit_code(exc: BaseException) -> int:
    """The exit status the interpreter would give for an uncaught ``exc`` (printing what it would print)."""
    if isinstance(exc, SystemExit):
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    traceback.print_exception(exc)
    return 1


def run_tool(main: Callable[[], Any]) -> None:
    """Run a tool's ``main()``; a process of a distributed run then leaves through :func:`finish_distributed`.

    Processes without a process group (single-process runs) end as usual, exceptions included.
    """
    def distributed() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    try:
        main()
    except BaseException as exc:  # noqa: B902 (SystemExit and KeyboardInterrupt end a rank the same way)
        if not distributed():
            raise
        code = _exit_code(exc)
    else:
        if not distributed():
            return
        code = 0
    finish_distributed(code)


def finish_distributed(code: int) -> None:
    """End a distributed run's process with status ``code``: free the run, destroy the process group, flush the
    output, and leave with ``os._exit`` (no interpreter finalization); never returns."""
    # why os._exit: DDP keeps its gloo group alive until finalization (torch 2.13); a worker thread still freeing
    # the last collective's tensors then dies inside C++ and aborts a good run (exit -6, ~1 in 30 on a busy
    # machine). Everything a run writes (checkpoints, logs, visualizer backends) is closed before this point.
    gc.collect()  # the Runner and its data loaders (their worker processes end with them)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe must not turn a finished run into a failure
            pass
    os._exit(code)


def load_tool_config(args: argparse.Namespace) -> tuple[Any, str]:
    """``(cfg, task)`` of ``args.config`` with ``--cfg-options``, launcher and work_dir applied (train / test)."""
    from .model import load_config
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg, prepare(cfg, args)


def amp_fallback_on_cpu(cfg: Any) -> None:
    """Without a GPU, swap mmengine's AmpOptimWrapper (it asserts one) for float32 ``OptimWrapper``, in place."""
    wrapper = cfg.get('optim_wrapper') or {}
    if wrapper.get('type') == 'AmpOptimWrapper' and not torch.cuda.is_available():
        print('No GPU: mmengine\'s AmpOptimWrapper needs one, so this run uses OptimWrapper in float32 '
              '(loss_scale / dtype ignored).')
        wrapper['type'] = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper.pop(key, None)
