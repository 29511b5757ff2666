"""``import mmsparse`` in a fresh interpreter: which modules it loads, and the global state it leaves alone.

One subprocess (about as slow as ``import torch``) reports everything the tests below check. The third-party
packages mmsparse itself imports are imported before the snapshot, so the comparison sees mmsparse's own
changes only (torch, numpy and cv2 install warnings filters and environment variables of their own).
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

PROBE = r"""
import json, os, sys, time, warnings
import cv2, einops, mmcv, mmcv.cnn, mmengine, mmengine.model, numpy, torch  # noqa: what mmsparse imports
import mmdet.registry, mmseg.registry  # noqa
filters, environ = list(warnings.filters), dict(os.environ)
start = time.perf_counter()
import mmsparse  # noqa
seconds = time.perf_counter() - start
modules = sorted(sys.modules)
new_filters = [repr(f) for f in warnings.filters if f not in filters]
lost_filters = [repr(f) for f in filters if f not in warnings.filters]
env_changed = sorted(k for k in set(environ) | set(os.environ) if environ.get(k) != os.environ.get(k))
# what a Runner does for dataset=dict(type='SyntheticADE20KDataset') under default_scope='mmseg'
from mmengine.registry import DATASETS, init_default_scope  # noqa: E402
init_default_scope('mmseg')
with DATASETS.switch_scope_and_registry(None) as registry:
    dataset = registry.get('SyntheticADE20KDataset')
print(json.dumps(dict(
    dataset=f'{dataset.__module__}.{dataset.__qualname__}',
    seconds=seconds,
    new_filters=new_filters, lost_filters=lost_filters, env_changed=env_changed, modules=modules)))
"""

#: modules that only training, inference, export or plotting need (each costs from 0.1 to 1 s to import)
HEAVY = ('mmdet.models', 'mmdet.datasets', 'mmdet.apis', 'mmseg.models', 'mmseg.datasets', 'mmseg.apis',
         'mmcv.ops', 'scipy', 'matplotlib', 'onnx', 'onnxruntime', 'ftfy', 'pycocotools', 'mmsparse.apis',
         'mmsparse.deployment', 'mmsparse.visualization')


#: the environment the probe runs with: not the test process's, which imported mmsparse already (conftest), so
#: a variable mmsparse sets with ``os.environ.setdefault`` would be there before the probe's snapshot
PROBE_ENV = ('PATH', 'HOME', 'LANG', 'LC_ALL', 'TMPDIR', 'LD_LIBRARY_PATH', 'CUDA_VISIBLE_DEVICES')


@pytest.fixture(scope='module')
def probe():
    env = {k: os.environ[k] for k in PROBE_ENV if k in os.environ}
    out = subprocess.run([sys.executable, '-c', PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_sets_no_warnings_filters(probe):
    assert probe['new_filters'] == [] and probe['lost_filters'] == []


def test_import_sets_no_environment_variables(probe):
    assert probe['env_changed'] == []


@pytest.mark.parametrize('module', HEAVY)
def test_import_loads_no_heavy_module(probe, module):
    assert module not in probe['modules']


def test_mmseg_scope_finds_the_dataset_imported_lazily(probe):
    assert 'mmsparse.datasets.registered' not in probe['modules']
    assert probe['dataset'] == 'mmsparse.datasets.registered.SyntheticADE20KDataset'


def test_import_is_fast(probe):
    # about 0.15 s on top of its dependencies on a 2-core CI machine; the bound leaves room for a loaded one
    assert probe['seconds'] < 2.0, probe['seconds']
