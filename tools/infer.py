"""Run a trained detector or segmentor on images and save the drawn predictions and the raw results.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] [--out-dir DIR] [--score-thr T] [--device cpu]
    python tools/infer.py CONFIG FILE.onnx INPUT [INPUT ...] --backend onnxruntime [--weights CKPT]  # --outputs raw
    python tools/infer.py FILE.onnx INPUT [INPUT ...] [--out-dir DIR] [--score-thr T] [--threads N]  # no PyTorch

INPUT is an image, a folder (its images, recursively) or a glob pattern (quote it). The config's
``default_scope`` picks mmdet's ``DetInferencer`` (``mmdet``) or mmseg's ``MMSegInferencer`` (``mmseg``); both
mmsparse configs and stock configs that import mmsparse through ``custom_imports`` work.

Writes ``DIR/vis/<image name>`` (the drawn predictions) and ``DIR/results.json``: one entry per image with its
path, the picture and the raw predictions (detection: ``labels``, ``label_names``, ``scores``, ``bboxes``
[x1, y1, x2, y2] and COCO-RLE ``masks`` when the model predicts them, every score included; segmentation: the
label map's ``shape``, pixel ``counts`` per class and ``pred``, the label map saved as ``DIR/pred/<stem>.png``).

Given an ONNX file first (no config), the tool runs ``mmsparse_ort``: the preprocessing, ONNX Runtime and the
post-processing described by the file's metadata, with numpy, OpenCV and onnxruntime only (no torch, mmcv,
mmdet or mmseg is imported); same outputs (docs/deployment.md, "Running without PyTorch").
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
import warnings

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def build_parser():
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='mmdet / mmseg config (default_scope picks the inferencer)')
    parser.add_argument('checkpoint', help='checkpoint of that model (tools/train.py output)')
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='images, folders or glob patterns')
    parser.add_argument('--out-dir', default='outputs/infer', help='output folder (default: outputs/infer)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: lowest score drawn (the JSON keeps every score). Default 0.3')
    parser.add_argument('--device', default=None, help='e.g. cpu, cuda:0 (default: cuda when available)')
    parser.add_argument('--backend', choices=('pytorch', 'onnxruntime'), default='pytorch',
                        help='onnxruntime: CHECKPOINT is an ONNX file from tools/deployment/export_onnx.py '
                        '--outputs raw (or a segmentor), run on the CPU; pre- and post-processing stay the config\'s '
                        '(docs/deployment.md). A graph with the detections in it runs as infer.py MODEL.onnx INPUT')
    parser.add_argument('--weights', metavar='CKPT',
                        help='onnxruntime: the PyTorch checkpoint the ONNX file was exported from. Required for '
                        'two-stage detectors (Mask R-CNN), whose RPN and RoI heads run outside the graph with its '
                        'weights; it also gives the checkpoint\'s class names')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, as in tools/test.py')
    return parser


def expand_inputs(inputs):
    """Image files from files, folders (recursive) and glob patterns, in order, without duplicates."""
    found = []
    for item in inputs:
        if osp.isdir(item):
            files = sorted(p for p in glob.glob(osp.join(item, '**', '*'), recursive=True)
                           if p.lower().endswith(IMAGE_EXTS))
            if not files:
                raise FileNotFoundError(f'input folder {item} holds no image ({", ".join(IMAGE_EXTS)})')
        elif osp.isfile(item):
            files = [item]
        elif glob.has_magic(item):
            files = sorted(p for p in glob.glob(item, recursive=True) if osp.isfile(p))
            if not files:
                raise FileNotFoundError(f'input pattern {item!r} matches no file')
        else:
            raise FileNotFoundError(f'input: no such image, folder or pattern: {item}')
        found += [f for f in files if f not in found]
    names = [osp.basename(f) for f in found]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f'several inputs share the file names {clash}; their pictures would overwrite each '
                         'other in --out-dir/vis: run them separately')
    return found


def _det_entry(pred, classes):
    entry = dict(pred)
    if classes:
        entry['label_names'] = [classes[i] if 0 <= i < len(classes) else str(i) for i in pred.get('labels', [])]
    return entry


def _seg_entry(label_map, classes, written, out_dir, image):
    """JSON entry of a label map; ``written`` is the PNG mmseg saved, renamed after the image."""
    import numpy as np
    label_map = np.asarray(label_map)
    path = osp.join(out_dir, 'pred', osp.splitext(osp.basename(image))[0] + '.png')
    os.replace(written, path)
    ids, counts = np.unique(label_map, return_counts=True)
    names = [classes[i] if classes and 0 <= i < len(classes) else str(i) for i in ids.tolist()]
    return dict(shape=list(label_map.shape), counts=dict(zip(names, counts.tolist())), pred=path)


def _use_config_classes(inferencer, cfg):
    """Built without a checkpoint, an inferencer shows its library's default classes: use the config's."""
    from mmsparse.deployment.runtime import config_dataset_meta
    meta = config_dataset_meta(cfg)
    if meta:
        inferencer.model.dataset_meta = meta
        inferencer.visualizer.dataset_meta = meta


def run(args):
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    from mmsparse.apis import load_task_config
    images = expand_inputs(args.inputs)
    cfg, scope = load_task_config(args.config, args.cfg_options)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint: no such file: {args.checkpoint}')
    os.makedirs(args.out_dir, exist_ok=True)
    entries = []
    onnx = getattr(args, 'backend', 'pytorch') == 'onnxruntime'
    weights = getattr(args, 'weights', None) if onnx else args.checkpoint
    if onnx:
        args.device = 'cpu'
        if weights is not None and not osp.isfile(weights):
            raise FileNotFoundError(f'--weights: no such file: {weights}')
    elif getattr(args, 'weights', None) is not None:
        raise ValueError('--weights is for --backend onnxruntime (with pytorch, CHECKPOINT holds the weights)')
    if scope == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(model=cfg, weights=weights, device=args.device, show_progress=False)
        if onnx:
            from mmsparse.deployment import attach_to_inferencer
            attach_to_inferencer(inferencer, args.checkpoint, weights_loaded=weights is not None)
            if weights is None:
                _use_config_classes(inferencer, cfg)
        classes = (inferencer.model.dataset_meta or {}).get('classes')
        for image in images:
            out = inferencer(image, out_dir=args.out_dir, pred_score_thr=args.score_thr, no_save_pred=True)
            entries.append(dict(input=image, vis=osp.join(args.out_dir, 'vis', osp.basename(image)),
                                **_det_entry(out['predictions'][0], classes)))
    else:
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(model=cfg, weights=weights, device=args.device)
        inferencer.show_progress = False
        if onnx:
            from mmsparse.deployment import attach_to_inferencer
            attach_to_inferencer(inferencer, args.checkpoint, weights_loaded=weights is not None)
            if weights is None:
                _use_config_classes(inferencer, cfg)
        classes = (inferencer.model.dataset_meta or {}).get('classes')
        for image in images:
            # mmseg numbers its label maps (pred/00000000_pred.png, ...); they are renamed after the images
            written = osp.join(args.out_dir, 'pred', f'{inferencer.num_pred_imgs:08d}_pred.png')
            out = inferencer(image, out_dir=args.out_dir)
            entries.append(dict(input=image, vis=osp.join(args.out_dir, 'vis', osp.basename(image)),
                                **_seg_entry(out['predictions'], classes, written, args.out_dir, image)))
    for entry in entries:
        if not osp.isfile(entry['vis']):
            raise RuntimeError(f'the inferencer wrote no picture for {entry["input"]} (expected {entry["vis"]})')
    path = osp.join(args.out_dir, 'results.json')
    with open(path, 'w') as f:
        json.dump(dict(config=args.config, checkpoint=args.checkpoint, task=scope, classes=list(classes or []),
                       results=entries), f)
    print(f'{len(entries)} image(s): pictures in {osp.join(args.out_dir, "vis")}, raw results in {path}')
    return entries


def build_onnx_parser():
    parser = argparse.ArgumentParser(
        prog='infer.py MODEL.onnx', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Run an ONNX file from tools/deployment/export_onnx.py on images without PyTorch: '
        'preprocessing and post-processing follow the config recorded in the file')
    parser.add_argument('model', help='ONNX file exported by tools/deployment/export_onnx.py')
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='images, folders or glob patterns')
    parser.add_argument('--out-dir', default='outputs/infer', help='output folder (default: outputs/infer)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: lowest score drawn (the JSON keeps every score). Default 0.3')
    parser.add_argument('--threads', type=int, default=None, help='ONNX Runtime threads (default: its own)')
    return parser


#: options of either parser that take a value
VALUE_OPTIONS = ('--out-dir', '--score-thr', '--device', '--backend', '--weights', '--threads')


def first_positional(argv):
    """The first argument that is neither an option nor an option's value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith('-'):
            skip = arg in VALUE_OPTIONS
        else:
            return arg
    return None


def run_onnx(args):
    """The torch-free path: ``mmsparse_ort.infer_images`` on the expanded inputs."""
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    if osp.isdir(osp.join(root, 'mmsparse_ort')) and root not in sys.path:
        sys.path.insert(0, root)  # a checkout run in an environment where mmsparse is not installed
    from mmsparse_ort import infer_images
    return infer_images(args.model, expand_inputs(args.inputs), args.out_dir, args.score_thr, args.threads)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    first = first_positional(argv)
    if first is not None and first.lower().endswith('.onnx'):
        parser = build_onnx_parser()
        args = parser.parse_args(argv)
        try:
            run_onnx(args)
        except (FileNotFoundError, ValueError, ImportError) as err:
            parser.error(str(err))
        return 0
    try:
        parser = build_parser()
    except ImportError as err:  # an environment with onnxruntime only
        build_onnx_parser().error(f'{err}: CONFIG CHECKPOINT needs PyTorch and OpenMMLab; without them give an ONNX '
                                  'file from tools/deployment/export_onnx.py first: infer.py MODEL.onnx INPUT ...')
    args = parser.parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))  # usage and the message on stderr, exit status 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
