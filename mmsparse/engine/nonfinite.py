"""Stop training at the first non-finite loss or gradient, before it reaches the weights or a checkpoint.

:class:`StopOnNonFiniteHook` raises :class:`NonFiniteTrainingError` from inside the iteration: the optimizer step
is not taken and no checkpoint of that state is written, so the newest checkpoint is the last good one for
``--resume``. Weights and floating-point buffers are checked after every step too. Under DDP every rank raises
together, with the findings of all ranks. Under ``AmpOptimWrapper`` gradients are not checked (its loss scaler
skips overflowing steps itself); loss terms and weights still are.
"""
# why wrap parse_losses and optim_wrapper.step instead of using after_train_iter: in mmengine 0.10.7 train_step
# runs parse_losses, backward and optim_wrapper.step() before any hook sees the iteration, so a hook would come
# after the optimizer had applied a NaN gradient. Under DDP one all-reduced flag per step keeps the ranks in step
# (a loss can be NaN on one rank only), so none is left waiting in a collective.
from __future__ import annotations

import math
from typing import Any

import torch
from mmengine.dist import all_gather_object, all_reduce, get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapperDict

from ..registry import HOOKS


class NonFiniteTrainingError(FloatingPointError):
    """Raised by :class:`StopOnNonFiniteHook`.

    Args:
        iteration: 1-based, as the log counts.
        reports: one dict per rank: ``loss_terms``, ``bad_terms``, ``bad_grads``, ``bad_weights``, ...
        checkpoint: the last checkpoint of the work dir, or None.
    """

    def __init__(self, message: str, iteration: int, reports: list[dict[str, Any]],
                 checkpoint: str | None) -> None:
        super().__init__(message)
        self.iteration, self.reports, self.checkpoint = iteration, reports, checkpoint


def _finite_flags(tensors: list[torch.Tensor]) -> list[bool]:
    """One bool per tensor: all its values finite. A single device synchronisation for the whole list."""
    if not tensors:
        return []
    try:
        peaks: Any = torch._foreach_norm(tensors, float('inf'))  # max |value|; NaN and inf propagate
    except (RuntimeError, TypeError, AttributeError):
        peaks = [torch.linalg.vector_norm(t, float('inf')) for t in tensors]
    device = peaks[0].device
    return [math.isfinite(p) for p in torch.stack([p.to(device, torch.float32) for p in peaks]).tolist()]


def _last_checkpoint(work_dir: str) -> str | None:
    from .resume import latest_complete_checkpoint
    try:
        return latest_complete_checkpoint(work_dir)
    except OSError:
        return None


