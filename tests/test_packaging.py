"""mmsparse installed as OpenMMLab packages are: configs shipped under ``mmsparse/.mim``, ``mmsparse::`` inheritance.

The fast tests use the in-tree (editable) layout that ``pip install -e .`` creates; the slow one builds a wheel
from a copy of the tracked files, installs it into a folder with ``pip install --target`` and loads a config
that inherits from it, with the repository nowhere on the path.
"""
import importlib.util
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from mmsparse.families import list_families

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_setup_module():
    """``setup.py`` as a module (its ``setup()`` call only runs as ``__main__``, i.e. under pip / setuptools)."""
    spec = importlib.util.spec_from_file_location('mmsparse_setup', osp.join(REPO, 'setup.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


USER_CONFIG = """
_base_ = 'mmsparse::biformer/maskrcnn_biformer_s_coco.py'
model = dict(backbone=dict(init_cfg=None, drop_path_rate=0.1))
train_cfg = dict(max_epochs=2)
"""

LOAD_USER_CONFIG = """
import sys
import mmsparse
from mmengine.config import Config
cfg = Config.fromfile(sys.argv[1])
print(mmsparse.__file__)
print(cfg.model.type, cfg.model.backbone.type, cfg.model.backbone.arch, cfg.model.backbone.drop_path_rate,
      cfg.model.backbone.init_cfg, cfg.train_cfg.max_epochs, cfg.default_scope)
"""


def load_user_config(tmp_path, pythonpath):
    """Write a config outside the repository that inherits ``mmsparse::`` and load it in a fresh interpreter."""
    (tmp_path / 'my_config.py').write_text(USER_CONFIG)
    proc = subprocess.run([sys.executable, '-c', LOAD_USER_CONFIG, 'my_config.py'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=pythonpath, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split('\n')


def ci_pins():
    """``{distribution: [versions]}`` that CI installs: the ``name==version`` pins in tools/setup_env.sh, and the
    torch of each lane (setup_env.sh's default and tools/ci/torch21_lane.sh's ``TORCH=``)."""
    pins = {}
    for rel in ('tools/setup_env.sh', 'tools/ci/torch21_lane.sh'):
        with open(osp.join(REPO, rel)) as f:
            text = f.read()
        for name, version in re.findall(r'"([A-Za-z][\w-]*)==([\d.]+)"', text):
            pins.setdefault(name.lower(), []).append(version)
        for version in re.findall(r'TORCH(?:="\$\{TORCH:-|=)([\d.]+)', text):
            pins.setdefault('torch', []).append(version)
    return pins


def test_requirements_are_ranges_that_hold_the_ci_pins():
    """Users get ranges (mmdet / mmseg as extras); the exact versions CI installs lie inside them."""
    from packaging.requirements import Requirement
    setup = load_setup_module()
    required = [Requirement(r) for r in setup.INSTALL_REQUIRES]
    extras = {k: [Requirement(r) for r in v] for k, v in setup.EXTRAS_REQUIRE.items()}
    assert not any(spec.operator == '==' for r in required for spec in r.specifier)
    assert {r.name for r in required} >= {'torch', 'mmengine', 'mmcv', 'einops'}
    assert not {'mmdet', 'mmsegmentation'} & {r.name for r in required}
    assert [r.name for r in extras['det']] == ['mmdet']
    assert {r.name for r in extras['seg']} == {'mmsegmentation', 'ftfy', 'regex'}
    assert {r.name for r in extras['all']} == {r.name for r in extras['det'] + extras['seg']}
    ranges = {r.name: r.specifier for r in required + extras['all']}
    pins = ci_pins()
    assert set(pins) >= {'torch', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation'}, pins
    assert len(pins['torch']) == 2, pins['torch']  # the main lane's and the torch 2.1 lane's
    for name in ('torch', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation'):
        for version in pins[name]:
            assert version in ranges[name], (name, version, str(ranges[name]))
    # the ranges are not wider than the minor versions CI tests
    assert '2.0.1' not in ranges['torch'] and '2.14.0' not in ranges['torch']
    assert '0.11.0' not in ranges['mmengine'] and '2.2.0' not in ranges['mmcv']
    assert '3.4.0' not in ranges['mmdet'] and '1.3.0' not in ranges['mmsegmentation']


def test_mim_mode_follows_the_setuptools_command():
    """Editable installs link, builds copy, metadata-only calls leave ``.mim`` alone."""
    setup = load_setup_module()
    assert setup.mim_mode(['setup.py', 'develop']) == 'symlink'
    assert setup.mim_mode(['setup.py', 'editable_wheel', '--dist-dir', 'x']) == 'symlink'
    assert setup.mim_mode(['setup.py', 'bdist_wheel']) == 'copy'
    assert setup.mim_mode(['setup.py', 'sdist']) == 'copy'
    assert setup.mim_mode(['setup.py', 'egg_info']) is None


@pytest.mark.parametrize('mode', ['symlink', 'copy'])
def test_add_mim_extension_layout(mode, tmp_path, monkeypatch):
    """Each mode leaves ``configs``, ``tools``, ``model-index.yml`` under ``mmsparse/.mim``, replacing what was there
    (a stale copy or a link of the other mode), and the copy has no ``__pycache__``."""
    setup = load_setup_module()
    (tmp_path / 'configs' / 'fam').mkdir(parents=True)
    (tmp_path / 'configs' / 'fam' / 'a.py').write_text('x = 1\n')
    (tmp_path / 'configs' / '__pycache__').mkdir()
    (tmp_path / 'tools').mkdir()
    (tmp_path / 'tools' / 'train.py').write_text('')
    (tmp_path / 'model-index.yml').write_text('Import: []\n')
    stale = tmp_path / 'mmsparse' / '.mim' / 'configs'
    stale.mkdir(parents=True)
    (stale / 'old.py').write_text('')
    monkeypatch.setattr(setup, 'ROOT', str(tmp_path))
    setup.add_mim_extension(mode)
    mim = tmp_path / 'mmsparse' / '.mim'
    assert sorted(os.listdir(mim)) == ['configs', 'model-index.yml', 'tools']
    assert (mim / 'configs' / 'fam' / 'a.py').read_text() == 'x = 1\n'
    assert not (mim / 'configs' / 'old.py').exists()
    assert (mim / 'model-index.yml').read_text() == 'Import: []\n'
    for name in ('configs', 'tools', 'model-index.yml'):
        assert osp.islink(mim / name) == (mode == 'symlink'), name
    if mode == 'copy':
        assert not (mim / 'configs' / '__pycache__').exists()
    setup.add_mim_extension(None)  # metadata-only calls change nothing
    assert sorted(os.listdir(mim)) == ['configs', 'model-index.yml', 'tools']


def test_importing_mmsparse_registers_its_config_package():
    """mmengine refuses ``pkg::`` for packages missing from its ``MODULE2PACKAGE``; ``import mmsparse`` adds it,
    naming a module so that the package is found through the import system (an editable install's
    distribution location is site-packages, not the sources)."""
    import mmsparse
    from mmengine.config import utils
    from mmengine.utils import get_installed_path, is_installed
    package = utils.MODULE2PACKAGE['mmsparse']
    assert is_installed(package)
    assert osp.realpath(get_installed_path(package)) == osp.realpath(osp.dirname(mmsparse.__file__))


def test_inherit_mmsparse_config_from_outside_the_repository(tmp_path):
    """The editable layout (what ``pip install -e .`` makes), then a user's config in a temporary folder that
    inherits ``mmsparse::biformer/...`` and overrides a few fields."""
    load_setup_module().add_mim_extension('symlink')
    out = load_user_config(tmp_path, REPO)
    assert osp.realpath(out[0]) == osp.realpath(osp.join(REPO, 'mmsparse', '__init__.py'))
    assert out[1] == 'MaskRCNN mmsparse.BiFormer small 0.1 None 2 mmdet'


def test_inherited_config_builds_its_model(tmp_path):
    """What ``mmsparse::`` brings in is usable: the detector builds under the inherited default scope."""
    load_setup_module().add_mim_extension('symlink')
    (tmp_path / 'my_config.py').write_text(USER_CONFIG)
    code = ('import mmsparse, sys\n'
            'from mmengine.config import Config\n'
            'from mmengine.registry import MODELS, init_default_scope\n'
            'cfg = Config.fromfile("my_config.py")\n'
            'init_default_scope(cfg.default_scope)\n'
            'model = MODELS.build(cfg.model)\n'
            'print(type(model).__name__, type(model.backbone).__name__)\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split('\n')[-2] == 'MaskRCNN BiFormer'


def tracked_files():
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [p for p in out.split('\0') if p]


@pytest.mark.parametrize('family', list_families())
def test_every_family_ships_its_configs(family):
    """Every registered family has tracked configs and a metafile under ``configs/<family>/`` (what the wheel,
    built from the tracked files, carries) and they are reachable as ``mmsparse::<family>/...`` in the editable
    layout."""
    tracked = [rel for rel in tracked_files() if rel.startswith(f'configs/{family}/')]
    assert f'configs/{family}/metafile.yml' in tracked
    configs = [rel for rel in tracked if rel.endswith('.py')]
    assert configs, f'no config of {family} is tracked'
    load_setup_module().add_mim_extension('symlink')
    for rel in configs:
        assert osp.isfile(osp.join(REPO, 'mmsparse', '.mim', rel)), rel


@pytest.mark.slow
def test_wheel_ships_configs_and_installs_with_pip(tmp_path):
    """Build a wheel from a copy of the tracked files, check what it carries and declares, install it with
    ``pip install --target`` and inherit one of its configs with only the install folder on the path."""
    src = tmp_path / 'src'
    for rel in tracked_files():
        if osp.isfile(osp.join(REPO, rel)):
            os.makedirs(src / osp.dirname(rel), exist_ok=True)
            shutil.copy2(osp.join(REPO, rel), src / rel)
    wheels = tmp_path / 'wheels'
    proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                           '-w', str(wheels), str(src)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel, ) = wheels.glob('mmsparse-*.whl')
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    configs = [rel for rel in tracked_files() if rel.startswith('configs/') and rel.endswith(('.py', '.yml'))]
    missing = [rel for rel in configs if f'mmsparse/.mim/{rel}' not in names]
    assert not missing, f'configs missing from the wheel: {missing}'
    assert 'mmsparse/.mim/model-index.yml' in names
    assert 'mmsparse/.mim/tools/train.py' in names
    assert not any(n.startswith(('tests/', 'configs/', 'tools/')) for n in names)
    assert not any('__pycache__' in n for n in names)
    requires = {line.split(': ', 1)[1] for line in metadata.splitlines() if line.startswith('Requires-Dist: ')}
    assert {'torch<2.14,>=2.1', 'mmengine<0.11,>=0.10', 'mmcv<2.2,>=2.1', 'mmdet<3.4,>=3.3; extra == "det"',
            'mmsegmentation<1.3,>=1.2; extra == "seg"'} <= requires, requires
    assert 'Provides-Extra: all' in metadata
    assert 'Requires-Python: >=3.8' in metadata

    target = tmp_path / 'site'
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', '--target',
                           str(target), str(wheel)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (target / 'mmsparse' / '.mim' / 'configs').is_symlink()
    user = tmp_path / 'user'
    user.mkdir()
    out = load_user_config(user, str(target))
    assert osp.realpath(out[0]) == osp.realpath(target / 'mmsparse' / '__init__.py')
    assert out[1] == 'MaskRCNN mmsparse.BiFormer small 0.1 None 2 mmdet'
