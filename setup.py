"""mmsparse: sparse / efficient attention backbones (BiFormer, CloFormer, STViT) for mmdet 3.x and mmseg 1.x.

``pip install .`` copies ``configs/``, ``tools/`` and ``model-index.yml`` into ``mmsparse/.mim`` (the layout
OpenMMLab packages use), ``pip install -e .`` links them, so ``_base_ = 'mmsparse::biformer/...py'`` resolves
from a config anywhere once ``mmsparse`` is imported.
"""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
#: what the package carries under ``mmsparse/.mim`` (mmengine looks for ``configs`` and ``model-index.yml``)
MIM_FILES = ('configs', 'tools', 'model-index.yml')
#: the ranges the project is tested on (CI installs exact versions: tools/setup_env.sh); mmcv's compiled ops
#: must match the installed torch
TORCH_REQUIREMENT = 'torch>=2.1,<2.14'
INSTALL_REQUIRES = [
    TORCH_REQUIREMENT,
    'mmengine>=0.10,<0.11',
    'mmcv>=2.1,<2.2',
    'einops',
    'setuptools<81',  # mmengine 0.10 imports pkg_resources
]
#: ``pip install mmsparse[det]`` / ``[seg]`` / ``[all]``: the downstream toolboxes. mmseg's text tokenizer imports
#: ftfy and regex without declaring them.
EXTRAS_REQUIRE = {
    'det': ['mmdet>=3.3,<3.4'],
    'seg': ['mmsegmentation>=1.2,<1.3', 'ftfy', 'regex'],
    'tests': ['pytest', 'matplotlib', 'pyyaml'],
}
EXTRAS_REQUIRE['all'] = EXTRAS_REQUIRE['det'] + EXTRAS_REQUIRE['seg']


def get_version():
    scope = {}
    with open(osp.join(ROOT, 'mmsparse', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def mim_mode(argv):
    """``'symlink'`` for editable installs, ``'copy'`` for builds, ``None`` for metadata-only calls."""
    if 'develop' in argv or 'editable_wheel' in argv:
        return 'symlink'
    if any(cmd in argv for cmd in ('build', 'build_py', 'bdist_wheel', 'sdist', 'install')):
        return 'copy'
    return None


def add_mim_extension(mode):
    """Put :data:`MIM_FILES` under ``mmsparse/.mim``: linked (editable) or copied (wheel / sdist)."""
    if mode is None:
        return
    mim = osp.join(ROOT, 'mmsparse', '.mim')
    os.makedirs(mim, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(ROOT, name), osp.join(mim, name)
        if not osp.exists(src):  # building from an sdist: .mim already holds the copies
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            try:
                os.symlink(osp.relpath(src, mim), dst)
                continue
            except OSError:  # no symlinks (e.g. Windows without privileges): copy instead
                pass
        if osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


if __name__ == '__main__':  # setuptools runs setup.py as __main__; tests import it for add_mim_extension
    add_mim_extension(mim_mode(sys.argv))
    setup(
        name='mmsparse',
        version=get_version(),
        description='Sparse / efficient attention backbones (BiFormer, CloFormer, STViT) for OpenMMLab',
        long_description=open(osp.join(ROOT, 'README.md'), encoding='utf-8').read(),
        long_description_content_type='text/markdown',
        license='Apache License 2.0',
        keywords='computer vision, object detection, semantic segmentation, sparse attention, openmmlab',
        packages=find_packages(include=('mmsparse', 'mmsparse.*', 'mmsparse_ort', 'mmsparse_ort.*')),
        include_package_data=True,  # mmsparse/.mim, as listed in MANIFEST.in
        python_requires='>=3.8',
        install_requires=INSTALL_REQUIRES,
        extras_require=EXTRAS_REQUIRE,
        classifiers=[
            'License :: OSI Approved :: Apache Software License',
            'Operating System :: OS Independent',
            'Programming Language :: Python :: 3',
        ],
        zip_safe=False,
    )
