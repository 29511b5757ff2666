"""Helpers shared by the tools (task detection, CPU distributed, data checks, pretrained-free models, fake samples)."""
import gc
import logging
import os
import os.path as osp
import sys
import traceback
import warnings

import torch

TASKS = ('mmdet', 'mmseg')


def task_of(cfg):
    """The downstream task of a config, from its ``default_scope`` ('mmdet' or 'mmseg')."""
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        raise ValueError(f'default_scope={scope!r} in the config; mmsparse tools run configs whose default_scope '
                         f'is one of {list(TASKS)}')
    return scope


def prepare(cfg, args):
    """Import mmsparse (registers our models) and adapt the config to the launcher and the machine."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    import mmsparse  # noqa: F401
    if args.launcher != 'none' and not torch.cuda.is_available():
        # NCCL needs GPUs; CPU-only distributed runs (tests, debugging) use gloo.
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        if args.launcher == 'pytorch' and not torch.distributed.is_initialized():
            # mmengine's init_dist calls torch.cuda.set_device, which a CPU-only torch lacks; the Runner
            # skips its own initialisation when a process group already exists.
            torch.distributed.init_process_group(backend='gloo')
        revert_sync_bn_on_cpu(cfg)
        if cfg.get('model_wrapper_cfg') is None:
            # mmengine passes device_ids=[LOCAL_RANK], which DDP rejects for CPU modules
            cfg.model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
    if args.launcher != 'none':
        os.environ.setdefault('LOCAL_RANK', str(getattr(args, 'local_rank', 0)))
    return task_of(cfg)


def _sync_bn_to_bn(node):
    """Replace ``type='SyncBN'`` by ``'BN'`` in a config tree, in place; returns how many were replaced."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'SyncBatchNorm', 'MMSyncBN'):
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _sync_bn_to_bn(value)
    return count


def revert_sync_bn_on_cpu(cfg):
    """SyncBN has no CPU implementation: in a CPU distributed run, build BN instead (with a one-line notice)."""
    count = _sync_bn_to_bn(cfg.get('model') or {})
    if cfg.get('sync_bn'):
        cfg.sync_bn = None
        count += 1
    if count:
        print('No GPU: SyncBN has no CPU implementation, so this distributed run uses per-process BN instead.')
    return count


def _exit_code(exc):
    """The exit status the interpreter would give for an uncaught ``exc`` (printing what it would print)."""
    if isinstance(exc, SystemExit):
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    traceback.print_exception(exc)
    return 1


def run_tool(main):
    """Run a tool's ``main()``; a process of a distributed run then leaves through :func:`finish_distributed`.

    Processes without a process group (single-process runs) end as usual, exceptions included.
    """
    def distributed():
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    try:
        main()
    except BaseException as exc:  # noqa: B902 (SystemExit and KeyboardInterrupt end a rank the same way)
        if not distributed():
            raise
        code = _exit_code(exc)
    else:
        if not distributed():
            return
        code = 0
    finish_distributed(code)


def finish_distributed(code):
    """End a process of a distributed run with status ``code``: free the run, destroy the process group, flush
    the output, and leave with ``os._exit`` (no interpreter finalization).

    Why not a normal exit: with torch 2.13, a ``DistributedDataParallel`` keeps references to its gloo process
    group that outlive it, so ``destroy_process_group`` cannot free the group and its worker threads run until
    the interpreter finalizes. A worker that is still releasing the tensors of the last collective then needs
    the GIL; Python ends such threads inside C++ code, which aborts the process ("terminate called without an
    active exception", exit -6) although the run succeeded (issue 11; about one run in 30 on a busy machine).
    Everything a run writes (checkpoints, logs, visualizer backends) is closed before this point.
    """
    gc.collect()  # the Runner and its data loaders (their worker processes end with them)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe must not turn a finished run into a failure
            pass
    os._exit(code)


def load_config(args):
    """Config from ``args.config`` with ``--cfg-options``, launcher and work_dir applied; returns (cfg, task)."""
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg, prepare(cfg, args)


