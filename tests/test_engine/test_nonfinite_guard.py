"""StopOnNonFiniteHook on a toy model, in process: what stops a run, what does not, and that the optimizer never
steps with a non-finite value (the real-config runs, single process and DDP, are in
tests/test_tools/test_nonfinite_runs.py)."""
from types import SimpleNamespace

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper

from mmsparse.engine import NonFiniteTrainingError, StopOnNonFiniteHook


class Toy(BaseModel):
    """``loss_main`` from a linear layer; ``extra`` adds named loss / log terms to the output dict."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(2, 1)
        self.extra = {}

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss_main=self.backbone(inputs).square().mean(), **self.extra)


def guarded(tmp_path, lr=0.1, accumulate=1):
    torch.manual_seed(0)
    model = Toy()
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=lr), accumulative_counts=accumulate)
    wrapper.initialize_count_status(model, 0, 100)
    runner = SimpleNamespace(model=model, optim_wrapper=wrapper, iter=4, epoch=0, work_dir=str(tmp_path))
    StopOnNonFiniteHook().before_train(runner)
    return model, wrapper, runner


def step(model, wrapper, inputs):
    return model.train_step(dict(inputs=inputs), wrapper)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_finite_iterations_train_as_usual(tmp_path):
    model, wrapper, _ = guarded(tmp_path)
    before = snapshot(model)
    log_vars = step(model, wrapper, torch.ones(4, 2))
    assert set(log_vars) == {'loss', 'loss_main'} and not unchanged(model, before)


def test_nan_loss_term_stops_before_the_step(tmp_path):
    """Catches a check placed after ``optimizer.step`` (the weights would have moved)."""
    model, wrapper, _ = guarded(tmp_path)
    before = snapshot(model)
    inputs = torch.ones(4, 2)
    inputs[1, 0] = float('nan')
    with pytest.raises(NonFiniteTrainingError) as err:
        step(model, wrapper, inputs)
    assert unchanged(model, before)
    text = str(err.value)
    assert 'iteration 5' in text and 'loss_main=nan (non-finite)' in text
    assert 'non-finite gradients in 2 of 2 parameters: backbone.weight, backbone.bias' in text
    assert err.value.iteration == 5 and err.value.checkpoint is None
    assert 'No checkpoint has been written yet' in text


def test_nan_gradient_with_finite_loss_stops(tmp_path):
    """The gradient check on its own: catches a guard that looks at the losses only."""
    model, wrapper, _ = guarded(tmp_path)
    model.backbone.bias.register_hook(lambda g: g * float('nan'))
    before = snapshot(model)
    with pytest.raises(NonFiniteTrainingError) as err:
        step(model, wrapper, torch.ones(4, 2))
    assert unchanged(model, before)
    text = str(err.value)
    assert 'non-finite gradients in 1 of 2 parameters: backbone.bias' in text
    assert '(non-finite)' not in text  # every loss term was finite, and is reported with its value
    assert 'loss_main=' in text


def test_constant_nan_term_without_gradient_stops(tmp_path):
    """A NaN term that leaves the gradients finite: only the loss check sees it."""
    model, wrapper, _ = guarded(tmp_path)
    model.extra = dict(loss_reg=torch.tensor(float('nan')))
    with pytest.raises(NonFiniteTrainingError, match=r'loss_reg=nan \(non-finite\)') as err:
        step(model, wrapper, torch.ones(4, 2))
    assert 'gradients' not in str(err.value)


def test_non_finite_log_values_that_are_not_losses_are_ignored(tmp_path):
    """mmseg's ``acc_seg`` is NaN for a batch without valid pixels; parse_losses sums only names with 'loss'.
    Catches a guard that checks every logged value."""
    model, wrapper, _ = guarded(tmp_path)
    model.extra = dict(acc_seg=torch.tensor(float('nan')))
    step(model, wrapper, torch.ones(4, 2))


def test_step_that_overflows_the_weights_stops_before_a_checkpoint(tmp_path):
    """Finite gradients, but the step sends a weight to inf: stopped right after the step, inside the
    iteration, so CheckpointHook (after_train_iter) never saves it. Catches a missing weight check."""
    model, wrapper, _ = guarded(tmp_path, lr=1e38)
    with pytest.raises(NonFiniteTrainingError) as err:
        step(model, wrapper, torch.full((4, 2), 1e3))
    text = str(err.value)
    assert 'right after its optimizer step' in text and 'non-finite weights or buffers' in text
    assert 'backbone.weight' in text


def test_gradient_accumulation_reports_the_iteration_of_the_bad_term(tmp_path):
    model, wrapper, runner = guarded(tmp_path, accumulate=2)
    model.extra = dict(loss_reg=torch.tensor(float('nan')))
    step(model, wrapper, torch.ones(4, 2))  # no optimizer step yet: nothing is checked
    model.extra = {}
    runner.iter = 5
    with pytest.raises(NonFiniteTrainingError) as err:
        step(model, wrapper, torch.ones(4, 2))
    text = str(err.value)
    assert 'loss terms of iteration 5: ' in text and 'loss_reg=nan (non-finite)' in text
    assert 'loss terms of iteration 6: ' in text and err.value.iteration == 6


def test_message_names_the_last_checkpoint(tmp_path):
    (tmp_path / 'iter_4.pth').write_bytes(b'x')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    model, wrapper, _ = guarded(tmp_path)
    model.extra = dict(loss_reg=torch.tensor(float('inf')))
    with pytest.raises(NonFiniteTrainingError, match='--resume ' + str(tmp_path / 'iter_4.pth')):
        step(model, wrapper, torch.ones(4, 2))


def test_bad_arguments():
    with pytest.raises(TypeError, match='check_grads'):
        StopOnNonFiniteHook(check_grads=1)
    with pytest.raises(ValueError, match='max_names'):
        StopOnNonFiniteHook(max_names=0)
