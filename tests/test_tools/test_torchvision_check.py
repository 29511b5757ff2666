"""tools/train.py stops before training when a config needs torchvision:// weights and torchvision is missing."""
import os
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.config import Config, ConfigDict

from mmsparse.apis import check_torchvision
from tests.conftest import REPO

PLUGIN_CFG = osp.join(REPO, 'configs/plugins/retinanet_r50-bra-c4-c5_fpn_1x_coco.py')


def _missing(name):
    raise ModuleNotFoundError(f"No module named '{name}'")


def _present(name):
    return object()


@pytest.mark.parametrize('cfg, path', [
    (ConfigDict(model=dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')))),
     'model.backbone.init_cfg.checkpoint'),
    (ConfigDict(model=dict(pretrained='torchvision://resnet101')), 'model.pretrained'),
    (ConfigDict(load_from='torchvision://resnet18'), 'load_from'),
    (ConfigDict(model=dict(backbone=dict(init_cfg=[dict(type='Kaiming'), dict(type='Pretrained',
                                                                              checkpoint='torchvision://resnet50')]))),
     'model.backbone.init_cfg[1].checkpoint'),
])
def test_each_form_is_found_and_named(cfg, path):
    with pytest.raises(SystemExit) as err:
        check_torchvision(cfg, importer=_missing)
    msg = str(err.value)
    assert path in msg and 'torchvision' in msg and 'pip install torchvision' in msg
    assert f'--cfg-options {path}=' in msg and 'open-mmlab://' in msg and 'local file' in msg
    check_torchvision(cfg, importer=_present)  # with torchvision: nothing to say


def test_url_of_the_file_is_given():
    cfg = ConfigDict(model=dict(pretrained='torchvision://resnet50'))
    with pytest.raises(SystemExit, match=r'https://download\.pytorch\.org/models/resnet50-[0-9a-f]+\.pth'):
        check_torchvision(cfg, importer=_missing)


def test_configs_without_torchvision_pass_and_the_plugin_config_is_caught():
    check_torchvision(Config.fromfile(osp.join(REPO, 'configs/biformer/upernet_biformer_s_ade20k.py')),
                      importer=_missing)
    with pytest.raises(SystemExit, match='torchvision://resnet50'):
        check_torchvision(Config.fromfile(PLUGIN_CFG), importer=_missing)


def test_train_py_stops_before_training(tmp_path):
    # a sitecustomize makes `import torchvision` fail in the child, whether or not it is installed here
    (tmp_path / 'sitecustomize.py').write_text("import sys\nsys.modules['torchvision'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, 'tools/train.py', PLUGIN_CFG, '--work-dir', str(tmp_path / 'w')],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'model.backbone.init_cfg.checkpoint' in proc.stderr and 'pip install torchvision' in proc.stderr, \
        proc.stderr[-2000:]
    assert not (tmp_path / 'w').exists() or not any((tmp_path / 'w').rglob('*.pth'))
