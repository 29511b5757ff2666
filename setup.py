"""mmsparse: sparse / efficient attention backbones (BiFormer, CloFormer, STViT) for mmdet 3.x and mmseg 1.x."""
import os
import os.path as osp
import shutil

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))


def get_version():
    scope = {}
    with open(osp.join(ROOT, 'mmsparse', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def link_mim_configs():
    """Ship ``configs/`` as ``mmsparse/.mim/configs`` so ``_base_ = 'mmsparse::...'`` resolves.

    In an editable install a symlink is enough; for a regular build the files are copied.
    """
    mim = osp.join(ROOT, 'mmsparse', '.mim')
    os.makedirs(mim, exist_ok=True)
    dst = osp.join(mim, 'configs')
    src = osp.join(ROOT, 'configs')
    if osp.lexists(dst):
        return
    try:
        os.symlink(osp.relpath(src, mim), dst)
    except OSError:
        shutil.copytree(src, dst)


link_mim_configs()

setup(
    name='mmsparse',
    version=get_version(),
    description='Sparse / efficient attention backbones (BiFormer, CloFormer, STViT) for OpenMMLab',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    include_package_data=True,
    package_data={'mmsparse': ['.mim/configs/**/*.py', '.mim/configs/**/*.md']},
    python_requires='>=3.8',
    install_requires=[
        'torch',
        'mmengine==0.10.7',
        'mmcv==2.1.0',
        'einops',
        'ftfy',
        'regex',
        'setuptools<81',
    ],
    extras_require={
        'det': ['mmdet==3.3.0', 'pycocotools'],
        'seg': ['mmsegmentation==1.2.2'],
        'tests': ['pytest', 'matplotlib'],
    },
    zip_safe=False,
)