@HOOKS.register_module()
class StopOnNonFiniteHook(Hook):
    """Stop a run at the first non-finite loss term or gradient (see the module docstring).

    Added by mmsparse's base runtimes: ``custom_hooks=[..., dict(type='mmsparse.StopOnNonFiniteHook')]``.

    Args:
        check_grads: check every gradient before the optimizer step (skipped under AMP).
        check_weights: check parameters and floating-point buffers after every step.
        max_names: how many parameter names the error lists per rank (the count is always given).
    """

    priority = 'VERY_HIGH'

    def __init__(self, check_grads: bool = True, check_weights: bool = True, max_names: int = 20) -> None:
        for name, value in (('check_grads', check_grads), ('check_weights', check_weights)):
            if not isinstance(value, bool):
                raise TypeError(f'StopOnNonFiniteHook: {name} must be a bool, got {value!r}')
        if not isinstance(max_names, int) or isinstance(max_names, bool) or max_names < 1:
            raise ValueError(f'StopOnNonFiniteHook: max_names must be a positive int, got {max_names!r}')
        self.check_grads, self.check_weights, self.max_names = check_grads, check_weights, max_names
        # (iteration, log_vars) since the last optimizer step (gradient accumulation)
        self._losses: list[tuple[int, dict]] = []

    # ---------------------------------------------------------------- set-up
    def before_train(self, runner: Any) -> None:
        """Wrap the model's ``parse_losses`` and each optim wrapper's ``step`` (once per object)."""
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._model = model
        self._names = {id(p): n for n, p in model.named_parameters()}
        if not getattr(model, '_mmsparse_nonfinite_guard', False):
            parse_losses = model.parse_losses

            def recording_parse_losses(losses: Any) -> Any:
                loss, log_vars = parse_losses(losses)
                self._losses.append((runner.iter + 1, log_vars))
                return loss, log_vars

            model.parse_losses = recording_parse_losses  # this instance only; DDP calls module.parse_losses
            model._mmsparse_nonfinite_guard = True
        wrappers = runner.optim_wrapper.values() if isinstance(runner.optim_wrapper, OptimWrapperDict) \
            else [runner.optim_wrapper]
        for wrapper in wrappers:
            if not getattr(wrapper, '_mmsparse_nonfinite_guard', False):
                self._guard_step(runner, wrapper)

    def _guard_step(self, runner: Any, wrapper: Any) -> None:
        step = wrapper.step

        def guarded_step(**kwargs: Any) -> None:
            self._check(runner, wrapper, before_step=True)
            step(**kwargs)
            if self.check_weights:
                self._check(runner, wrapper, before_step=False)

        wrapper.step = guarded_step
        wrapper._mmsparse_nonfinite_guard = True

    # ---------------------------------------------------------------- checks
    def _loss_report(self) -> tuple[list[tuple[int, str, float]], list[tuple[int, str, float]]]:
        """Every recorded loss term as (iteration, name, value), and the non-finite ones among them."""
        entries = [(it, k, v) for it, log_vars in self._losses for k, v in log_vars.items()
                   if 'loss' in k and isinstance(v, torch.Tensor)]  # parse_losses' rule: 'loss' in the name
        if not entries:
            return [], []
        device = entries[0][2].device
        values = torch.stack([v.detach().float().reshape(()).to(device) for _, _, v in entries]).tolist()
        terms = [(it, k, value) for (it, k, _), value in zip(entries, values)]
        return terms, [t for t in terms if not math.isfinite(t[2])]

    def _bad_grads(self, wrapper: Any) -> list[str]:
        params = [p for group in wrapper.optimizer.param_groups for p in group['params'] if p.grad is not None]
        flags = _finite_flags([p.grad.detach() for p in params])
        return [
            self._names.get(id(p), f'<unnamed parameter {tuple(p.shape)}>') for p, ok in zip(params, flags) if not ok
        ]

    def _bad_weights(self) -> list[str]:
        named = [(n, t) for n, t in list(self._model.named_parameters()) + list(self._model.named_buffers())
                 if t.is_floating_point()]
        flags = _finite_flags([t.detach() for _, t in named])
        return [n for (n, _), ok in zip(named, flags) if not ok]

    def _check(self, runner: Any, wrapper: Any, before_step: bool) -> None:
        if before_step:
            terms, bad_terms = self._loss_report()
            check_grads = self.check_grads and not isinstance(wrapper, AmpOptimWrapper)
            bad_grads = self._bad_grads(wrapper) if check_grads else []
            bad_weights: list[str] = []
            self._losses = []
        else:
            terms, bad_terms, bad_grads = [], [], []
            bad_weights = self._bad_weights()
        local_bad = bool(bad_terms or bad_grads or bad_weights)
        rank, world = get_dist_info()
        if world > 1:
            flag = torch.tensor([float(local_bad)])
            all_reduce(flag, op='max')  # every rank takes part, every step: no rank raises alone
            any_bad = bool(flag.item())
        else:
            any_bad = local_bad
        if not any_bad:
            return
        report = dict(rank=rank,
                      loss_terms=terms,
                      bad_terms=bad_terms,
                      bad_grads=bad_grads,
                      bad_weights=bad_weights,
                      num_params=len(self._names))
        reports = all_gather_object(report) if world > 1 else [report]
        iteration = runner.iter + 1
        checkpoint = _last_checkpoint(runner.work_dir)
        raise NonFiniteTrainingError(self._message(runner, iteration, reports, checkpoint, before_step), iteration,
                                     reports, checkpoint)

    # ---------------------------------------------------------------- the message
    def _names_line(self, what: str, names: list[str], total: str) -> str:
        shown = ', '.join(names[:self.max_names])
        more = f', ... ({len(names) - self.max_names} more)' if len(names) > self.max_names else ''
        return f'non-finite {what} in {len(names)} of {total}: {shown}{more}'

    def _message(self, runner: Any, iteration: int, reports: list[dict[str, Any]], checkpoint: str | None,
                 before_step: bool) -> str:
        when = 'before its optimizer step' if before_step else 'right after its optimizer step'
        lines = [
            f'Non-finite training state at iteration {iteration} (epoch {runner.epoch + 1}); the run was '
            f'stopped {when}.'
        ]
        for rep in reports:
            prefix = f'rank {rep["rank"]}: ' if len(reports) > 1 else ''
            if rep['loss_terms']:
                bad = {(it, k) for it, k, _ in rep['bad_terms']}
                iters = sorted({it for it, _, _ in rep['loss_terms']})
                for it in iters:
                    values = ', '.join(f'{k}={v:.6g}' + (' (non-finite)' if (it, k) in bad else '')
                                       for i, k, v in rep['loss_terms'] if i == it)
                    lines.append(f'{prefix}loss terms of iteration {it}: {values}')
            if rep['bad_grads']:
                lines.append(prefix +
                             self._names_line('gradients', rep['bad_grads'], f'{rep["num_params"]} parameters'))
            if rep['bad_weights']:
                lines.append(prefix +
                             self._names_line('weights or buffers', rep['bad_weights'], 'parameters and buffers'))
        if before_step:
            lines.append('The optimizer did not step with these values, and no checkpoint of this iteration was '
                         'written.')
        else:
            lines.append('This state was not checkpointed: every earlier step was checked the same way.')
        if checkpoint:
            lines.append(f'The last checkpoint, {checkpoint}, holds the state before; continue from it with '
                         f'--resume {checkpoint} (e.g. with optim_wrapper.clip_grad added).')
        else:
            lines.append('No checkpoint has been written yet: restart the run (e.g. with a lower learning rate or '
                         'optim_wrapper.clip_grad).')
        return '\n'.join(lines)
