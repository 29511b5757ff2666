"""One ``impl`` switch: ``backbone.impl = ...`` and :func:`mmsparse.set_impl` after building reach every operator,
give the outputs of a model built with that implementation, accept ``'flex'`` only where BRA is, and reject
unknown values. Also: every backbone builds on the meta device, with :func:`drop_path_rates`."""
import copy

import pytest
import torch
from mmcv.cnn.bricks import DropPath

import mmsparse
from mmsparse import set_impl
from mmsparse.families import get_family, list_families
from mmsparse.models import BiFormer, SparseAttnBlock
from mmsparse.models.backbones.biformer import BiFormerBlock
from mmsparse.models.backbones.cloformer import EfficientBlock
from mmsparse.models.layers import drop_path_rates
from mmsparse.ops import (AttnConv, BiLevelRoutingAttention, GlobalAttentionLePE, SuperTokenAttention, TokenMHSA,
                          accepted_impls)
from mmsparse.ops.impl import ImplOperator
from mmsparse.registry import MODELS
from mmsparse.utils.compat import flex_attention_available
from tests.conftest import REPO

HAS_FLEX = flex_attention_available()[0]

#: every module class that carries an implementation choice
SWITCHED = (BiLevelRoutingAttention, GlobalAttentionLePE, AttnConv, SuperTokenAttention, TokenMHSA, EfficientBlock,
            BiFormerBlock)

#: every registered family (its ``tiny`` config is the small model of these tests)
FAMILIES = list_families()
#: the families none of whose operators offers 'flex'
WITHOUT_FLEX = [name for name in FAMILIES
                if not any('flex' in getattr(op.cls, 'impls', ()) for op in get_family(name).operators)]


def tiny(name, **kwargs):
    """The family's tiny backbone (its spec's ``tiny`` config), with ``kwargs`` added."""
    return MODELS.build(dict(get_family(name).tiny_cfg(), **kwargs))


def impls_inside(model):
    """class name -> set of impl values of every switchable module inside ``model``."""
    found = {}
    for m in model.modules():
        if isinstance(m, SWITCHED):
            found.setdefault(type(m).__name__, set()).add(m.impl)
    return found


@pytest.mark.parametrize('name', FAMILIES)
def test_switched_lists_every_operator_of_the_family(name):
    """``impls_inside`` sees every switchable module of each family (a new family's operators go into SWITCHED)."""
    model = tiny(name)
    missing = {type(m).__name__ for m in model.modules() if isinstance(m, ImplOperator) and not isinstance(m, SWITCHED)}
    assert not missing and impls_inside(model), missing


def features(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('built, switched', [('fast', 'reference'), ('reference', 'fast')])
def test_backbone_impl_set_after_build_equals_built_with_it(name, built, switched):
    """Catches a property that records the value but leaves operators behind (e.g. the pre-property attribute,
    or EfficientBlock's channels-last FFN not following): the operators, and the outputs, must be those of the
    model built with the new value."""
    torch.manual_seed(0)
    model = tiny(name, impl=built)
    target = tiny(name, impl=switched)
    target.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 37, 45)
    before = features(model, x)
    model.impl = switched
    assert model.impl == switched
    kinds = impls_inside(model)
    assert kinds == impls_inside(target) and all(v == {switched} for v in kinds.values()), kinds
    if name == 'cloformer':
        assert 'EfficientBlock' in kinds  # the block's own FFN layout follows the switch too
    if name == 'biformer':
        assert 'BiFormerBlock' in kinds  # so does BiFormer's channels-last block
    after, expected = features(model, x), features(target, x)
    for a, e, b in zip(after, expected, before):
        assert torch.equal(a, e)
    # the two implementations differ in their float rounding, so equality above is not vacuous
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_biformer_flex_reaches_bra_only_and_equals_building_with_it():
    """'flex' is BRA's: the stage-4 global attention and the blocks' layout run 'fast'; building with 'flex'
    gives the same modules.
    A torch without FlexAttention (< 2.5) refuses it with an error that names the alternatives."""
    model = tiny('biformer')
    if not HAS_FLEX:
        with pytest.raises(RuntimeError, match=r"impl='flex' needs FlexAttention .*use impl='fast' or "):
            model.impl = 'flex'
        with pytest.raises(RuntimeError, match=r"impl='flex' needs FlexAttention"):
            tiny('biformer', impl='flex')
        return
    model.impl = 'flex'
    assert model.impl == 'flex'
    assert impls_inside(model) == {'BiLevelRoutingAttention': {'flex'}, 'GlobalAttentionLePE': {'fast'},
                                   'BiFormerBlock': {'fast'}}
    assert impls_inside(tiny('biformer', impl='flex')) == impls_inside(model)
    assert isinstance(model, BiFormer) and tiny('biformer', impl='flex').impl == 'flex'
    model.impl = 'reference'
    assert impls_inside(model) == {'BiLevelRoutingAttention': {'reference'}, 'GlobalAttentionLePE': {'reference'},
                                   'BiFormerBlock': {'reference'}}


