"""A stock mmseg config with an mmsparse backbone swapped in: mmseg passes the model's ``pretrained=`` to the
backbone, which maps it to a Pretrained init_cfg (mmseg's deprecation warning) and loads it loudly."""
import copy
import warnings

import pytest
import torch
from mmengine.config import Config

from mmsparse.families import get_family, list_families
from mmsparse.registry import MODELS as SPARSE_MODELS

FAMILIES = list_families()


def tiny(name):
    """``(backbone config as a user writes it, the tiny model built from it, its output channels, input size)``:
    the family's ``tiny`` config with the ``mmsparse.`` scope prefix."""
    spec = get_family(name)
    cfg = spec.tiny_cfg()
    model = SPARSE_MODELS.build(copy.deepcopy(cfg)).eval()
    with torch.no_grad():
        channels = [o.shape[1] for o in model(torch.zeros(1, 3, *spec.tiny_input))]
    cfg['type'] = 'mmsparse.' + cfg['type'].split('.')[-1]
    return cfg, model, channels, spec.tiny_input


def _stock_upernet(backbone, channels, pretrained, tmp_path):
    # what a user writes: inherit the stock config, import mmsparse, swap the backbone
    path = tmp_path / 'user_config.py'
    path.write_text("_base_ = ['mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py']\n"
                    "custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)\n"
                    f"model = dict(backbone=dict(_delete_=True, **{backbone!r}))\n")
    cfg = Config.fromfile(str(path))
    assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'  # the stock value, passed to the backbone
    cfg.model.pretrained = pretrained
    cfg.model.decode_head.in_channels = channels
    cfg.model.decode_head.channels = 32
    cfg.model.auxiliary_head.in_channels = channels[2]
    cfg.model.auxiliary_head.channels = 16
    for head in (cfg.model.decode_head, cfg.model.auxiliary_head):
        head.norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
    return cfg


@pytest.mark.parametrize('name', FAMILIES)
def test_stock_mmseg_upernet_builds_loads_pretrained_and_runs(name, tmp_path):
    from mmengine.utils import import_modules_from_strings
    from mmseg.registry import MODELS
    backbone, weights, channels, size = tiny(name)
    with torch.no_grad():
        for p in weights.parameters():
            p.add_(0.01)
    path = tmp_path / 'backbone.pth'
    torch.save({'state_dict': weights.state_dict()}, path)
    cfg = _stock_upernet(backbone, channels, str(path), tmp_path)
    assert cfg.model.type == 'EncoderDecoder' and cfg.model.backbone.type == backbone['type']
    import_modules_from_strings(**cfg.custom_imports)
    with pytest.warns(UserWarning, match='DeprecationWarning: pretrained is deprecated, please use "init_cfg"'):
        model = MODELS.build(cfg.model)
    assert model.backbone.init_cfg == dict(type='Pretrained', checkpoint=str(path))
    model.init_weights()
    for k, v in weights.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size), mode='tensor')
    assert out.shape == (1, cfg.model.decode_head.num_classes, size[0] // 4, size[1] // 4)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', FAMILIES)
def test_pretrained_argument_is_mapped_or_refused(name):
    cls = get_family(name).backbone
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = cls(pretrained='ckpt.pth')
    assert model.init_cfg == dict(type='Pretrained', checkpoint='ckpt.pth')
    assert any('pretrained is deprecated' in str(w.message) for w in caught)
    with pytest.raises(ValueError, match='init_cfg and pretrained cannot be set at the same time'):
        cls(pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth'))
    with pytest.raises(TypeError, match='pretrained must be a str'):
        cls(pretrained=True)


def _stock_base_upernet(backbone, channels, tmp_path):
    """mmseg's own ``_base_/models/upernet_r50.py`` (``pretrained='open-mmlab://resnet50_v1c'`` on the
    EncoderDecoder) with an mmsparse backbone swapped in, nothing else overridden but the head widths."""
    path = tmp_path / 'user_upernet.py'
    path.write_text("_base_ = ['mmseg::_base_/models/upernet_r50.py']\n"
                    "custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)\n"
                    f"model = dict(backbone=dict(_delete_=True, **{backbone!r}))\n")
    cfg = Config.fromfile(str(path))
    assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'
    cfg.model.decode_head.update(in_channels=channels, channels=32, norm_cfg=dict(type='BN', requires_grad=True))
    cfg.model.auxiliary_head.update(in_channels=channels[2], channels=16, norm_cfg=dict(type='BN', requires_grad=True))
    cfg.model.data_preprocessor = None
    return cfg


@pytest.mark.parametrize('name', FAMILIES)
def test_stock_pretrained_without_override_is_refused_naming_it(name, tmp_path):
    """Without ``model.pretrained=None`` the ResNet zoo name would reach our backbone; the build stops and says
    which override to write. With it, the same config builds and runs."""
    from mmengine.utils import import_modules_from_strings
    from mmseg.registry import MODELS
    backbone, _, channels, size = tiny(name)
    cfg = _stock_base_upernet(backbone, channels, tmp_path)
    import_modules_from_strings(**cfg.custom_imports)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(ValueError, match=r"checkpoint 'open-mmlab://resnet50_v1c' is from the open-mmlab:// model "
                                             r'zoo.*override it with model.pretrained=None'):
            MODELS.build(copy.deepcopy(cfg.model))  # mmseg writes model.pretrained into the backbone dict
    cfg.model.pretrained = None
    model = MODELS.build(cfg.model)
    assert model.backbone.init_cfg is None
    model.init_weights()
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, *size), mode='tensor')
    assert out.shape == (1, cfg.model.decode_head.num_classes, size[0] // 4, size[1] // 4)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', FAMILIES)
def test_missing_checkpoint_file_names_the_from_scratch_setting(name, tmp_path):
    """A configured checkpoint that is not there: the error names the file and how to train from scratch."""
    cls = get_family(name).backbone
    missing = str(tmp_path / 'weights' / 'absent.pth')
    model = cls(init_cfg=dict(type='Pretrained', checkpoint=missing))
    with pytest.raises(FileNotFoundError) as info:
        model.init_weights()
    msg = str(info.value)
    assert missing in msg and 'does not exist' in msg and 'init_cfg=None' in msg
