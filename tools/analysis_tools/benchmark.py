"""Speed and memory of mmsparse operators, backbones and whole configs, reference vs fast implementations.

Examples::

    # one BRA layer at BiFormer-S COCO stage-1 shape, both implementations interleaved, with ratios
    python tools/analysis_tools/benchmark.py --layer bra --shape 2,64,200,304 \\
        --layer-args num_heads=2 n_win=16 topk=1 --compare reference fast
    # a backbone at 224x224, batch 8, inference only, bf16 autocast
    python tools/analysis_tools/benchmark.py --backbone biformer-s --input-size 224 224 --batch 8 \\
        --mode fwd --dtype bf16
    # a detector training step (loss + backward + optimizer step) on synthetic boxes and masks
    python tools/analysis_tools/benchmark.py --config configs/biformer/maskrcnn_biformer_s_coco.py \\
        --input-size 800 1216 --batch 2 --mode train
    # everything docs/benchmarks.md reports (JSON + the PNG plots under docs/figures/)
    python tools/analysis_tools/benchmark.py --suite issue7 --threads 1 --out docs/benchmarks.json

Method.

* Time: ``--warmup`` untimed runs, then ``--repeats`` timed runs; the median is reported (and min/max). On GPU
  every run is bracketed by ``torch.cuda.synchronize``. With ``--compare A B`` both implementations live in
  one process with the same weights and inputs and run alternately (A, B, A, B, ...), so load from other
  processes hits both alike; the ratios are ``time(A) / time(B)``.
* Memory: on GPU ``torch.cuda.max_memory_allocated`` over one run after a reset. On CPU every case runs once
  more in a *fresh subprocess*: after one warm-up run the kernel's peak-RSS counter is reset
  (``/proc/self/clear_refs``, value 5) and the reported number is ``VmHWM - VmRSS`` across one run, i.e. the
  extra resident memory the run needed on top of the model and inputs (gradients included: each run starts
  with ``grad = None``). ``MALLOC_MMAP_THRESHOLD_`` is fixed so that freed tensors leave the RSS (glibc would
  otherwise keep them for reuse and hide peaks). ``peak_rss_total_bytes`` is the subprocess's whole
  high-water mark (interpreter, model, optimizer state). The subprocess runs under ``RLIMIT_AS`` (``--mem-limit-gib``) so a case that would exhaust the
  machine fails alone, reported as ``"error"``.
* Parameters: trainable and frozen parameter count. FLOPs: ``mmsparse.utils.complexity.flop_count`` (one
  forward, attention matmuls included); ``null`` with a reason when that module is not importable.

Implementation names: ``reference`` / ``fast`` are understood for every family; the family-specific names
(BRA ``gather`` / ``sdpa``, STA ``reference`` / ``fast``, AttnConv ``reference`` / ``fast``) work too.
"""
import argparse
import copy
import gc
import json
import math
import os
import os.path as osp
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

#: family -> generic implementation name -> attribute values set on the family's operator modules
IMPL_NAMES = {
    'bra': {'reference': 'gather', 'fast': 'sdpa'},
    'sta': {'reference': 'reference', 'fast': 'fast'},
    'attnconv': {'reference': 'reference', 'fast': 'fast'},
}

#: layer name -> (class path, default kwargs); ``--layer-args`` overrides the kwargs
LAYERS = {
    'bra': ('mmsparse.ops.routing_attention.BiLevelRoutingAttention',
            dict(num_heads=2, n_win=16, topk=1, auto_pad=True)),
    'sta': ('mmsparse.ops.super_token_attention.SuperTokenAttention', dict(num_heads=1, stoken_size=8)),
    'attnconv': ('mmsparse.ops.attn_conv.AttnConv',
                 dict(num_heads=4, group_split=[3, 1], kernel_sizes=[3], window_size=8)),
}
LAYER_FAMILY = {'bra': 'bra', 'sta': 'sta', 'attnconv': 'attnconv'}

