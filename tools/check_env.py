"""Check that the environment has the pinned OpenMMLab stack with compiled mmcv ops.

Exit status 0 when everything is in place; 1 otherwise (with the reasons printed unless ``--quiet``).
Used by ``tools/setup_env.sh`` to make a second install run take seconds.
"""
import argparse
import importlib
import sys
import warnings

PINS = {
    'mmengine': '0.10.7',
    'mmcv': '2.1.0',
    'mmdet': '3.3.0',
    'mmseg': '1.2.2',
}
PLAIN = ['pkg_resources', 'torch', 'einops', 'pycocotools', 'ftfy', 'regex', 'pytest', 'flake8', 'mmsparse',
         'mmsparse_ort']
#: the torch releases mmsparse supports, (major, minor) inclusive: mmcv 2.1.0's prebuilt CUDA wheels are for
#: torch 2.1, and 2.13 is the newest the project is tested on
TORCH_RANGE = ((2, 1), (2, 13))


def torch_version_problem(version):
    """A message if the torch ``version`` string is outside :data:`TORCH_RANGE`, else None."""
    try:
        major_minor = tuple(int(part) for part in version.split('+')[0].split('.')[:2])
    except ValueError:
        return f'torch: cannot read the version {version!r}'
    low, high = TORCH_RANGE
    if not low <= major_minor <= high:
        return f'torch: version {version}, supported ' + ' through '.join('{}.{}'.format(*v) for v in TORCH_RANGE)
    return None


def check(only=None):
    problems = []
    names = [only] if only else list(PINS) + PLAIN
    for name in names:
        try:
            with warnings.catch_warnings():  # mmengine's import of pkg_resources: not the environment's problem
                warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
                mod = importlib.import_module(name)
        except Exception as exc:  # ImportError, or an ABI error from a compiled module
            hint = ' - link the checkout again: pip install --no-deps -e .' if name.startswith('mmsparse') else ''
            problems.append(f'{name}: cannot import ({exc.__class__.__name__}: {exc}){hint}')
            continue
        want = PINS.get(name)
        if want and getattr(mod, '__version__', None) != want:
            problems.append(f'{name}: version {mod.__version__}, expected {want}')
        if name == 'torch' and torch_version_problem(mod.__version__):
            problems.append(torch_version_problem(mod.__version__))
    if 'mmcv' in names and not any(p.startswith('mmcv') for p in problems):
        try:
            from mmcv.ops import nms, roi_align  # noqa: F401  (needs the compiled mmcv._ext)
        except Exception as exc:
            problems.append(f'mmcv.ops: compiled ops do not load ({exc})')
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--only', help='check a single package')
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args()
    problems = check(args.only)
    if not args.quiet:
        for p in problems:
            print('[check_env] ' + p)
        if not problems:
            import torch
            low, high = ('{}.{}'.format(*v) for v in TORCH_RANGE)
            print(f'[check_env] OK: torch {torch.__version__} (supported {low} through {high}), ' +
                  ', '.join(f'{k} {v}' for k, v in PINS.items()))
    sys.exit(1 if problems else 0)


if __name__ == '__main__':
    main()
