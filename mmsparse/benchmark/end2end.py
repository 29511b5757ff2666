"""End-to-end detector speed, "image file in, detections out": PyTorch eager (mmdet) against ONNX Runtime.

``benchmark.py --end2end CONFIG`` (:func:`run_end2end`):

1. The config's test pipeline ``Resize`` is set to ``scale=(W, H), keep_ratio=False`` (:func:`fixed_size_config`),
   so that every image becomes exactly the ``--input-size`` ``H x W`` (a multiple of the data preprocessor's
   ``pad_size_divisor``: no padding); both paths use that config.
2. The model (the checkpoint's weights, else the initialised ones) is exported end to end at that fixed shape,
   ``--outputs mmdeploy`` (NMS, RoIAlign and masks in the graph; ``--masks`` as in the export tool), with the
   runtime metadata of ``tools/deployment/export_onnx.py``.
3. PyTorch eager: ``mmdet.apis.inference_detector(model, IMAGE)`` (reading the file, the test pipeline, the data
   preprocessor, the network, mmdet's post-processing and the rescaling to the original image; the pipeline is
   built once). ONNX Runtime: ``mmsparse_ort.OrtModel.predict(OrtModel.read(IMAGE))`` (OpenCV decoding and
   resize, numpy normalisation, the graph, boxes rescaled and masks resized to the original image).
4. ``--warmup`` runs of each, then ``--repeats`` interleaved runs (eager, ORT, eager, ORT, ...) in one process, so
   that load from other processes hits both alike; ``torch.set_num_threads`` and ONNX Runtime's intra-op
   threads are both ``--threads``. Reported: median, min and max seconds of each, and eager / ORT of the medians.
5. ``--profile``: afterwards a second ONNX Runtime session with profiling on (same threads) runs the graph on the
   preprocessed image ``--repeats`` times; its trace (JSON, chrome://tracing format) is written and the 15 node
   types and 15 nodes taking the most time are printed. The timed runs are not profiled.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import statistics
import time
from typing import Any, Callable, Sequence

import torch

#: the paths timed, in their interleaving order
PATHS = ('pytorch', 'onnxruntime')
#: rows of the profile tables
TOP = 15


def fixed_size_config(config: str, input_size: Sequence[int], cfg_options: dict | None = None) -> Any:
    """The mmdet config at ``config`` whose test pipeline resizes every image to ``input_size`` ``(H, W)``.

    Raises ValueError for a config that is not mmdet's, whose test pipeline has no ``Resize``, or when ``H`` or
    ``W`` is not a multiple of the data preprocessor's ``pad_size_divisor``.
    """
    from mmsparse.deployment import load_config
    cfg = load_config(config, cfg_options)
    if cfg.get('default_scope') != 'mmdet':
        raise ValueError(f'--end2end takes an mmdet detector config, {config} has default_scope '
                         f'{cfg.get("default_scope")!r}')
    h, w = (int(s) for s in input_size)
    divisor = int((cfg.model.get('data_preprocessor') or {}).get('pad_size_divisor', 1))
    if h % divisor or w % divisor:
        raise ValueError(f'--input-size {h} {w}: height and width must be multiples of {divisor} (the data '
                         'preprocessor\'s pad_size_divisor), so that the resized image is the graph\'s input')
    resizes = [step for step in cfg.test_dataloader.dataset.pipeline if step['type'].split('.')[-1] == 'Resize']
    if not resizes:
        raise ValueError(f'--end2end: {config} has no Resize in test_dataloader.dataset.pipeline')
    for step in resizes:
        step.pop('scale_factor', None)
        step.update(scale=(w, h), keep_ratio=False)
    return cfg


def export_fixed(cfg: Any, model: torch.nn.Module, out: str, input_size: Sequence[int], masks: str = 'full') -> str:
    """``model`` exported end to end (``mmdeploy`` layout, a Mask R-CNN's ``masks`` as given) at ``[1, 3, H, W]``
    with ``cfg``'s runtime metadata."""
    from mmsparse.deployment import export_onnx, model_kind
    from mmsparse.deployment.metadata import runtime_meta
    kind = model_kind(model)
    if kind not in ('single_stage', 'two_stage'):
        raise ValueError(f'--end2end takes a detector, got a {kind} model')
    export_onnx(model, out, tuple(int(s) for s in input_size), kind, outputs='mmdeploy', masks=masks,
                extra_meta=dict(config=cfg.filename, **runtime_meta(cfg)))
    return out


def runners(model: torch.nn.Module, cfg: Any, ort_model: Any, image: str) -> dict[str, Callable[[], int]]:
    """``{'pytorch': ..., 'onnxruntime': ...}``: each runs its path on ``image`` and returns the detection count."""
    from mmcv.transforms import Compose
    from mmdet.apis import inference_detector
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    pipeline = Compose(cfg.test_dataloader.dataset.pipeline)

    def eager() -> int:
        return len(inference_detector(model, image, test_pipeline=pipeline).pred_instances)

    def ort() -> int:
        return len(ort_model.predict(ort_model.read(image)).labels)

    return dict(pytorch=eager, onnxruntime=ort)


def profile_graph(path: str, image: str, threads: int, repeats: int, prefix: str) -> dict[str, Any]:
    """ONNX Runtime's profile of the graph at ``path`` on ``image`` (preprocessed as :class:`OrtModel` does),
    ``repeats`` runs; the trace file and the :data:`TOP` node types and nodes by total time."""
    import numpy as np
    import onnxruntime as ort
    from mmsparse_ort import OrtModel, preprocess
    meta = OrtModel(path, threads=threads).meta
    tensor, info = preprocess(OrtModel.read(image), meta['preprocess'])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    feeds = {'input': tensor, 'img_shape': np.asarray([info.img_shape], dtype=np.int64)}
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
    for _ in range(repeats):
        session.run(None, feeds)
    trace = session.end_profiling()
    with open(trace) as f:
        events = [e for e in json.load(f) if e.get('cat') == 'Node' and e.get('name', '').endswith('_kernel_time')]
    by_type: dict[str, float] = {}
    by_node: dict[str, list[Any]] = {}
    for e in events:
        op, node, us = e['args'].get('op_name', '?'), e['name'][:-len('_kernel_time')], float(e['dur'])
        by_type[op] = by_type.get(op, 0.) + us
        by_node.setdefault(node, [op, 0.])[1] += us
    total = sum(by_type.values()) or 1.

    def rows(items: list[tuple[str, str, float]]) -> list[dict[str, Any]]:
        return [dict(name=name, op=op, ms_per_run=us / 1e3 / repeats, fraction=us / total)
                for name, op, us in sorted(items, key=lambda r: -r[2])[:TOP]]

    return dict(file=trace, runs=repeats, total_ms_per_run=total / 1e3 / repeats,
                by_op_type=rows([(op, op, us) for op, us in by_type.items()]),
                by_node=rows([(node, op, us) for node, (op, us) in by_node.items()]))


def summary(times: Sequence[float]) -> dict[str, Any]:
    return dict(median_s=statistics.median(times), min_s=min(times), max_s=max(times), times_s=list(times))


def run_end2end(config: str, input_size: Sequence[int], image: str, checkpoint: str | None = None,
                threads: int | None = None, warmup: int = 2, repeats: int = 5, work_dir: str = 'work_dirs/end2end',
                profile: bool = False, out: str | None = None, cfg_options: dict | None = None,
                printer: Callable[[str], Any] | None = print, masks: str = 'full') -> dict[str, Any]:
    """The whole benchmark (see the module docstring); returns (and writes to ``out``) its JSON record."""
    if not osp.isfile(image):
        raise FileNotFoundError(f'--image: no such file: {image}')
    if repeats < 1 or warmup < 0:
        raise ValueError(f'--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}')
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    from mmsparse.deployment import build_model
    from mmsparse_ort import OrtModel

    from .measure import time_backends
    say = printer or (lambda text: None)
    cfg = fixed_size_config(config, input_size, cfg_options)
    model = build_model(cfg, checkpoint)
    os.makedirs(work_dir, exist_ok=True)
    stem = osp.splitext(osp.basename(config))[0]
    path = osp.join(work_dir, f'{stem}_{input_size[0]}x{input_size[1]}.onnx')
    t0 = time.perf_counter()
    export_fixed(cfg, model, path, input_size, masks)
    say(f'exported {path} ({time.perf_counter() - t0:.0f} s)')
    ort_model = OrtModel(path, threads=threads)
    load = os.getloadavg()
    runs = runners(model, cfg, ort_model, image)
    times = time_backends(runs, warmup, repeats)
    load_after = os.getloadavg()
    counts = {name: run() for name, run in runs.items()}
    import onnxruntime
    record: dict[str, Any] = dict(
        config=config, checkpoint=checkpoint, image=image, image_size=list(OrtModel.read(image).shape[:2]),
        input_size=[int(s) for s in input_size], onnx=path, threads=dict(torch=torch.get_num_threads(),
                                                                         onnxruntime=threads),
        warmup=warmup, repeats=repeats, load_average=[load[0], load_after[0]], torch=torch.__version__,
        onnxruntime=onnxruntime.__version__, masks=masks, detections=counts,
        results={name: summary(times[name]) for name in PATHS})
    record['ratio_eager_over_ort'] = record['results']['pytorch']['median_s'] / record['results']['onnxruntime'][
        'median_s']
    say(f'== {stem}, image {record["image_size"][0]}x{record["image_size"][1]} -> {input_size[0]}x{input_size[1]}, '
        f'{threads} threads (torch and ONNX Runtime), {warmup} warm-up + {repeats} interleaved runs, load average '
        f'{load[0]:.2f} -> {load_after[0]:.2f}')
    say(f'   {"path":<12} {"median ms":>10} {"min ms":>9} {"max ms":>9} {"detections":>11}')
    for name in PATHS:
        r = record['results'][name]
        say(f'   {name:<12} {r["median_s"] * 1e3:>10.1f} {r["min_s"] * 1e3:>9.1f} {r["max_s"] * 1e3:>9.1f} '
            f'{counts[name]:>11}')
    say(f'   eager / ONNX Runtime (medians): {record["ratio_eager_over_ort"]:.2f}x')
    if profile:
        record['profile'] = profile_graph(path, image, threads, repeats, osp.join(work_dir, f'{stem}_ort_profile'))
        say(f'   ONNX Runtime profile: {record["profile"]["file"]} '
            f'({record["profile"]["total_ms_per_run"]:.1f} ms of kernels per run)')
        for key, title in (('by_op_type', 'node type'), ('by_node', 'node')):
            say(f'   top {TOP} by {title}: {"ms/run":>8} {"share":>6}')
            for row in record['profile'][key]:
                label = row['name'] if key == 'by_op_type' else f'{row["name"]} ({row["op"]})'
                say(f'     {label[:90]:<90} {row["ms_per_run"]:>8.2f} {100 * row["fraction"]:>5.1f}%')
    if out:
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        with open(out, 'w') as f:
            json.dump(record, f, indent=1)
        say(f'wrote {out}')
    return record