#: backbone name -> (registered type, kwargs, family)
BACKBONES = {
    'biformer-t': ('BiFormer', dict(arch='tiny', n_win=16), 'bra'),
    'biformer-s': ('BiFormer', dict(arch='small', n_win=16), 'bra'),
    'biformer-b': ('BiFormer', dict(arch='base', n_win=16), 'bra'),
    'cloformer-xxs': ('CloFormer', dict(arch='xxs'), 'attnconv'),
    'cloformer-xs': ('CloFormer', dict(arch='xs'), 'attnconv'),
    'cloformer-s': ('CloFormer', dict(arch='s'), 'attnconv'),
    'stvit-s': ('STViT', dict(arch='small'), 'sta'),
    'stvit-b': ('STViT', dict(arch='base'), 'sta'),
}

DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
MODES = ('fwd', 'fwdbwd', 'train')


# ------------------------------------------------------------------------------------------------ building

def _import(path):
    mod, _, name = path.rpartition('.')
    return getattr(__import__(mod, fromlist=[name]), name)


def parse_value(text):
    """``'16'`` -> 16, ``'[3,1]'`` -> [3, 1], ``'True'`` -> True, anything else stays a string."""
    try:
        return json.loads(text.replace("'", '"').replace('True', 'true').replace('False', 'false')
                          .replace('None', 'null'))
    except ValueError:
        return text


def parse_kwargs(items):
    out = {}
    for item in items or []:
        if '=' not in item:
            raise ValueError(f'--layer-args entries must look like key=value, got {item!r}')
        k, v = item.split('=', 1)
        out[k] = parse_value(v)
    return out


def resolve_impl(family, impl):
    """Generic or family-specific implementation name -> the family-specific one (raises on unknown)."""
    names = IMPL_NAMES[family]
    if impl in names:
        return names[impl]
    if impl in names.values():
        return impl
    raise ValueError(f'impl={impl!r} is not known for {family}; choose one of '
                     f'{sorted(set(names) | set(names.values()))}')


def set_impl(model, family, impl):
    """Switch every operator of ``family`` inside ``model`` to ``impl``; returns how many were switched."""
    from mmsparse.ops.attn_conv import AttnConv
    from mmsparse.ops.routing_attention import BiLevelRoutingAttention
    from mmsparse.ops.super_token_attention import SuperTokenAttention
    impl = resolve_impl(family, impl)
    cls, attr = {'bra': (BiLevelRoutingAttention, 'impl'), 'sta': (SuperTokenAttention, 'impl'),
                 'attnconv': (AttnConv, 'impl')}[family]
    n = 0
    for m in model.modules():
        if isinstance(m, cls):
            setattr(m, attr, impl)
            n += 1
    return n


def build_case(case):
    """Case dict -> (module, make_inputs() -> args, run(module, args, mode), family or None)."""
    import mmsparse  # noqa: F401  (registers everything)
    torch.manual_seed(0)
    kind = case['kind']
    if kind == 'layer':
        cls_path, defaults = LAYERS[case['name']]
        n, c, h, w = case['shape']
        kwargs = {**defaults, **case.get('layer_args', {})}
        module = _import(cls_path)(c, **kwargs)
        shape = tuple(case['shape'])
        return module, lambda: (torch.randn(shape),), run_tensor_model, LAYER_FAMILY[case['name']]
    if kind == 'backbone':
        from mmsparse.registry import MODELS
        typ, kwargs, family = BACKBONES[case['name']]
        module = MODELS.build(dict(type=typ, **kwargs))
        module.init_weights()
        shape = (case['batch'], 3, *case['input_size'])
        return module, lambda: (torch.randn(shape),), run_tensor_model, family
    if kind == 'config':
        return build_config_case(case)
    raise ValueError(f'case kind must be layer, backbone or config, got {kind!r}')


def run_tensor_model(module, args, mode):
    outs = module(*args)
    if mode == 'fwd':
        return
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    # a scalar touching every output; float() so the backward starts in float32 under autocast
    loss = sum(o.float().square().mean() for o in outs)
    loss.backward()


