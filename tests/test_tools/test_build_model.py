"""``mmsparse.apis.load_config`` / ``build_model``: the one way from a config to a model.

The demo segmentor (a reduced BiFormer UPerNet, built in a second) stands for every config; a derived config file
adds what the real configs have: SyncBN heads and a ``Pretrained`` backbone ``init_cfg``.
"""
import os.path as osp

import pytest
import torch

from mmsparse.apis import build_model, load_config
from tests.conftest import REPO

DEMO = osp.join(REPO, 'configs/demo/upernet_demo_synthetic.py')


@pytest.fixture(scope='module')
def real_like(tmp_path_factory):
    """The demo segmentor with SyncBN in its heads and a Pretrained backbone file that does not exist."""
    path = tmp_path_factory.mktemp('cfg') / 'real_like.py'
    path.write_text(f"""
_base_ = [{DEMO!r}]
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='/nonexistent/backbone.pth')),
             decode_head=dict(norm_cfg=norm_cfg), auxiliary_head=dict(norm_cfg=norm_cfg))
""")
    return str(path)


def test_load_config_path_config_and_options(tmp_path):
    cfg = load_config(DEMO, {'model.decode_head.num_classes': 3})
    assert cfg.model.decode_head.num_classes == 3 and cfg.default_scope == 'mmseg'
    assert load_config(cfg) is cfg  # a Config is taken as given
    with pytest.raises(FileNotFoundError, match='nope.py'):
        load_config(str(tmp_path / 'nope.py'))
    with pytest.raises(TypeError, match='config must be'):
        load_config(42)


def test_build_model_drops_pretrained_and_sync_bn_on_cpu(real_like):
    from mmengine.registry import DefaultScope

    def current_scope():
        # mmengine restores its instances as deep copies: compare the scope names, not the objects
        instance = DefaultScope.get_current_instance()
        return None if instance is None else instance.scope_name

    scope_before = current_scope()
    model = build_model(real_like)  # the Pretrained file does not exist: it must not be read
    assert not model.training
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.decode_head.modules())
    assert model.cfg.model.decode_head.norm_cfg.type == 'SyncBN'  # the config itself is left as written
    assert model.cfg.model.backbone.init_cfg.type == 'Pretrained'
    assert current_scope() == scope_before
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), mode='tensor')
    assert out.shape[:2] == (1, 5)
    with pytest.raises((FileNotFoundError, OSError, RuntimeError)):
        build_model(real_like, pretrained=True)  # now the missing file is read


def test_build_model_seed_checkpoint_and_meta(tmp_path):
    a = build_model(DEMO, seed=0)
    b = build_model(DEMO, seed=0)
    c = build_model(DEMO, seed=1)
    key = 'backbone.stem.0.conv.weight'
    assert key in a.state_dict()
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])
    meta = dict(classes=('a', 'b', 'c', 'd', 'e'), palette=[[0, 0, 0]] * 5)
    path = str(tmp_path / 'a.pth')
    torch.save(dict(state_dict=a.state_dict(), meta=dict(dataset_meta=meta)), path)
    loaded = build_model(DEMO, path, seed=1)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in a.state_dict().items())
    assert loaded.dataset_meta == meta
    backbone = build_model(DEMO, path, part='backbone')  # a full checkpoint's backbone.* keys
    assert type(backbone).__name__ == 'BiFormer' and not backbone.training
    assert torch.equal(backbone.state_dict()['stem.0.conv.weight'], a.state_dict()[key])


def test_build_model_impl_and_bad_arguments(tmp_path):
    from mmsparse.ops import BiLevelRoutingAttention
    model = build_model(DEMO, part='backbone', impl='reference')
    ops = [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]
    assert ops and all(m.impl == 'reference' for m in ops)
    with pytest.raises(ValueError, match="part='neck'.*'model', 'backbone'"):
        build_model(DEMO, part='neck')
    with pytest.raises(ValueError, match="impl='nope'"):
        build_model(DEMO, part='backbone', impl='nope')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        build_model(DEMO, str(tmp_path / 'missing.pth'))
