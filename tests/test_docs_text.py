"""User-facing text names nothing outside the repository and carries no build history.

Checked: every tracked Markdown file, and the sources users read in their tracebacks, ``--help`` and
docstrings (``mmsparse/`` and ``tools/``). Forbidden: paths outside the repository (the sibling folder the
reference material came from, build machines' ``/work`` and ``/tmp`` folders, tool folders), issue numbers,
and session talk ("this round", "previous session"). Each rule has a case that must match and one that must
not, so a rule that can never fire fails here.
"""
import glob
import os.path as osp
import re
import subprocess

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: (rule name, pattern, text it must flag, text it must leave alone)
RULES = [
    ('outside the repository', re.compile(r'\.\./shared\b|\bshared/reference\b'),
     'fixtures in ../shared/reference', 'configs/_base_/shared.py'),
    ('build-machine path', re.compile(r'(?<![\w.~-])/(work|tmp)/'),
     'written to /tmp/out.pth or /work/main', 'work_dirs/demo/tmp/x and ~/work/x'),
    ('tool folder', re.compile(r'(?<!\w)\.library\b|\bbash_jobs\b|\bshared/(?:fixtures|keys)\b'),
     'see .library/search', 'mmsparse.library_version, torch.library.custom_op'),
    ('issue number', re.compile(r'\b[Ii]ssues? *#?\d+\b|(?<![\w&/#])#\d{1,4}\b(?![\w-])'),
     'fixed in issue 11 (see #13)', 'stage #a, [link](#training-2x), colour #1f77b4, 3 issues with it'),
    ('session talk', re.compile(r'\b(this|previous|last|next|earlier) (round|session)s?\b', re.I),
     'measured in the previous round', 'a round trip; rounding in this sessionless API'),
]


def tracked(patterns):
    try:
        out = subprocess.run(['git', 'ls-files', '-z', '--', *patterns], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
        return sorted(p for p in out.split('\0') if p and osp.isfile(osp.join(REPO, p)))
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked sdist)
        found = set()
        for pattern in patterns:
            found.update(osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, pattern), recursive=True))
        return sorted(found)


def checked_files():
    return tracked(['*.md', 'mmsparse/**.py', 'tools/**.py', 'tools/**.sh', 'Makefile', 'setup.py'])


def offences(text, path):
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for name, pattern, _, _ in RULES:
            for match in pattern.finditer(line):
                found.append(f'{path}:{lineno}: {name}: {match.group(0)!r} in {line.strip()[:120]!r}')
    return found


@pytest.mark.parametrize('name, pattern, bad, good', RULES, ids=[r[0] for r in RULES])
def test_rule_flags_what_it_should(name, pattern, bad, good):
    assert pattern.search(bad), f'{name} misses {bad!r}'
    assert not pattern.search(good), f'{name} flags {good!r}'


def test_checked_files_cover_docs_and_sources():
    files = checked_files()
    assert 'README.md' in files and 'docs/faq.md' in files and 'configs/biformer/README.md' in files
    assert 'mmsparse/__init__.py' in files and 'tools/train.py' in files


def test_user_text_names_nothing_outside_the_repository():
    found = []
    for path in checked_files():
        with open(osp.join(REPO, path), encoding='utf-8') as f:
            found += offences(f.read(), path)
    assert not found, 'user-facing text that names things outside the repository or build history:\n' + \
        '\n'.join(found)


def test_readme_first_screen():
    """The README opens with what mmsparse is, then the two commands (``make demo``, ``make test``) as its first
    code block, then how to install and use it; the demo's experiment tables live in docs/demo.md."""
    with open(osp.join(REPO, 'README.md'), encoding='utf-8') as f:
        text = f.read()
    head = text.split('\n')[:20]
    first_block = re.search(r'^```bash\n(.*?)^```', text, re.S | re.M)
    assert first_block and text.index(first_block.group(0)) < len('\n'.join(head))
    commands = [line.split('#')[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ['make demo', 'make test']
    sections = re.findall(r'^## (.+)$', text, re.M)
    assert sections[:3] == ['Install', 'Use', 'What is verified'], sections
    assert 'segmentor recipe' not in text and 'docs/demo.md' in text


def test_readme_lists_every_document():
    """A page under docs/ that the README's document list does not link is one a newcomer never finds."""
    with open(osp.join(REPO, 'README.md'), encoding='utf-8') as f:
        text = f.read()
    linked = set(re.findall(r'^- \[docs/([\w.]+\.md)\]\(docs/\1\)', text, re.M))
    pages = {osp.basename(p) for p in glob.glob(osp.join(REPO, 'docs', '*.md'))}
    assert pages - linked == set(), f'docs pages missing from the README list: {sorted(pages - linked)}'
