"""The tools do not print setuptools' pkg_resources deprecation warning (mmengine's imports trigger it 2-4 times
per command), and the silence is scoped: other warnings still show."""
import os
import subprocess
import sys

from tests.conftest import REPO


def run(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS='default')
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_tools_print_no_pkg_resources_warning():
    proc = run('tools/analysis_tools/get_flops.py', 'configs/demo/upernet_demo_synthetic.py', '--shape', '64', '64')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'Params:' in proc.stdout
    assert 'pkg_resources is deprecated' not in proc.stderr + proc.stdout


def test_check_env_prints_no_pkg_resources_warning():
    proc = run('tools/check_env.py')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'pkg_resources is deprecated' not in proc.stderr + proc.stdout


def test_the_silence_is_scoped():
    code = ('import warnings, mmsparse\n'
            'from mmsparse.apis import load_config\n'
            "load_config('configs/demo/maskrcnn_demo_synthetic.py')\n"
            "warnings.warn('pkg_resources is deprecated as an API (user code)', UserWarning)\n")
    proc = run('-c', code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count('pkg_resources is deprecated') == 1 and '(user code)' in proc.stderr