def test_flex_is_biformers_only():
    """The built-in families of the test below; a new family with 'flex' needs a test like the one above."""
    assert {'cloformer', 'stvit'} <= set(WITHOUT_FLEX) and set(FAMILIES) - set(WITHOUT_FLEX) == {'biformer'}


@pytest.mark.parametrize('name', WITHOUT_FLEX)
def test_flex_rejected_without_bra(name):
    model = tiny(name, impl='reference')
    with pytest.raises(ValueError, match=r"impl='flex' is not known for .*choose one of \['reference', 'fast'\] "
                                         r"\('flex' is offered by BiLevelRoutingAttention only"):
        model.impl = 'flex'
    with pytest.raises(ValueError, match=r"impl='flex' is not known; choose one of \['reference', 'fast'\]"):
        tiny(name, impl='flex')
    assert model.impl == 'reference' and all(v == {'reference'} for v in impls_inside(model).values())


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('bad', ['cuda', 'Fast', None, 1])
def test_unknown_impl_raises_and_changes_nothing(name, bad):
    """The check runs before any operator is touched: a rejected value leaves the whole model as it was."""
    model = tiny(name, impl='reference')
    with pytest.raises(ValueError, match=rf"impl={bad!r} is not known for {get_family(name).backbone.__name__}; "
                                         r"choose one of "
                                         r"\['reference', 'fast'"):
        model.impl = bad
    assert model.impl == 'reference' and all(v == {'reference'} for v in impls_inside(model).values())


def test_set_impl_on_modules_without_backbone():
    block = SparseAttnBlock(16, dict(type='SuperTokenAttention', num_heads=2, stoken_size=2))
    assert set_impl(block, 'reference') == 2  # the STA and its refinement MHSA
    assert impls_inside(block) == {'SuperTokenAttention': {'reference'}, 'TokenMHSA': {'reference'}}
    assert accepted_impls(block) == ['reference', 'fast']
    bra = SparseAttnBlock(16, dict(type='BiLevelRoutingAttention', num_heads=2, n_win=2, topk=1))
    assert accepted_impls(bra) == ['reference', 'fast', 'flex']
    if HAS_FLEX:
        assert set_impl(bra, 'flex') == 1 and bra.attn.impl == 'flex'
    else:
        with pytest.raises(RuntimeError, match=r"impl='flex' needs FlexAttention"):
            set_impl(bra, 'flex')
    with pytest.raises(ValueError, match='Sequential contains no mmsparse operator'):
        set_impl(torch.nn.Sequential(torch.nn.Linear(2, 2)), 'fast')
    with pytest.raises(ValueError, match=r"impl='triton' is not known; choose one of \['reference', 'fast'\]"):
        set_impl(torch.nn.Linear(2, 2), 'triton')
    with pytest.raises(ValueError, match=r"TokenMHSA: impl='flex' is not known"):
        TokenMHSA(16, 2).impl = 'flex'  # an operator's own attribute checks its value too
    assert mmsparse.set_impl is set_impl


def _build_from_config(name, **backbone):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(str(REPO / 'configs' / name))
    init_default_scope(cfg.default_scope)
    model_cfg = copy.deepcopy(cfg.model)
    if model_cfg.get('pretrained'):
        model_cfg.pretrained = None  # stock ResNet weights are downloads; the switch does not depend on them
    if (model_cfg.backbone.get('init_cfg') or {}).get('type') == 'Pretrained':
        model_cfg.backbone.init_cfg = None
    model_cfg.backbone.update(backbone)
    return __import__(f'{cfg.default_scope}.registry', fromlist=['MODELS']).MODELS.build(model_cfg)


