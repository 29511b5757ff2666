"""Registry and scope behaviour: our models build under mmdet's and mmseg's default scopes, by plain and by
``mmsparse.``-scoped name, and from a stock config through ``custom_imports``."""
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope

import mmsparse  # noqa: F401
from mmsparse.registry import MODELS, register_into_downstream

TINY_BIFORMER = dict(arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 1, 1]), n_win=2, topks=(1, 2, 4, -2))
PUBLIC = ['BiFormer', 'CloFormer', 'STViT', 'BiLevelRoutingAttention', 'AttnConv', 'SuperTokenAttention']
#: exactly what mmsparse adds to mmdet's / mmseg's MODELS: the names the docs and configs use without the
#: ``mmsparse.`` prefix (backbones, SparseAttnBlock and the two necks, the operators attn_cfg accepts)
DOWNSTREAM = {'BiFormer', 'CloFormer', 'STViT', 'SparseAttnBlock', 'SparseAttnFPN', 'MultiLevelSparseAttn',
              'BiLevelRoutingAttention', 'AttnConv', 'SuperTokenAttention'}
#: internal blocks: in mmsparse's registry only
INTERNAL = ['TokenMHSA', 'STViTBlock', 'GlobalAttentionLePE']


def build_in_scope(scope, cfg):
    import importlib
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        init_default_scope(scope)
        return registry.build(cfg)


@pytest.mark.parametrize('name', PUBLIC)
def test_public_modules_registered_everywhere(name):
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    assert name in MODELS.module_dict
    assert DET.module_dict.get(name) is MODELS.module_dict[name]
    assert SEG.module_dict.get(name) is MODELS.module_dict[name]


def mmsparse_entries(registry):
    return {name for name, obj in registry.module_dict.items() if obj.__module__.split('.')[0] == 'mmsparse'}


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_exactly_the_public_names_go_downstream(scope):
    import importlib
    registry = importlib.import_module(f'{scope}.registry')
    assert mmsparse_entries(registry.MODELS) == DOWNSTREAM
    assert mmsparse_entries(registry.HOOKS) == set()  # the hooks are used as mmsparse.ExactResumeHook etc.
    registry.DATASETS.get('SyntheticADE20KDataset')  # imports the dataset modules the registry lists
    assert mmsparse_entries(registry.DATASETS) == ({'SyntheticADE20KDataset'} if scope == 'mmseg' else set())


@pytest.mark.parametrize('name', INTERNAL)
def test_internal_blocks_build_by_scoped_name_only(name):
    from mmdet.registry import MODELS as DET
    assert name in MODELS.module_dict and name not in DET.module_dict
    assert DET.get(f'mmsparse.{name}') is MODELS.module_dict[name]


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('type_name', ['BiFormer', 'mmsparse.BiFormer'])
def test_backbone_builds_under_downstream_scope(scope, type_name):
    model = build_in_scope(scope, dict(type=type_name, **TINY_BIFORMER))
    assert type(model) is MODELS.get('BiFormer')


def test_never_shadows_downstream_names():
    from mmdet.registry import MODELS as DET

    class FPN:  # a name mmdet already owns
        pass

    MODELS.register_module(name='FPN', module=FPN, force=True)
    try:
        with pytest.warns(UserWarning, match='already registers a model named'):
            register_into_downstream(['mmdet'], names=['FPN'])
        assert DET.get('FPN') is not FPN
    finally:
        MODELS.module_dict.pop('FPN')


def test_stock_config_with_custom_imports(tmp_path):
    """A stock mmdet config plus custom_imports uses our backbone by its plain name."""
    cfg_file = tmp_path / 'retinanet_biformer.py'
    cfg_file.write_text(
        "_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)\n"
        f"model = dict(backbone=dict(_delete_=True, type='BiFormer', **{TINY_BIFORMER!r}),\n"
        "             neck=dict(in_channels=[32, 64, 128, 256]))\n")
    cfg = Config.fromfile(str(cfg_file))
    model = build_in_scope('mmdet', cfg.model)
    assert type(model.backbone).__name__ == 'BiFormer'
