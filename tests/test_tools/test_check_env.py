"""tools/check_env.py: the declared torch range (2.1 through 2.13) and the report on the installed stack."""
import subprocess
import sys

import pytest

from tests.conftest import REPO

from tests.conftest import load_tool

check_env = load_tool('tools/check_env.py')
TORCH_RANGE, torch_version_problem = check_env.TORCH_RANGE, check_env.torch_version_problem


@pytest.mark.parametrize('version', ['2.1.0', '2.1.2+cu121', '2.5.1', '2.13.0+cpu'])
def test_supported_torch_versions_pass(version):
    assert torch_version_problem(version) is None


@pytest.mark.parametrize('version', ['2.0.1', '1.13.1+cu117', '2.14.0', '3.0.0'])
def test_torch_outside_the_range_is_named(version):
    assert torch_version_problem(version) == f'torch: version {version}, supported 2.1 through 2.13'


def test_the_range_is_the_documented_one():
    assert TORCH_RANGE == ((2, 1), (2, 13))
    docs = (REPO / 'docs' / 'get_started.md').read_text()
    assert 'torch 2.1 through 2.13' in docs


def test_installed_environment_passes():
    """The environment running the tests is a supported one, mmcv's compiled ops included."""
    out = subprocess.run([sys.executable, str(REPO / 'tools' / 'check_env.py')], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '[check_env] OK: torch' in out.stdout