def test_set_impl_on_a_detector_from_a_demo_config_equals_building_with_it():
    """A whole Mask R-CNN (configs/demo): set_impl reaches the backbone's operators and its ``impl`` property,
    and the features equal those of the detector built with ``backbone.impl='reference'``."""
    torch.manual_seed(0)
    detector = _build_from_config('demo/maskrcnn_demo_synthetic.py')
    target = _build_from_config('demo/maskrcnn_demo_synthetic.py', impl='reference')
    target.load_state_dict(detector.state_dict())
    assert detector.backbone.impl == 'fast' and target.backbone.impl == 'reference'
    n = sum(isinstance(m, SWITCHED) for m in detector.modules())
    assert set_impl(detector, 'reference') == n > 0
    assert detector.backbone.impl == 'reference'
    assert impls_inside(detector) == impls_inside(target) == {'BiLevelRoutingAttention': {'reference'},
                                                              'GlobalAttentionLePE': {'reference'},
                                                              'BiFormerBlock': {'reference'}}
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, e in zip(detector.eval().extract_feat(x), target.eval().extract_feat(x)):
            assert torch.equal(a, e)


@pytest.mark.parametrize('name, kind, flex', [
    ('plugins/retinanet_r50-bra-c4-c5_fpn_1x_coco.py', 'BiLevelRoutingAttention', True),
    ('plugins/retinanet_r50-sta-c4-c5_fpn_1x_coco.py', 'SuperTokenAttention', False),
])
def test_set_impl_reaches_plugins_inside_a_stock_resnet(name, kind, flex):
    detector = _build_from_config(name)
    set_impl(detector, 'reference')
    assert impls_inside(detector)[kind] == {'reference'}
    if flex and not HAS_FLEX:
        with pytest.raises(RuntimeError, match=r"impl='flex' needs FlexAttention"):
            set_impl(detector, 'flex')
    elif flex:
        set_impl(detector, 'flex')
        assert impls_inside(detector) == {kind: {'flex'}}
    else:
        with pytest.raises(ValueError, match=r"impl='flex' is not known for RetinaNet; choose one of "
                                             r"\['reference', 'fast'\]"):
            set_impl(detector, 'flex')
        assert impls_inside(detector)[kind] == {'reference'}


# ------------------------------------------------------------------------------ meta device, drop-path rates

@pytest.mark.parametrize('name, arch', [(n, a) for n in FAMILIES for a in get_family(n).backbone.arch_zoo])
def test_every_arch_builds_on_the_meta_device(name, arch):
    """CloFormer and STViT used to call ``torch.linspace`` on the default device (meta has no ``tolist``)."""
    cls = get_family(name).backbone
    with torch.device('meta'):
        model = cls(arch=arch, drop_path_rate=0.2)
    assert {p.device.type for p in model.parameters()} == {'meta'}
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    depths = cls.arch_zoo[arch]['depths']
    assert len(rates) == sum(depths) - 1  # the first block's rate is 0: no DropPath
    assert rates[-1] == pytest.approx(0.2)


def test_drop_path_rates_hand_computed():
    assert drop_path_rates(0.3, [1, 2]) == [[0.0], pytest.approx([0.15, 0.3])]
    assert drop_path_rates(0.4, (2, 1, 2)) == [[0.0, pytest.approx(0.1)], [pytest.approx(0.2)],
                                               pytest.approx([0.3, 0.4])]
    assert drop_path_rates(0., [2, 2]) == [[0.0, 0.0], [0.0, 0.0]]
    with torch.device('meta'):
        assert drop_path_rates(0.1, [1, 1]) == [[0.0], [pytest.approx(0.1)]]
    with pytest.raises(ValueError, match=r'drop_path_rate must be a float in \[0, 1\), got 1.5'):
        drop_path_rates(1.5, [1])
    with pytest.raises(ValueError, match='depths entries must be a positive int, got 0'):
        drop_path_rates(0.1, [1, 0])


@pytest.mark.parametrize('name', FAMILIES)
def test_backbones_take_their_block_rates_from_drop_path_rates(name):
    """Block ``j`` of stage ``i`` gets ``drop_path_rates(rate, depths)[i][j]`` (linear over all blocks)."""
    model = tiny(name, drop_path_rate=0.25)
    depths = [len(stage.blocks) for stage in model.stages]
    arch = get_family(name).tiny.get('arch')
    if isinstance(arch, dict):
        assert depths == list(arch['depths'])
    expected = drop_path_rates(0.25, depths)
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            got = block.drop_path.drop_prob if isinstance(block.drop_path, DropPath) else 0.
            assert got == pytest.approx(expected[i][j]), (i, j)
