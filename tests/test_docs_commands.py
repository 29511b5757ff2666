"""Every documented shell command is run here or listed, with its reason, in docs/commands.md.

The conversion commands run as written (in a folder without ``checkpoints/``) on the golden-fixture weights
saved under the documented source name; their outputs load strictly into the reduced backbone. Each config's
Pretrained checkpoint must be exactly the output of a documented conversion command of its family.
"""
import glob
import os.path as osp
import re
import shlex
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, official_state_dict

DOCS = ['README.md'] + sorted(glob.glob(osp.join(REPO, 'docs', '*.md'))) + \
    sorted(glob.glob(osp.join(REPO, 'configs', '*', 'README.md')))
CONVERTER = 'tools/model_converters/official2mmsparse.py'
#: the families whose configs load converted official weights
FAMILIES = ('biformer', 'cloformer', 'stvit')


def documented_commands():
    """{command: [files]}: each command of a fenced bash / shell block, continuations joined, comments removed."""
    found = {}
    for path in DOCS:
        text = open(osp.join(REPO, path)).read()
        for block in re.findall(r'^```(?:bash|sh|shell|console)\n(.*?)^```', text, re.S | re.M):
            for cmd in re.sub(r'\\\n\s*', ' ', block).splitlines():
                cmd = re.sub(r'(^|\s)#.*$', '', cmd).strip()
                if cmd:
                    found.setdefault(' '.join(cmd.split()), []).append(osp.relpath(osp.join(REPO, path), REPO))
    return found


def table_commands():
    rows = re.findall(r'^\| `(.+?)` \|', open(osp.join(REPO, 'docs', 'commands.md')).read(), re.M)
    return [' '.join(r.replace('\\|', '|').split()) for r in rows]


def conversion_commands():
    """[(family, src, dst)] of the documented concrete conversion commands (no placeholders)."""
    out = []
    for cmd in documented_commands():
        words = shlex.split(cmd)
        if words[:2] == ['python', CONVERTER] and words[2].islower() and not words[3].isupper():
            out.append((words[2], words[3], words[4]))
    return out


def test_every_command_is_run_or_listed():
    documented = documented_commands()
    run_here = {f'python {CONVERTER} {fam} {src} {dst}' for fam, src, dst in conversion_commands()}
    listed = table_commands()
    assert len(listed) == len(set(listed)), 'docs/commands.md lists a command twice'
    unaccounted = {c: f for c, f in documented.items() if c not in run_here and c not in listed}
    assert not unaccounted, ('documented commands neither run by tests/test_docs_commands.py nor listed in '
                             f'docs/commands.md: {unaccounted}')
    stale = [c for c in listed if c not in documented]
    assert not stale, f'docs/commands.md lists commands no document has: {stale}'
    assert len(run_here) >= 8  # every family / variant the configs load


def _variant(family, src):
    """The published variant a documented source file name stands for (``biformer_small_best.pth`` -> small)."""
    for word in re.split(r'[-_.]', src):
        if osp.isfile(osp.join(REPO, 'tests', 'data', 'keys', f'{family}_{word}.txt')):
            return word
    raise AssertionError(f'{src}: no key list of a {family} variant matches the file name')


def _smallest_per_family(commands):
    """One documented conversion per family: its smallest variant (the same command form as the others)."""
    chosen = {}
    for family, src, dst in sorted(set(commands)):
        size = len(official_state_dict(f'{family}_{_variant(family, src)}', device='meta'))
        if family not in chosen or size < chosen[family][0]:
            chosen[family] = (size, (family, src, dst))
    return [c for _, c in chosen.values()]


def test_every_conversion_source_names_a_variant():
    for family, src, _ in set(conversion_commands()):
        assert _variant(family, src)


@pytest.mark.parametrize('family, src, dst', _smallest_per_family(conversion_commands()))
def test_conversion_command_runs_as_written(family, src, dst, tmp_path):
    """The command on a file with the authors' keys and shapes of that variant (random values): it converts,
    names the variant, and the result loads whole into mmsparse's backbone of that variant."""
    from mmsparse.converters import convert
    from mmsparse.families import get_family
    from mmsparse.utils.checkpoint import load_pretrained
    variant = _variant(family, src)
    official = official_state_dict(f'{family}_{variant}')
    gen = torch.Generator().manual_seed(0)
    for key, value in official.items():
        if key.endswith('num_batches_tracked'):
            continue  # BatchNorm's counters, which loading does not count as weights
        value.copy_(torch.randn(value.shape, generator=gen))
        if key.endswith('fold.weights'):  # STViT's frozen (un)folding kernels, which its converter checks
            value.copy_(torch.eye(9).reshape(value.shape))
    torch.save({'model': official}, tmp_path / src)
    assert not (tmp_path / 'checkpoints').exists()
    proc = subprocess.run([sys.executable, osp.join(REPO, CONVERTER), family, src, dst], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={'PYTHONPATH': REPO, 'PATH': '/usr/bin:/bin'})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f'({family}: {variant})' in proc.stdout
    model = get_family(family).backbone(arch=variant)
    assert load_pretrained(model, str(tmp_path / dst), prefix='backbone.') == ([], [], [])
    expected = convert(family, {'model': official})
    for k, v in expected.items():
        assert k.endswith('num_batches_tracked') or torch.equal(model.state_dict()[k], v), k


def test_each_config_loads_what_a_documented_command_writes():
    from mmengine.config import Config
    written = {(fam, dst) for fam, _, dst in conversion_commands()}
    checked, loaded = 0, set()
    for path in sorted(glob.glob(osp.join(REPO, 'configs', '*', '*.py'))):
        family = osp.basename(osp.dirname(path))
        if family not in FAMILIES:
            continue
        init_cfg = Config.fromfile(path).model.backbone.get('init_cfg') or {}
        if init_cfg.get('type') != 'Pretrained':
            continue
        assert (family, init_cfg['checkpoint']) in written, \
            f'{osp.relpath(path, REPO)} loads {init_cfg["checkpoint"]}, which no documented conversion writes'
        checked += 1
        loaded.add((family, init_cfg['checkpoint']))
    assert checked == 32
    assert written == loaded, f'documented conversions that no config loads: {sorted(written - loaded)}'


def named_test_paths():
    """{path: [docs]} of every ``tests/...`` path named in the user documentation (files and folders)."""
    found = {}
    docs = DOCS + sorted(glob.glob(osp.join(REPO, 'configs', '*', '*', 'README.md'))) + ['CHANGELOG.md']
    for path in docs:
        if not osp.isfile(osp.join(REPO, path)):
            continue
        text = open(osp.join(REPO, path)).read()
        for name in re.findall(r'(?<![\w/.])tests/[\w./-]*[\w/]', text):
            found.setdefault(name.rstrip('/'), []).append(osp.relpath(osp.join(REPO, path), REPO))
    return found


def test_named_test_paths_exist():
    """A doc that points at a test file or folder points at one that exists (renamed tests leave stale names)."""
    named = named_test_paths()
    assert 'tests/test_packaging.py' in named  # the scan finds real references
    missing = {name: docs for name, docs in named.items() if not osp.exists(osp.join(REPO, name))}
    assert not missing, f'test paths named in the docs that do not exist: {missing}'
