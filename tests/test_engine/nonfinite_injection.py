"""A test-only hook that injects a NaN into one iteration of a real training run (imported by the test configs
through ``custom_imports``)."""
import torch
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

WHERE = ('loss_term', 'constant_loss', 'grad')


@HOOKS.register_module()
class InjectNonFiniteHook(Hook):
    """At iteration ``iteration`` (1-based) on rank ``rank`` (all ranks when None), make one thing NaN:

    - ``loss_term``: the model's first loss term is multiplied by NaN (its gradients become NaN too);
    - ``constant_loss``: a term ``loss_injected = NaN`` without gradient is added (the gradients stay finite);
    - ``grad``: the gradient of the parameter ``param`` (a backbone weight) is multiplied by NaN.
    """

    priority = 'VERY_HIGH'

    def __init__(self, iteration, where, param=None, rank=None):
        assert where in WHERE, where
        self.iteration, self.where, self.param, self.rank = iteration, where, param, rank
        self._undo = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 != self.iteration or self.rank not in (None, get_dist_info()[0]):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if self.where == 'grad':
            param = dict(model.named_parameters())[self.param]
            handle = param.register_hook(lambda grad: grad * float('nan'))
            self._undo = handle.remove
            return
        loss = model.loss
        where = self.where

        def poisoned_loss(*args, **kwargs):
            losses = loss(*args, **kwargs)
            if where == 'loss_term':
                name = next(k for k in losses if 'loss' in k)
                losses[name] = losses[name] * float('nan')
            else:
                losses['loss_injected'] = torch.tensor(float('nan'))
            return losses

        model.loss = poisoned_loss
        self._undo = lambda: delattr(model, 'loss')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self._undo is not None:
            self._undo()
            self._undo = None
