"""The one checkpoint-reading policy: weights_only loading, clear errors, loud pretrained loading."""
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from mmsparse.utils.checkpoint import load_checkpoint_file


def test_load_checkpoint_file_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'cfg': OrderedDict(a=Path('.'))}, path)
    with pytest.raises(Exception, match='[Ww]eights only load failed'):
        load_checkpoint_file(str(path))


# ---------------------------------------------------------------- files that are not checkpoints

from mmsparse.families import get_family, list_families  # noqa: E402
from mmsparse.registry import MODELS  # noqa: E402
from mmsparse.utils.checkpoint import CheckpointFileError, load_pretrained  # noqa: E402

#: every registered family; its spec's ``tiny`` config is the model of these tests
BACKBONES = list_families()


def tiny(name):
    """The tiny backbone of family ``name`` (a new random initialisation at every call)."""
    return MODELS.build(get_family(name).tiny_cfg())


def _saved(tmp_path, name='tiny'):
    model = tiny(name)
    path = tmp_path / f'{name}.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    return model, path


def test_truncated_checkpoint_names_the_file(tmp_path):
    _, path = _saved(tmp_path, 'biformer')
    data = path.read_bytes()
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointFileError, match=r"cut\.pth.*is not a readable checkpoint.*torch\.save"):
        load_checkpoint_file(str(cut))
    # the same error reaches a user through the Pretrained loader
    with pytest.raises(CheckpointFileError, match=r'cut\.pth'):
        load_pretrained(tiny('biformer'), str(cut))


def test_text_file_names_the_file(tmp_path):
    path = tmp_path / 'notes.txt'
    path.write_text('this is not a checkpoint\n')
    with pytest.raises(CheckpointFileError, match=r"notes\.txt.*expected a file written by torch\.save"):
        load_checkpoint_file(str(path))
    assert issubclass(CheckpointFileError, ValueError)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nothere\.pth'):
        load_checkpoint_file(str(tmp_path / 'nothere.pth'))


# ---------------------------------------------------------------- strict loading and its counts

def _counted(model):
    return [k for k in model.state_dict() if not k.endswith('num_batches_tracked')]


@pytest.mark.parametrize('name', BACKBONES)
def test_half_the_keys_is_refused_unless_partial_is_asked_for(name, tmp_path):
    src = tiny(name)
    sd = src.state_dict()
    counted = _counted(src)
    kept = counted[::2]
    dropped = [k for k in counted if k not in kept and not k.startswith('norm')]
    half = {k: sd[k] for k in kept}
    path = tmp_path / 'half.pth'
    torch.save(half, path)
    with pytest.raises(RuntimeError, match=rf'{len(dropped)} missing key\(s\)') as err:
        load_pretrained(tiny(name), str(path))
    assert 'allow_partial=True' in str(err.value)
    target = tiny(name)
    missing, unexpected, mismatched = load_pretrained(target, str(path), allow_partial=True)
    assert sorted(missing) == sorted(dropped) and unexpected == [] and mismatched == []
    for k in kept:
        assert torch.equal(target.state_dict()[k], sd[k]), k


@pytest.mark.parametrize('name', BACKBONES)
def test_wrong_shapes_are_counted_once_and_batch_counters_not_at_all(name, tmp_path):
    src = tiny(name)
    sd = dict(src.state_dict())
    counted = _counted(src)
    if name == 'biformer':  # BNs: their counters exist in the file and are not counted
        assert len(counted) < len(sd)
    bad = [k for k in counted if sd[k].dim() >= 1 and not k.startswith('norm')][:3]
    for k in bad:
        sd[k] = torch.zeros(sd[k].shape[0] + 1, *sd[k].shape[1:])
    path = tmp_path / 'shapes.pth'
    torch.save(sd, path)
    total = len(counted)
    with pytest.raises(RuntimeError) as err:
        load_pretrained(tiny(name), str(path))
    msg = str(err.value)
    assert f'loaded {total - 3}/{total} tensors' in msg, msg
    assert '3 missing key(s)' in msg and '3 shape-mismatched key(s)' in msg and 'unexpected' not in msg
    missing, unexpected, mismatched = load_pretrained(tiny(name), str(path), allow_partial=True)
    assert sorted(missing) == sorted(bad) == sorted(mismatched) and unexpected == []


@pytest.mark.parametrize('name', BACKBONES)
def test_full_checkpoint_loads_strictly_and_output_norms_may_be_absent(name, tmp_path):
    src = tiny(name)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith('norm')}
    path = tmp_path / 'cls.pth'
    torch.save({'model': sd}, path)
    target = tiny(name)
    assert target.dense_only_keys()  # the tiny models do have output norms
    assert load_pretrained(target, str(path)) == ([], [], [])
    for k, v in sd.items():
        assert torch.equal(target.state_dict()[k], v), k


def test_wrong_prefix_lists_only_the_top_level_prefixes(tmp_path):
    src = tiny('biformer')
    ckpt = {'state_dict': {**{'backbone.' + k: v for k, v in src.state_dict().items()},
                           **{'decode_head.conv.weight': torch.zeros(1)}}}
    with pytest.raises(KeyError) as err:
        load_pretrained(tiny('biformer'), ckpt, prefix='encoder.')
    msg = err.value.args[0]
    assert msg.endswith('top-level prefixes are backbone., decode_head.'), msg
    assert 'stem' not in msg and 'stages' not in msg  # not the whole checkpoint
    assert load_pretrained(tiny('biformer'), ckpt, prefix='backbone') == ([], [], [])


# ---------------------------------------------------------------- init_weights keeps the loaded weights

OTHER_INITS = [dict(type='TruncNormal', layer='Linear', std=0.5), dict(type='Constant', layer=['LayerNorm'], val=3.),
               dict(type='Kaiming', layer='Conv2d')]


@pytest.mark.parametrize('name', BACKBONES)
@pytest.mark.parametrize('form', ['dict', 'list-first', 'list-last'])
def test_pretrained_survives_init_weights(name, form, tmp_path):
    torch.manual_seed(1)
    src = tiny(name)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))  # values no initialiser would produce
    path = tmp_path / 'w.pth'
    torch.save({'state_dict': src.state_dict()}, path)
    pretrained = dict(type='Pretrained', checkpoint=str(path))
    init_cfg = {'dict': pretrained, 'list-first': [pretrained] + OTHER_INITS,
                'list-last': OTHER_INITS + [pretrained]}[form]
    model = tiny(name)
    model.init_cfg = init_cfg
    model.init_weights()
    got = model.state_dict()
    for k, v in src.state_dict().items():
        assert torch.equal(got[k], v), f'{k} was overwritten after loading ({form} init_cfg)'


def test_list_init_cfg_goes_through_the_loud_loader(tmp_path):
    src = tiny('stvit')
    sd = dict(src.state_dict())
    sd.pop(next(k for k in sd if k.startswith('stages.')))
    path = tmp_path / 'partial.pth'
    torch.save(sd, path)
    model = tiny('stvit')
    model.init_cfg = OTHER_INITS + [dict(type='Pretrained', checkpoint=str(path))]
    with pytest.raises(RuntimeError, match='1 missing key'):
        model.init_weights()
    model = tiny('stvit')
    model.init_cfg = OTHER_INITS + [dict(type='Pretrained', checkpoint=str(path), allow_partial=True)]
    model.init_weights()
    model.init_cfg = [dict(type='Pretrained', checkpoint=str(path), strict=False)]
    with pytest.raises(ValueError, match='unknown keys.*strict'):
        model.init_weights()
