"""The family model bases: ``configs/_base_/models/<head>_<family>.py`` holds the detector / segmentor with the
family's backbone, the variant configs under ``configs/<family>/`` hold the recipe and inherit the backbone.

mmengine refuses two bases that both define ``model`` (``Duplicate key is not allowed among bases``), so a family's
backbone cannot live in one file shared by the four heads: each (head, family) pair has its own model base on top
of the generic head base (mmseg's ``_base_/models/upernet_swin.py`` layout). Only ``Config.fromfile``, no builds.
"""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from tests.conftest import REPO

FAMILIES = {'biformer': 'mmsparse.BiFormer', 'cloformer': 'mmsparse.CloFormer', 'stvit': 'mmsparse.STViT'}
#: variant file prefix -> the generic head base its family model base builds on
HEADS = {'maskrcnn': 'mask_rcnn_fpn', 'retinanet': 'retinanet_fpn', 'semfpn': 'semfpn', 'upernet': 'upernet'}
CASES = [(head, family) for family in FAMILIES for head in HEADS]


def model_base(head, family):
    return osp.join(REPO, 'configs', '_base_', 'models', f'{head}_{family}.py')


def variants(head, family):
    return sorted(glob.glob(osp.join(REPO, 'configs', family, f'{head}_{family}_*.py')))


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def test_every_variant_config_has_a_model_base():
    """Each variant config of the three families is one (head, family) pair of :data:`CASES`."""
    covered = {p for head, family in CASES for p in variants(head, family)}
    configs = {p for family in FAMILIES for p in glob.glob(osp.join(REPO, 'configs', family, '*.py'))}
    assert configs and covered == configs
    assert all(osp.isfile(model_base(head, family)) for head, family in CASES)


@pytest.mark.parametrize('head, family', CASES, ids=[f'{h}_{f}' for h, f in CASES])
def test_variants_take_their_backbone_from_the_family_base(head, family):
    base_path = model_base(head, family)
    base_text = read(base_path)
    assert f"_base_ = './{HEADS[head]}.py'" in base_text, 'a model base builds on the generic head base'
    base = Config.fromfile(base_path).model.backbone
    assert base.type == FAMILIES[family] and '_delete_' not in base
    roots = []
    for path in variants(head, family):
        text = read(path)
        # the backbone is stated once, in the base: the variants only override values
        assert '_delete_' not in text, f'{path} replaces the backbone instead of inheriting it'
        assert FAMILIES[family] not in text, f'{path} restates the backbone type'
        assert f"'../_base_/models/{HEADS[head]}.py'" not in text, f'{path} skips the family model base'
        if f"'../_base_/models/{head}_{family}.py'" in text:
            roots.append(path)
        backbone = Config.fromfile(path).model.backbone
        assert list(backbone) == list(base), f'{path}: backbone keys differ from the base'
        assert backbone.type == base.type
    # one recipe per head builds on the model base; the other sizes inherit that recipe
    assert len(roots) == 1, roots


def test_model_base_resolves_through_the_package_scope(tmp_path):
    """Users can start from a model base alone: ``mmsparse::_base_/models/...`` resolves once mmsparse is
    imported, and the base's relative parent (the generic head base) comes with it."""
    import mmsparse  # noqa: F401  (registers the mmsparse:: scope with mmengine)
    path = tmp_path / 'mine.py'
    path.write_text("_base_ = 'mmsparse::_base_/models/upernet_stvit.py'\nmodel = dict(backbone=dict(arch='base'))\n")
    model = Config.fromfile(str(path)).model
    assert model.backbone.type == 'mmsparse.STViT' and model.backbone.arch == 'base'
    assert model.type == 'EncoderDecoder' and model.auxiliary_head.in_index == 2
