"""Registry and scope behaviour: our models build under mmdet's and mmseg's default scopes, by plain and by
``mmsparse.``-scoped name, and from a stock config through ``custom_imports``."""
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope

import mmsparse  # noqa: F401
from mmsparse.registry import MODELS, register_into_downstream

TINY_BIFORMER = dict(arch=dict(embed_dims=[32, 64, 128, 256], depths=[1, 1, 1, 1]), n_win=2, topks=(1, 2, 4, -2))
PUBLIC = ['BiFormer', 'CloFormer', 'STViT', 'BiLevelRoutingAttention', 'AttnConv', 'SuperTokenAttention']


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
            register_into_downstream(['mmdet'])
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