def build_config_case(case):
    """A full mmdet/mmseg model from a config, with synthetic data samples of the requested size."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    import mmsparse  # noqa: F401
    cfg = Config.fromfile(case['name'])
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    backbone = cfg.model.get('backbone', {})
    if isinstance(backbone.get('init_cfg'), dict):
        backbone['init_cfg'] = None  # no download: random weights time the same
    if cfg.get('default_scope') == 'mmseg':
        from mmseg.registry import MODELS
        cfg.model.pop('pretrained', None)
    else:
        from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    model.init_weights()
    family = {'BiFormer': 'bra', 'STViT': 'sta', 'CloFormer': 'attnconv'}.get(
        str(backbone.get('type', '')).split('.')[-1])
    batch, (h, w) = case['batch'], case['input_size']
    scope = cfg.get('default_scope')
    num_classes = _num_classes(cfg.model)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def make_inputs():
        g = torch.Generator().manual_seed(0)
        data = dict(inputs=[torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
                            for _ in range(batch)],
                    data_samples=[synthetic_sample(scope, h, w, g, num_classes) for _ in range(batch)])
        return (model.data_preprocessor(data, training=case['mode'] == 'train'),)

    def run(m, args, mode):
        data = args[0]
        if mode == 'fwd':
            with torch.no_grad():
                m.extract_feat(data['inputs'])
            return
        losses = m(**data, mode='loss')
        loss = sum(v.sum() for k, v in losses.items() if 'loss' in k and isinstance(v, torch.Tensor)) + \
            sum(sum(x.sum() for x in v) for k, v in losses.items() if 'loss' in k and isinstance(v, list))
        loss.backward()
        if mode == 'train':
            optim.step()
            optim.zero_grad(set_to_none=False)

    return model, make_inputs, run, family


def _num_classes(model_cfg):
    """Classes of the model's (first) head, for synthetic labels in range."""
    heads = [model_cfg.get('roi_head', {}).get('bbox_head'), model_cfg.get('bbox_head'),
             model_cfg.get('decode_head')]
    for head in heads:
        if isinstance(head, list):
            head = head[0]
        if isinstance(head, dict) and 'num_classes' in head:
            return head['num_classes']
    return 1


