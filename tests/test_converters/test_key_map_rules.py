"""What the three converters share: :func:`apply_key_map` and the refusal of state dicts that hold none of the
family's keys (empty ones, another family's, a ResNet's), which would otherwise convert to an empty state dict
and load nothing."""
import re

import pytest
import torch

from mmsparse.converters import FAMILIES, ForeignStateDictError, UnmappedKeysError, convert, convert_checkpoint
from mmsparse.converters import cloformer as cloformer_keys
from mmsparse.converters import stvit as stvit_keys
from mmsparse.converters.common import apply_key_map
from mmsparse.models import BiFormer
from tests.conftest import BIFORMER_REDUCED, official_state_dict

#: a key list of each family, and the family whose converter it is fed to as a foreign state dict
KEY_LISTS = {'biformer': 'biformer_tiny', 'cloformer': 'cloformer_xxs', 'stvit': 'stvit_small'}
FOREIGN = [('biformer', 'stvit'), ('biformer', 'cloformer'), ('cloformer', 'biformer'), ('stvit', 'biformer')]
#: torchvision's ResNet-50 naming, and a classifier head alone (the keys every converter drops)
RESNET = {'conv1.weight': torch.zeros(64, 3, 7, 7), 'bn1.weight': torch.zeros(64),
          'layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1), 'fc.weight': torch.zeros(1000, 2048)}
HEAD_ONLY = {'norm.weight': torch.zeros(8), 'norm.bias': torch.zeros(8), 'head.weight': torch.zeros(10, 8)}


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_empty_state_dict_is_refused(family):
    """Catches: dropping the "none of the family's keys" check from ``apply_key_map`` or a family's
    ``expected=``, where ``convert(family, {})`` returns ``{}``."""
    with pytest.raises(ForeignStateDictError, match=rf"^{family}: the state dict holds none of the keys .*it is "
                                                    rf"empty\); expected '"):
        convert(family, {})
    with pytest.raises(ForeignStateDictError, match=family):
        convert_checkpoint(family, {'state_dict': {}})


@pytest.mark.parametrize('family, source', FOREIGN)
def test_another_familys_checkpoint_is_refused_by_name(family, source):
    """The authors' keys of ``source`` fed to ``family``'s converter: one error naming the family, what it
    expected and a few of the keys it got, not a list of hundreds of unmapped keys.
    Catches: the check counting dropped keys (``norm.*`` / ``head.*``) as the family's."""
    sd = official_state_dict(KEY_LISTS[source], device='meta')
    with pytest.raises(ForeignStateDictError) as info:
        convert(family, {'model': sd})
    message = str(info.value)
    assert message.startswith(f'{family}: ') and 'expected' in message
    assert f'{len(sd)} other key(s): {next(iter(sd))}' in message
    assert info.value.family == family and len(info.value.keys) == len(sd)
    assert isinstance(info.value, UnmappedKeysError)  # callers that catch unmapped keys catch this too


@pytest.mark.parametrize('family, source', [('cloformer', 'stvit'), ('stvit', 'cloformer')])
def test_swin_style_families_share_some_names_and_list_the_rest(family, source):
    """CloFormer and STViT both name ``layers.<i>.blocks.<j>.norm2.*`` alike: such a file holds a few keys of
    the family, so the error lists the keys that cannot be mapped (it is not silently half-converted)."""
    sd = official_state_dict(KEY_LISTS[source], device='meta')
    with pytest.raises(UnmappedKeysError, match=rf'^{family}: \d+ key\(s\) cannot be mapped') as info:
        convert(family, sd)
    assert not isinstance(info.value, ForeignStateDictError) and len(info.value.keys) > len(sd) // 2


@pytest.mark.parametrize('family', sorted(FAMILIES))
@pytest.mark.parametrize('sd', [RESNET, HEAD_ONLY], ids=['resnet', 'classifier-head-only'])
def test_non_family_state_dicts_are_refused(family, sd):
    """Catches: a head-only dict (every key dropped) converting to ``{}`` silently."""
    with pytest.raises(ForeignStateDictError, match=f'{family}: .*{re.escape(next(iter(sd)))}'):
        convert(family, sd)


def test_one_family_key_is_enough_and_unknown_keys_are_still_listed():
    """A real checkpoint with one bad key is an unmapped-key error naming that key, not a foreign one."""
    sd = {'downsample_layers.0.0.weight': torch.zeros(1), 'fc.weight': torch.zeros(1)}
    with pytest.raises(UnmappedKeysError, match=r'1 key\(s\) cannot be mapped to mmsparse: fc.weight') as info:
        convert('biformer', sd)
    assert not isinstance(info.value, ForeignStateDictError)


@pytest.mark.parametrize('convert_attention', [cloformer_keys.convert_attention_state_dict,
                                               stvit_keys.convert_attention_state_dict], ids=['cloformer', 'stvit'])
def test_attention_converters_refuse_empty_state_dicts(convert_attention):
    with pytest.raises(ForeignStateDictError, match='none of the keys'):
        convert_attention({})


def test_pretrained_init_from_another_familys_file_says_so(tmp_path):
    """Loading a foreign file as a backbone's ``Pretrained`` weights stops with the family error (the lenient
    upgrade of older mmsparse layouts, tried next, matches none of the model's keys either)."""
    path = tmp_path / 'stvit_small.pth'
    torch.save({'model': official_state_dict('stvit_small')}, path)
    model = BiFormer(**BIFORMER_REDUCED, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ForeignStateDictError, match='biformer: the state dict holds none of the keys'):
        model.init_weights()


# ------------------------------------------------------------------------------------------- apply_key_map

RULES = [
    (r'a\.(\d+)\.w', r'b.\1.weight'),  # template
    (re.compile(r'c\.(\d+)'), lambda m: f'd.{int(m.group(1)) + 1}'),  # callable target
    (r'e\.(\w+)', r'f.\1', lambda key, value: value * 2),  # with a transform
    (r'fixed', None, lambda key, value: value),  # a family key that is dropped
]


def test_apply_key_map_templates_callables_transforms_and_drops():
    """Catches: partial matches (``a.1.w.extra`` must not become ``b.1.weight``), a transform not applied,
    a ``None`` target kept, and a ``drop`` key counted as unknown."""
    sd = {'a.1.w': torch.ones(1), 'c.4': torch.ones(1), 'e.x': torch.ones(1), 'fixed': torch.ones(1),
          'head.w': torch.ones(1)}
    out = apply_key_map(sd, RULES, 'toy', drop=r'head\.', expected="'a.*'")
    assert list(out) == ['b.1.weight', 'd.5', 'f.x']
    assert out['f.x'].item() == 2 and out['b.1.weight'].item() == 1
    with pytest.raises(UnmappedKeysError, match=r'toy: 1 key\(s\) cannot be mapped to mmsparse: a.1.w.extra'):
        apply_key_map({'a.1.w.extra': torch.ones(1), 'c.1': torch.ones(1)}, RULES, 'toy')
    # lenient (the upgrades of older mmsparse layouts): unknown keys pass through, an empty dict is no error
    assert list(apply_key_map({'zz': 1, 'c.0': 2}, RULES, 'toy', strict=False)) == ['zz', 'd.1']
    assert apply_key_map({}, RULES, 'toy', strict=False) == {}
    with pytest.raises(ForeignStateDictError, match=r"toy: .*it is empty\); expected 'a\.\*'"):
        apply_key_map({}, RULES, 'toy', expected="'a.*'")