def _dataset_paths(dataset):
    """(description, path) pairs a dataset config needs on disk; follows wrappers (RepeatDataset, ...)."""
    if dataset is None:
        return []
    if 'datasets' in dataset:
        return [p for d in dataset['datasets'] for p in _dataset_paths(d)]
    if 'dataset' in dataset:
        return _dataset_paths(dataset['dataset'])
    root = dataset.get('data_root') or ''
    paths = []
    if dataset.get('ann_file'):
        paths.append(('annotation file', osp.join(root, dataset['ann_file'])))
    for key, sub in (dataset.get('data_prefix') or {}).items():
        if sub and isinstance(sub, str):
            paths.append((f'{key} folder', osp.join(root, sub)))
    if not paths and root:
        paths.append(('data root', root))
    return paths


def check_data(cfg, loaders):
    """Stop with a clear message when a dataset the run needs is not on disk."""
    for loader in loaders:
        dataset = (cfg.get(loader) or {}).get('dataset')
        for what, path in _dataset_paths(dataset):
            if '://' in path or osp.exists(path):
                continue
            raise SystemExit(
                f'{loader}: the {what} {path!r} does not exist.\n'
                f'Put the dataset there (COCO 2017: data/coco/{{annotations,train2017,val2017}}; ADE20K: '
                f'data/ade/ADEChallengeData2016/{{images,annotations}}/{{training,validation}}; see '
                f'docs/get_started.md, "Datasets"), symlink it into data/, or point the config elsewhere with '
                f'--cfg-options {loader}.dataset.data_root=<dir>. For a quick check on the embedded synthetic '
                f'data, see docs/get_started.md.')


def check_pretrained(cfg):
    """Stop with a clear message when the backbone's Pretrained checkpoint is a local file that is missing."""
    backbone = (cfg.get('model') or {}).get('backbone') or {}
    init_cfg = backbone.get('init_cfg')
    if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained':
        return
    ckpt = str(init_cfg.get('checkpoint', ''))
    if '://' in ckpt or osp.exists(ckpt):
        return
    raise SystemExit(
        f'model.backbone.init_cfg: the pretrained checkpoint {ckpt!r} does not exist.\n'
        f'Convert the authors\' ImageNet weights with tools/model_converters/official2mmsparse.py FAMILY SRC {ckpt} '
        f'(see docs/get_started.md, "Pretrained weights"), or train from scratch with '
        f'--cfg-options model.backbone.init_cfg=None.')


def _torchvision_uses(node, path):
    """(dotted path, value) of every ``torchvision://`` string in a config subtree."""
    if isinstance(node, str):
        return [(path, node)] if node.startswith('torchvision://') else []
    if isinstance(node, dict):
        return [u for k, v in node.items() for u in _torchvision_uses(v, f'{path}.{k}' if path else str(k))]
    if isinstance(node, (list, tuple)):
        return [u for i, v in enumerate(node) for u in _torchvision_uses(v, f'{path}[{i}]')]
    return []


def check_torchvision(cfg, importer=None):
    """Stop with a clear message when the config loads a ``torchvision://`` checkpoint (an ``init_cfg``,
    ``pretrained`` or ``load_from``) and torchvision cannot be imported: mmengine resolves that scheme
    through torchvision's model URLs. ``importer`` (default ``importlib.import_module``) is for tests."""
    uses = _torchvision_uses(cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg), '')
    if not uses:
        return
    import importlib
    try:
        (importer or importlib.import_module)('torchvision')
        return
    except Exception as err:  # ImportError, or a torchvision built for another torch failing at import
        reason = f'{type(err).__name__}: {err}'
    where = '; '.join(f'{path} = {value!r}' for path, value in uses)
    path, value = uses[0]
    url = _torchvision_url(value[len('torchvision://'):])
    local = f' (the file torchvision://{value[len("torchvision://"):]} stands for: {url})' if url else ''
    raise SystemExit(
        f'This config loads torchvision:// checkpoints ({where}); that scheme needs torchvision, which cannot '
        f'be imported ({reason}).\nEither install the torchvision release built for your torch '
        f'({torch.__version__}): pip install torchvision==<the matching version>, or switch the entry to a '
        f'checkpoint that needs no torchvision: a local file{local}, e.g. --cfg-options {path}=checkpoints/resnet50.pth, or an open-mmlab:// checkpoint of the '
        f'same architecture, e.g. --cfg-options {path}=open-mmlab://... (see mmengine/hub/openmmlab.json).')