def synthetic_sample(scope, h, w, g, num_classes):
    """One data sample with random ground truth: 5 boxes + masks (mmdet) or a class map (mmseg)."""
    if scope == 'mmseg':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, h, w), generator=g))
        return s
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                    scale_factor=(1., 1.), batch_input_shape=(h, w)))
    k = 5
    xy = torch.rand(k, 2, generator=g) * torch.tensor([w * .6, h * .6])
    wh = (torch.rand(k, 2, generator=g) * .3 + .1) * torch.tensor([w, h])
    boxes = torch.cat([xy, xy + wh], 1)
    masks = torch.zeros(k, h, w, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    inst = InstanceData()
    inst.bboxes = boxes
    inst.labels = torch.randint(0, num_classes, (k,), generator=g)
    inst.masks = BitmapMasks(masks.numpy(), h, w)
    s.gt_instances = inst
    s.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    return s


# ---------------------------------------------------------------------------------------------- measuring

def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def autocast_ctx(device, dtype_name):
    dtype = DTYPES[dtype_name]
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def one_run(module, run, args, mode, device, dtype_name):
    module.train(mode != 'fwd')
    ctx = torch.no_grad() if mode == 'fwd' else torch.enable_grad()
    with ctx, autocast_ctx(device, dtype_name):
        run(module, args, mode)
    if mode != 'fwd':
        for p in module.parameters():
            p.grad = None  # every run allocates its gradients afresh, as a step after zero_grad() does


def time_runs(entries, mode, device, dtype_name, warmup, repeats):
    """entries: name -> (module, run, args). Interleaved timing; name -> list of seconds."""
    for _ in range(warmup):
        for module, run, args in entries.values():
            one_run(module, run, args, mode, device, dtype_name)
    times = {k: [] for k in entries}
    for _ in range(repeats):
        for name, (module, run, args) in entries.items():
            _sync(device)
            t0 = time.perf_counter()
            one_run(module, run, args, mode, device, dtype_name)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def measure_peak_memory(module, run, args, mode, device, dtype_name):
    """Peak extra memory (bytes) of one run (see the module docstring for the method)."""
    one_run(module, run, args, mode, device, dtype_name)  # warm-up: lazy allocations, kernel caches
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        one_run(module, run, args, mode, device, dtype_name)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, 'cuda max_memory_allocated delta'
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current RSS
    base = _status_kib('VmRSS')
    one_run(module, run, args, mode, device, dtype_name)
    return (_status_kib('VmHWM') - base) * 1024, 'cpu peak RSS delta (VmHWM reset), fresh subprocess'


class _ExtractFeat(torch.nn.Module):
    """A detector / segmentor seen as its feature extractor (backbone + neck), for FLOP counting."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.extract_feat(x)


def flops_of(module, args):
    """(FLOPs of one forward, note) through ``mmsparse.utils.complexity.flop_count``."""
    try:
        from mmsparse.utils.complexity import flop_count
    except ImportError as e:
        return None, f'mmsparse.utils.complexity not available ({e})'
    try:
        if isinstance(args[0], dict):  # a whole model: count backbone + neck on the batch tensor
            module, args = _ExtractFeat(module), (args[0]['inputs'],)
            note = 'flop_count of extract_feat (backbone + neck), one forward'
        else:
            note = 'flop_count, one forward'
        module.eval()
        with torch.no_grad():
            res = flop_count(module, args)
        return int(res['flops']), note
    except Exception as e:  # reported, not fatal: timing and memory still stand
        return None, f'flop_count failed: {type(e).__name__}: {e}'


def memory_in_subprocess(case, impl, mem_limit_gib, timeout):
    """Run :func:`measure_peak_memory` for one implementation in a fresh interpreter."""
    payload = json.dumps(dict(case=case, impl=impl, mem_limit_gib=mem_limit_gib))
    try:
        # a fixed mmap threshold: every large tensor is its own mapping, returned to the system when freed, so
        # RSS follows live memory (glibc's adaptive threshold would recycle freed heap and hide peaks)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', MALLOC_TRIM_THRESHOLD_='131072')
        res = subprocess.run([sys.executable, osp.abspath(__file__), '--_memory-worker', payload],
                             capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return dict(error=f'timed out after {timeout}s')
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith('{')]
    if res.returncode != 0 or not lines:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return dict(error=f'exit {res.returncode}: ' + ' | '.join(tail))
    return json.loads(lines[-1])


def memory_worker(payload):
    spec = json.loads(payload)
    if spec['mem_limit_gib']:
        lim = int(spec['mem_limit_gib'] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    case = spec['case']
    torch.set_num_threads(case.get('threads') or torch.get_num_threads())
    device = torch.device(case['device'])
    module, make_inputs, run, family = build_case(case)
    if family and spec['impl']:
        set_impl(module, family, spec['impl'])
    module.to(device)
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in make_inputs())
    peak, method = measure_peak_memory(module, run, args, case['mode'], device, case['dtype'])
    # the whole process's high-water mark (model, inputs, optimizer state included) on CPU
    total = _status_kib('VmHWM') * 1024 if device.type == 'cpu' else torch.cuda.max_memory_allocated(device)
    print(json.dumps(dict(peak_bytes=peak, total_bytes=total, method=method)))


# ------------------------------------------------------------------------------------------------- driver

def run_case(case, impls, warmup, repeats, memory=True, mem_limit_gib=20., timeout=1800, flops=True):
    """Measure ``case`` for each implementation (``impls``: list of names, or [None] for as-built)."""
    device = torch.device(case['device'])
    if case.get('threads'):
        torch.set_num_threads(case['threads'])
    module, make_inputs, run, family = build_case(case)
    if family is None and any(impls):
        raise ValueError(f'{case["name"]}: no known operator family, so --impl / --compare do not apply')
    entries = {}
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in make_inputs())
    for impl in impls:
        m = module if len(impls) == 1 else copy.deepcopy(module)
        if impl:
            set_impl(m, family, impl)
        m.to(device)
        entries[impl or 'default'] = (m, run, args)
    params = sum(p.numel() for p in module.parameters())
    flops, flops_note = flops_of(copy.deepcopy(module).to(device), args) if flops else (None, 'not asked')
    times = time_runs(entries, case['mode'], device, case['dtype'], warmup, repeats)
    del entries, module
    gc.collect()
    results = {}
    for name, ts in times.items():
        r = dict(time_median_s=statistics.median(ts), time_min_s=min(ts), time_max_s=max(ts), repeats=len(ts),
                 params=params, flops=flops, flops_note=flops_note)
        if case['mode'] != 'fwd' or case['kind'] != 'layer':
            per = case.get('batch') or case['shape'][0]
            r['images_per_s'] = per / r['time_median_s']
        if memory:
            mem = memory_in_subprocess(case, None if name == 'default' else name, mem_limit_gib, timeout)
            r.update(peak_mem_bytes=mem.get('peak_bytes'), peak_rss_total_bytes=mem.get('total_bytes'),
                     mem_method=mem.get('method'), mem_error=mem.get('error'))
        results[name] = r
    return results


def fmt_bytes(n):
    return 'n/a' if n is None else f'{n / 2**30:.2f} GiB' if n >= 2**30 else f'{n / 2**20:.0f} MiB'


def case_label(case):
    size = 'x'.join(map(str, case['shape'])) if case['kind'] == 'layer' else \
        f'{case["batch"]}x3x{case["input_size"][0]}x{case["input_size"][1]}'
    extra = ' '.join(f'{k}={v}' for k, v in case.get('layer_args', {}).items())
    name = osp.basename(str(case['name']))
    return f'{case["kind"]} {name} {size} {extra} {case["mode"]} {case.get("dtype", "fp32")}'.strip()


def table(records):
    """Markdown table of records [{case, impl, ...}] with ratios against the first impl of each case."""
    lines = ['| case | impl | median time | images/s | peak mem | params | GMACs | speed-up | mem ratio |',
             '|---|---|---|---|---|---|---|---|---|']
    for rec in records:
        base = None
        for impl, r in rec['results'].items():
            base = base or r
            tr = base['time_median_s'] / r['time_median_s']
            mr = (r['peak_mem_bytes'] / base['peak_mem_bytes']
                  if r.get('peak_mem_bytes') and base.get('peak_mem_bytes') else None)
            mem = fmt_bytes(r.get('peak_mem_bytes')) if not r.get('mem_error') else 'error'
            ips = f'{r["images_per_s"]:.2f}' if r.get('images_per_s') else ''
            gf = f'{r["flops"] / 1e9:.1f}' if r.get('flops') else 'n/a'
            lines.append(f'| {case_label(rec["case"])} | {impl} | {r["time_median_s"] * 1e3:.1f} ms | {ips} | '
                         f'{mem} | {r["params"] / 1e6:.2f} M | {gf} | {tr:.2f}x | '
                         f'{"" if mr is None else f"{mr:.2f}x"} |')
    return '\n'.join(lines)


def plot_sweeps(json_path, fig_dir):
    """PNG plots (time and peak memory against input size, reference vs fast) of the suite's size sweeps."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    with open(json_path) as f:
        records = json.load(f)['records']
    os.makedirs(fig_dir, exist_ok=True)
    written = []
    for sweep in sorted({r['case'].get('sweep') for r in records if r['case'].get('sweep')}):
        recs = sorted((r for r in records if r['case'].get('sweep') == sweep and r['results']),
                      key=lambda r: r['case']['shape'][2] * r['case']['shape'][3])
        if not recs:
            continue
        sides = [f'{r["case"]["shape"][2]}x{r["case"]["shape"][3]}' for r in recs]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for impl in recs[0]['results']:
            t = [r['results'][impl]['time_median_s'] * 1e3 for r in recs]
            m = [(r['results'][impl].get('peak_mem_bytes') or float('nan')) / 2**20 for r in recs]
            axes[0].plot(sides, t, marker='o', label=impl)
            axes[1].plot(sides, m, marker='o', label=impl)
        c = recs[0]['case']
        title = f'{sweep.upper()} fwd+bwd, batch {c["shape"][0]}, {c["shape"][1]} ch, ' + \
            ', '.join(f'{k}={v}' for k, v in c.get('layer_args', {}).items())
        axes[0].set(xlabel='input H x W', ylabel='median time (ms)', title='time')
        axes[1].set(xlabel='input H x W', ylabel='peak memory (MiB)', title='peak memory (CPU RSS delta)')
        for ax in axes:
            ax.grid(alpha=.3)
            ax.legend()
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = osp.join(fig_dir, f'{sweep}_sweep.png')
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def suite_issue7():
    """The measurements of docs/benchmarks.md (issue 7). Each entry: (case, impls)."""
    both = ['reference', 'fast']
    cases = []
    bra1 = dict(num_heads=2, n_win=16, topk=1, qk_dim=64)
    bra3 = dict(num_heads=8, n_win=16, topk=16, qk_dim=256)
    for mode in ('fwdbwd', 'fwd'):
        cases.append((dict(kind='layer', name='bra', shape=[2, 64, 200, 304], layer_args=bra1, mode=mode), both))
        cases.append((dict(kind='layer', name='bra', shape=[2, 256, 50, 76], layer_args=bra3, mode=mode), both))
    cases.append((dict(kind='layer', name='sta', shape=[2, 64, 200, 304],
                       layer_args=dict(num_heads=1, stoken_size=8), mode='fwdbwd'), both))
    cases.append((dict(kind='layer', name='attnconv', shape=[2, 64, 200, 304],
                       layer_args=dict(num_heads=4, group_split=[3, 1], kernel_sizes=[3], window_size=8),
                       mode='fwdbwd'), both))
    # size sweeps for the plots (stage-1 shapes of 1/4-resolution maps)
    for side in (64, 128, 192, 256):
        cases.append((dict(kind='layer', name='bra', shape=[2, 64, side, side], layer_args=bra1,
                           mode='fwdbwd', sweep='bra'), both))
        cases.append((dict(kind='layer', name='sta', shape=[2, 64, side, side],
                           layer_args=dict(num_heads=1, stoken_size=8), mode='fwdbwd', sweep='sta'), both))
    for name in ('biformer-s', 'cloformer-s', 'stvit-s'):
        cases.append((dict(kind='backbone', name=name, batch=8, input_size=[224, 224], mode='fwd',
                           warmup=1, repeats=5), both))
        cases.append((dict(kind='backbone', name=name, batch=2, input_size=[800, 1216], mode='fwdbwd',
                           warmup=1, repeats=3), both))
    cases.append((dict(kind='config', name=osp.join(REPO, 'configs/biformer/maskrcnn_biformer_s_coco.py'),
                       batch=2, input_size=[800, 1216], mode='train', warmup=1, repeats=2), [None]))
    return cases


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument('--layer', choices=sorted(LAYERS), help='one operator')
    what.add_argument('--backbone', choices=sorted(BACKBONES), help='one backbone')
    what.add_argument('--config', help='an mmdet/mmseg config file (whole model, synthetic ground truth)')
    what.add_argument('--suite', choices=['issue7'], help='a predefined set of cases')
    what.add_argument('--plot', metavar='JSON', help='draw the size-sweep plots of a suite result file')
    what.add_argument('--_memory-worker', dest='memory_worker', help=argparse.SUPPRESS)
    p.add_argument('--shape', help='layer input N,C,H,W (e.g. 2,64,200,304)')
    p.add_argument('--layer-args', nargs='*', default=[], help='layer constructor overrides, key=value')
    p.add_argument('--input-size', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--dtype', choices=sorted(DTYPES), default='fp32',
                   help='fp32, or fp16/bf16 autocast (weights stay fp32)')
    p.add_argument('--mode', choices=MODES, default='fwdbwd',
                   help='fwd (no grad), fwdbwd (forward + backward), train (configs: + AdamW step)')
    p.add_argument('--impl', help='implementation: reference | fast (or a family-specific name)')
    p.add_argument('--compare', nargs=2, metavar=('IMPL_A', 'IMPL_B'),
                   help='two implementations, interleaved in one process; ratios are A / B')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, help='torch.set_num_threads for every process')
    p.add_argument('--no-memory', action='store_true', help='skip the memory subprocesses')
    p.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    p.add_argument('--mem-limit-gib', type=float, default=20., help='RLIMIT_AS of a memory subprocess')
    p.add_argument('--only', help='suite: run only cases whose label contains this text')
    p.add_argument('--out', help='write the results as JSON here')
    p.add_argument('--figures', default=osp.join(REPO, 'docs/figures'), help='--plot / --suite: PNG folder')
    args = p.parse_args(argv)

    if args.memory_worker:
        memory_worker(args.memory_worker)
        return None
    if args.plot:
        for path in plot_sweeps(args.plot, args.figures):
            print('wrote', path)
        return None
    if args.mem_limit_gib:
        # the timing process gets the same guard as the memory subprocesses
        lim = int(args.mem_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    if args.suite:
        cases = suite_issue7()
        if args.only:
            cases = [c for c in cases if args.only in case_label(c[0])]
    else:
        base = dict(device=args.device, dtype=args.dtype, mode=args.mode)
        if args.layer:
            if not args.shape:
                p.error('--layer needs --shape N,C,H,W')
            shape = [int(v) for v in args.shape.split(',')]
            if len(shape) != 4:
                p.error(f'--shape must be N,C,H,W, got {args.shape!r}')
            case = dict(kind='layer', name=args.layer, shape=shape, layer_args=parse_kwargs(args.layer_args))
        elif args.backbone:
            case = dict(kind='backbone', name=args.backbone, batch=args.batch, input_size=args.input_size)
        else:
            case = dict(kind='config', name=args.config, batch=args.batch, input_size=args.input_size)
        case.update(base)
        impls = list(args.compare) if args.compare else [args.impl]
        cases = [(case, impls)]
    meta = dict(machine=platform.machine(), processor=platform.processor(), python=platform.python_version(),
                torch=torch.__version__, threads=torch.get_num_threads() if not args.threads else args.threads,
                cpu_count=os.cpu_count(), cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                warmup=args.warmup, repeats=args.repeats, date=time.strftime('%Y-%m-%d %H:%M'))

    def dump(records):
        if args.out:  # rewritten after every case, so a long suite that is stopped keeps what it measured
            os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
            with open(args.out, 'w') as f:
                json.dump(dict(meta=meta, records=records), f, indent=1)

    records = []
    for case, impls in cases:
        case.setdefault('device', args.device)
        case.setdefault('dtype', args.dtype)
        case.setdefault('threads', args.threads)
        if case['mode'] == 'train' and case['kind'] != 'config':
            case['mode'] = 'fwdbwd'
        print(f'== {case_label(case)}: {", ".join(i or "default" for i in impls)}', flush=True)
        try:
            results = run_case(case, impls, case.get('warmup', args.warmup), case.get('repeats', args.repeats),
                               memory=not args.no_memory,
                               mem_limit_gib=args.mem_limit_gib, flops=not args.no_flops)
        except Exception as e:  # a suite goes on; the error is recorded
            if not args.suite:
                raise
            print(f'   error: {type(e).__name__}: {e}', flush=True)
            records.append(dict(case=case, results={}, error=f'{type(e).__name__}: {e}'))
            dump(records)
            continue
        records.append(dict(case=case, results=results))
        dump(records)
        print(table([records[-1]]), flush=True)
    ok = [r for r in records if r['results']]
    print('\n' + table(ok))
    if args.out:
        print(f'wrote {args.out}')
        if args.suite:
            for path in plot_sweeps(args.out, args.figures):
                print('wrote', path)
    return records


if __name__ == '__main__':
    main()
