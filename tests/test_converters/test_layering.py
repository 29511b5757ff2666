"""The layering of docs/architecture.md, checked on the source: converters are key maps that never import the
models, and the operators import neither models nor converters."""
import ast

import pytest

from tests.conftest import REPO

FORBIDDEN = {
    'mmsparse/converters': ('mmsparse.models', 'mmsparse.testing'),
    'mmsparse/ops': ('mmsparse.models', 'mmsparse.converters', 'mmsparse.testing'),
}


def imported_modules(path):
    """Absolute names of the modules a file imports (relative imports resolved against its package)."""
    package = '.'.join(path.relative_to(REPO).with_suffix('').parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit('.', node.level - 1)[0] if node.level else ''
            module = '.'.join(p for p in (base, node.module or '') if p)
            names += [module] + [f'{module}.{a.name}' for a in node.names]
    return names


@pytest.mark.parametrize('folder', sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(folder):
    files = sorted((REPO / folder).glob('*.py'))
    assert files
    bad = {str(f.relative_to(REPO)): [m for m in imported_modules(f) if m.startswith(FORBIDDEN[folder])]
           for f in files}
    assert not {f: m for f, m in bad.items() if m}, bad


def test_the_check_sees_relative_imports():
    assert 'mmsparse.models.backbones' in imported_modules(REPO / 'mmsparse/testing/official.py')
    assert 'mmsparse.converters.common.UnmappedKeysError' in imported_modules(REPO / 'mmsparse/converters/biformer.py')