def _torchvision_url(name):
    """The download URL mmengine maps ``torchvision://name`` to (its own table; no torchvision needed)."""
    import json

    import mmengine
    table = osp.join(osp.dirname(mmengine.__file__), 'hub', 'torchvision_0.12.json')
    try:
        with open(table) as f:
            return json.load(f).get(name)
    except OSError:
        return None


def amp_fallback_on_cpu(cfg):
    """mmengine's AmpOptimWrapper asserts a GPU; on CPU-only machines train the same recipe in float32."""
    wrapper = cfg.get('optim_wrapper') or {}
    if wrapper.get('type') == 'AmpOptimWrapper' and not torch.cuda.is_available():
        print('No GPU: mmengine\'s AmpOptimWrapper needs one, so this run uses OptimWrapper in float32 '
              '(loss_scale / dtype ignored).')
        wrapper['type'] = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper.pop(key, None)


def _is_pretrained(init_cfg):
    return isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'


def drop_pretrained(model_cfg):
    """Remove every pretrained-weight setting of a model config, in place: random weights, nothing to download.

    Clears mmseg's ``model.pretrained`` and a ``Pretrained`` ``init_cfg`` of the model or of its backbone, in
    dict form (set to ``None``) or list form (the ``Pretrained`` entries are removed, the others stay). Used
    where the weights cannot matter: smoke runs, FLOP counts, speed and memory benchmarks.
    """
    if model_cfg.get('pretrained'):
        model_cfg['pretrained'] = None
    for cfg in (model_cfg, model_cfg.get('backbone') or {}):
        init_cfg = cfg.get('init_cfg')
        if _is_pretrained(init_cfg):
            cfg['init_cfg'] = None
        elif isinstance(init_cfg, (list, tuple)):
            kept = [c for c in init_cfg if not _is_pretrained(c)]
            cfg['init_cfg'] = kept or None


def fake_data_sample(task, h, w, num_classes=1, generator=None, with_gt=True, num_instances=5):
    """One mmdet / mmseg data sample of an ``h x w`` image (no padding, scale 1) with random ground truth.

    ``task`` is ``'mmdet'`` (``DetDataSample``: ``num_instances`` boxes with box-shaped masks and labels in
    ``[0, num_classes)``, and an empty ``ignored_instances``) or ``'mmseg'`` (``SegDataSample`` with a random
    ``gt_sem_seg`` class map). ``with_gt=False`` gives the metainfo alone (what a tensor forward needs).
    ``generator`` (a CPU ``torch.Generator``) makes the ground truth reproducible.
    """
    from mmengine.structures import InstanceData, PixelData
    if task not in TASKS:
        raise ValueError(f'task={task!r}; fake data samples exist for {list(TASKS)}')
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))
    if task == 'mmseg':
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=meta)
        if with_gt:
            sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, h, w), generator=generator))
        return sample
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    sample = DetDataSample(metainfo=dict(meta, scale_factor=(1., 1.), batch_input_shape=(h, w)))
    if not with_gt:
        return sample
    xy = torch.rand(num_instances, 2, generator=generator) * torch.tensor([w * .6, h * .6])
    wh = (torch.rand(num_instances, 2, generator=generator) * .3 + .1) * torch.tensor([w, h])
    boxes = torch.cat([xy, xy + wh], 1)
    masks = torch.zeros(num_instances, h, w, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    sample.gt_instances = InstanceData(
        bboxes=boxes, labels=torch.randint(0, num_classes, (num_instances, ), generator=generator),
        masks=BitmapMasks(masks.numpy(), h, w))
    sample.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    return sample
