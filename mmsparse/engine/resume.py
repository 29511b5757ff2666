"""Exact resume: RNG states in checkpoints, restored where the interrupted run stood, and atomic writes.

What :class:`ExactResumeHook` adds to mmengine 0.10.7's ``resume`` (which reloads model, optimizer, schedulers,
message hub and counters, re-seeds, and replays the batches of an iteration-based loop):

- the RNG streams (torch, CUDA, numpy, python ``random``, one set per rank) continue instead of restarting
  from the seed: they are saved into every checkpoint (``checkpoint['rng_states']``, a list indexed by rank)
  and restored right before the first batch after the replayed ones is fetched;
- the epoch-based loop skips the batches of a partly trained epoch (mmengine restarts that epoch);
- validation during training leaves the training RNG streams as they were, so a resumed run (which does not
  repeat that validation) draws the same numbers as an unbroken one;
- checkpoints are written to a hidden temporary name and renamed (``os.replace``) into place, and an
  auto-resume (``resume=True`` without a file) whose ``last_checkpoint`` is missing, empty or points to a
  file that is gone falls back to the newest complete checkpoint of the work dir.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import random
import warnings
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from ..registry import HOOKS

RNG_KEY = 'rng_states'


def get_rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, current CUDA device if any, numpy, python) as plain tensors/tuples."""
    np_state: Any = np.random.get_state()  # the legacy tuple form
    mt_name, keys, pos, has_gauss, gauss = np_state
    state = dict(torch=torch.get_rng_state(),
                 numpy=(mt_name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
                 python=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state['torch'])
    mt_name, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((mt_name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state['python'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


def latest_complete_checkpoint(work_dir: str) -> str | None:
    """The checkpoint an auto-resume should load, or None.

    ``last_checkpoint``'s target when that file exists, else the newest ``*.pth`` of ``work_dir`` (hidden
    temporary files of an interrupted write excluded).
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            target = f.read().strip()
        if target and osp.isfile(target):
            return target
    found = [p for p in glob.glob(osp.join(work_dir, '*.pth')) if osp.isfile(p)]
    return max(found, key=osp.getmtime) if found else None


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a hidden temporary file and ``os.replace`` (never a partial file)."""
    tmp = osp.join(osp.dirname(path), f'.{osp.basename(path)}.tmp{os.getpid()}')
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _RestoreAfter:
    """Iterator proxy: passes ``skip`` items through, then calls ``restore()`` before fetching the next one."""

    def __init__(self, iterable: Iterable, skip: int, restore: Callable[[], None] | None) -> None:
        self._inner, self._skip, self._restore, self._count = iterable, skip, restore, 0
        self._it: Iterator | None = None

    def __iter__(self) -> _RestoreAfter:
        self._it = iter(self._inner)
        return self

    def __len__(self) -> int:
        return len(self._inner)  # type: ignore[arg-type]  # a data loader

    def __next__(self) -> Any:
        if self._it is None:
            self._it = iter(self._inner)
        if self._count == self._skip and self._restore is not None:
            self._restore()
            self._restore = None
        self._count += 1
        return next(self._it)


class _SkipBatches:
    """A data loader seen from the epoch-based loop: the first ``skip`` batches are loaded and dropped (so the
    data workers' RNGs advance as before), then ``restore()`` runs, then the rest of the epoch is yielded."""

    def __init__(self, loader: Any, skip: int, restore: Callable[[], None]) -> None:
        self.loader, self.skip, self.restore = loader, skip, restore

    def __len__(self) -> int:
        return len(self.loader) - self.skip

    def __iter__(self) -> Iterator:
        it = iter(self.loader)
        for _ in range(self.skip):
            next(it)
        self.restore()
        return it

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Makes ``kill -9`` + ``--resume`` end where an unbroken run ends (see the module docstring).

    Add it through ``custom_hooks=[dict(type='mmsparse.ExactResumeHook')]`` (mmsparse's base runtimes do).

    Args:
        atomic_checkpoints: write checkpoints atomically; False leaves mmengine's checkpoint writing alone.
    """

    priority = 'LOW'  # after DistSamplerSeedHook / LoggerHook, before CheckpointHook (VERY_LOW)

    def __init__(self, atomic_checkpoints: bool = True) -> None:
        if not isinstance(atomic_checkpoints, bool):
            raise TypeError(f'ExactResumeHook: atomic_checkpoints must be a bool, got {atomic_checkpoints!r}')
        self.atomic_checkpoints = atomic_checkpoints
        self._snapshot: tuple[int, dict] | None = None  # (iteration, this rank's states)
        self._gathered: tuple[int, list] | None = None  # (iteration, every rank's states)
        self._pending: dict | None = None  # states to restore after resuming
        self._val_state: dict | None = None
        self._wrapped: Any = None

    # ---------------------------------------------------------------- set-up
    def before_run(self, runner: Any) -> None:
        if runner._resume and runner._load_from is None and osp.isdir(runner.work_dir):
            chosen = latest_complete_checkpoint(runner.work_dir)
            if chosen is not None:
                runner._load_from = chosen  # resume this one instead of trusting last_checkpoint blindly
        if self.atomic_checkpoints and not getattr(runner, '_mmsparse_atomic_save', False):
            self._make_saves_atomic(runner)

    @staticmethod
    def _make_saves_atomic(runner: Any) -> None:
        save = runner.save_checkpoint

        def save_checkpoint(out_dir: str, filename: str, *args: Any, **kwargs: Any) -> Any:
            if '://' in str(out_dir):
                return save(out_dir, filename, *args, **kwargs)
            tmp = f'.{filename}.tmp'
            result = save(out_dir, tmp, *args, **kwargs)
            if get_dist_info()[0] == 0 and osp.isfile(osp.join(out_dir, tmp)):
                os.replace(osp.join(out_dir, tmp), osp.join(out_dir, filename))
                write_text_atomic(osp.join(runner.work_dir, 'last_checkpoint'), osp.join(out_dir, filename))
            return result

        runner.save_checkpoint = save_checkpoint  # this runner only; the class is untouched
        runner._mmsparse_atomic_save = True

    # ---------------------------------------------------------------- saving
    def _will_save(self, runner: Any, by_epoch: bool) -> bool:
        for hook in runner.hooks:
            if not isinstance(hook, CheckpointHook) or hook.by_epoch != by_epoch:
                continue
            if by_epoch:
                due = hook.every_n_epochs(runner, hook.interval, hook.save_begin)
                last = hook.is_last_train_epoch(runner)
            else:
                due = hook.every_n_train_iters(runner, hook.interval, hook.save_begin)
                last = hook.is_last_train_iter(runner)
            if due or (hook.save_last and last):
                return True
        return False

    def _take_snapshot(self, runner: Any, by_epoch: bool) -> None:
        self._snapshot = (runner.iter, get_rng_state())
        world = get_dist_info()[1]
        if world > 1 and self._will_save(runner, by_epoch):
            self._gathered = (runner.iter, all_gather_object(self._snapshot[1]))  # every rank takes part

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        # runner.iter still counts the iteration that just ended (the loop increments it afterwards)
        self._take_snapshot(runner, by_epoch=False)

    def after_train_epoch(self, runner: Any) -> None:
        if self._wrapped is not None and isinstance(runner.train_loop, EpochBasedTrainLoop):
            runner.train_loop.dataloader = self._wrapped  # the partial epoch is over: the full loader again
            self._wrapped = None
        self._take_snapshot(runner, by_epoch=True)

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        rank, world = get_dist_info()
        if self._gathered is not None and self._gathered[0] == runner.iter:
            checkpoint[RNG_KEY] = self._gathered[1]
        elif self._snapshot is not None and self._snapshot[0] == runner.iter:
            checkpoint[RNG_KEY] = [self._snapshot[1]] + [None] * (world - 1)
        else:
            checkpoint[RNG_KEY] = [get_rng_state()] + [None] * (world - 1)

    # ---------------------------------------------------------------- validation is RNG-neutral
    def before_val(self, runner: Any) -> None:
        self._val_state = get_rng_state()

    def after_val(self, runner: Any) -> None:
        if self._val_state is not None:
            set_rng_state(self._val_state)
            self._val_state = None

    # ---------------------------------------------------------------- resuming
    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if not runner._resume:
            return  # load_from: fine-tuning starts its own streams
        rank, world = get_dist_info()
        states = checkpoint.get(RNG_KEY)
        if states is None:
            warnings.warn('ExactResumeHook: the checkpoint has no RNG states (written without this hook); '
                          'the random streams restart from the seed')
        elif len(states) != world:
            warnings.warn(f'ExactResumeHook: the checkpoint holds RNG states for {len(states)} processes, this '
                          f'run has {world}; the random streams restart from the seed')
        elif states[rank] is None:
            warnings.warn(f'ExactResumeHook: the checkpoint holds no RNG state for rank {rank}')
        else:
            self._pending = states[rank]

    def _restore(self) -> None:
        set_rng_state(self._pending)  # type: ignore[arg-type]  # called only while states are pending
        self._pending = None

    def before_train_epoch(self, runner: Any) -> None:
        if self._pending is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            # the loop now replays loop.iter batches, then fetches the next one: restore in between
            self._wrapped = loop.dataloader_iterator
            loop.dataloader_iterator = _RestoreAfter(loop.dataloader_iterator, loop.iter, self._restore)
        elif isinstance(loop, EpochBasedTrainLoop):
            done = loop.iter - loop.epoch * len(loop.dataloader)
            if done > 0:
                self._wrapped = loop.dataloader
                loop.dataloader = _SkipBatches(loop.dataloader, done, self._restore)
            else:
                self._restore()
        else:
            self._restore()

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        if self._wrapped is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            loop.dataloader_iterator = self._wrapped
            self._wrapped = None
