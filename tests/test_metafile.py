"""``model-index.yml`` and the families' ``metafile.yml``: complete, well-formed, and their numbers recomputed.

Parameters and FLOPs are recomputed the way ``tools/analysis_tools/get_flops.py`` computes them
(:func:`mmsparse.benchmark.flops.build_measured` and :func:`mmsparse.utils.flop_count`), at the metafile's
``Input Size``, with torch seed 0.
Parameter counts only need the model built and run for every config; the FLOPs need a forward pass of the full
model at 800x1333 or 512x512 (up to two minutes each on two CPU cores), so they are marked ``slow``.
"""
import glob
import os
import os.path as osp

import pytest
import torch
import yaml

from mmsparse.families import list_families

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: every registered family: each has its ``configs/<family>/metafile.yml``
FAMILIES = tuple(list_families())
TASK_METRICS = {'Object Detection': {'box AP'}, 'Instance Segmentation': {'mask AP'},
                'Semantic Segmentation': {'mIoU', 'mIoU(ms+flip)'}}


def load_yaml(rel):
    with open(osp.join(REPO, rel)) as f:
        return yaml.safe_load(f)


def metafiles():
    return load_yaml('model-index.yml')['Import']


def listed_models():
    return [model for rel in metafiles() for model in load_yaml(rel)['Models']]


MODELS = {model['Config']: model for model in listed_models()}


def test_model_index_imports_one_metafile_per_family():
    assert metafiles() == [f'configs/{family}/metafile.yml' for family in FAMILIES]


def test_every_config_is_listed_once():
    configs = sorted(osp.relpath(p, REPO) for family in FAMILIES
                     for p in glob.glob(osp.join(REPO, 'configs', family, '*.py')))
    listed = sorted(model['Config'] for model in listed_models())
    assert listed == configs
    names = [model['Name'] for model in listed_models()]
    assert len(names) == len(set(names)) == 32


@pytest.mark.parametrize('rel', [f'configs/{family}/metafile.yml' for family in FAMILIES])
def test_metafile_fields(rel):
    """mmdet's layout: each model names an existing collection and config, the metadata mmdet's metafiles
    carry, and results whose metrics fit the task and are marked as the paper's."""
    meta = load_yaml(rel)
    collections = {c['Name'] for c in meta['Collections']}
    for coll in meta['Collections']:
        assert coll['Paper']['URL'].startswith('https://arxiv.org/abs/')
        assert osp.isfile(osp.join(REPO, coll['README']))
    for model in meta['Models']:
        assert model['In Collection'] in collections
        assert osp.isfile(osp.join(REPO, model['Config']))
        assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0]
        md = model['Metadata']
        assert md['Training Data'] == ('COCO' if model['Name'].endswith('_coco') else 'ADE20K')
        assert md['Training Resources'] == '8x GPUs'
        assert isinstance(md['FLOPs'], int) and isinstance(md['Parameters'], int)
        assert md['Input Size'] == ([800, 1333] if md['Training Data'] == 'COCO' else [512, 512])
        for result in model.get('Results', []):
            assert result['Dataset'] == md['Training Data']
            assert result['Source'].startswith('paper')
            assert set(result['Metrics']) <= TASK_METRICS[result['Task']], result
        assert 'Weights' not in model  # the authors released no detection / segmentation weights


def test_biformer_results_are_the_papers():
    """Spot-check the transcription against the paper's table (BiFormer-S / -B, COCO 1x and ADE20K)."""
    def metrics(name):
        return {k: v for r in MODELS[f'configs/biformer/{name}.py']['Results'] for k, v in r['Metrics'].items()}

    assert metrics('maskrcnn_biformer_s_coco') == {'box AP': 47.8, 'mask AP': 43.2}
    assert metrics('retinanet_biformer_b_coco') == {'box AP': 47.1}
    assert metrics('upernet_biformer_b_ade20k') == {'mIoU': 51.0, 'mIoU(ms+flip)': 51.7}
    assert metrics('semfpn_biformer_s_ade20k') == {'mIoU': 48.9}


def measured(config):
    """``(module, input)`` exactly as ``get_flops.py`` builds them for the metafile's input size."""
    import mmsparse  # noqa: F401
    from mmengine.config import Config
    torch.manual_seed(0)
    cfg = Config.fromfile(osp.join(REPO, config))
    from mmsparse.benchmark.flops import build_measured
    module, x, _ = build_measured(cfg, MODELS[config]['Metadata']['Input Size'])
    return module, x


@pytest.mark.parametrize('config', sorted(MODELS))
def test_parameters_equal_get_flops(config):
    """What ``get_flops.py`` prints as Params (mmengine's ``parameter_count`` of the measured module)."""
    from mmengine.analysis import parameter_count
    module, _ = measured(config)
    assert parameter_count(module)[''] == MODELS[config]['Metadata']['Parameters']


#: FLOPs are recomputed for the smallest variant of each family and task in CI (a full-size count takes one to
#: two minutes on two cores; all of them would take 40); ``MMSPARSE_ALL_FLOPS=1`` checks every listed config
#: family -> what names its smallest variant's configs; checked to cover exactly ``FAMILIES`` (a new family fails
#: ``test_smallest_variant_named_for_every_family`` until it has its entry, instead of going unmeasured)
SMALLEST = {'biformer': 'biformer_s_', 'cloformer': '_xxs_', 'stvit': 'stvit_s_'}
FLOPS_CONFIGS = sorted(MODELS) if os.environ.get('MMSPARSE_ALL_FLOPS') else sorted(
    c for c in MODELS
    if any(v in c for v in SMALLEST.values()) and ('retinanet' in c or 'semfpn' in c))


def test_smallest_variant_named_for_every_family():
    assert set(SMALLEST) == set(FAMILIES)
    for family in SMALLEST:
        assert [c for c in FLOPS_CONFIGS if c.startswith(f'configs/{family}/')], family


@pytest.mark.slow
@pytest.mark.parametrize('config', FLOPS_CONFIGS)
def test_flops_equal_get_flops(config):
    from mmsparse.utils import flop_count
    module, x = measured(config)
    result = flop_count(module, x)
    assert result['params'] == MODELS[config]['Metadata']['Parameters']
    assert result['flops'] == MODELS[config]['Metadata']['FLOPs']
