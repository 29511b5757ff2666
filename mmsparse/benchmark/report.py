"""Reporting benchmark records: labels, ratios, the Markdown table and the size-sweep plots.

A *record* is ``dict(case=..., results={impl: {...}}, ratios={impl: {...}})`` as the CLI writes it to JSON.
"""
from __future__ import annotations

import json
import os
import os.path as osp


def fmt_bytes(n: float | None) -> str:
    """``n`` bytes in MiB or GiB; ``'n/a'`` for None."""
    return 'n/a' if n is None else f'{n / 2**30:.2f} GiB' if n >= 2**30 else f'{n / 2**20:.0f} MiB'


def case_label(case: dict) -> str:
    """One-line label of a case dict: kind, name, size, layer args, mode, dtype."""
    size = 'x'.join(map(str, case['shape'])) if case['kind'] == 'layer' else \
        f'{case["batch"]}x3x{case["input_size"][0]}x{case["input_size"][1]}'
    extra = ' '.join(f'{k}={v}' for k, v in case.get('layer_args', {}).items())
    name = osp.basename(str(case['name']))
    compiled = ' compiled' if case.get('compile') else ''
    return f'{case["kind"]} {name} {size} {extra} {case["mode"]} {case.get("dtype", "fp32")}{compiled}'.strip()


def ratios(results: dict[str, dict]) -> dict[str, dict]:
    """Each implementation after the first against the first (the baseline ``A`` of ``--compare A B``).

    ``speedup`` = time(A) / time(B) from the medians; ``mem_ratio`` = peak memory(B) / peak memory(A), ``None``
    when either was not measured. An empty dict for a single implementation.
    """
    names = list(results)
    out = {}
    for name in names[1:]:
        a, b = results[names[0]], results[name]
        mem_a, mem_b = a.get('peak_mem_bytes'), b.get('peak_mem_bytes')
        out[name] = dict(speedup=a['time_median_s'] / b['time_median_s'],
                         mem_ratio=mem_b / mem_a if mem_a and mem_b and mem_a > 0 and mem_b > 0 else None)
    return out


def table(records: list[dict]) -> str:
    """Markdown table of records; the ratio columns are against the first implementation of each case."""
    lines = ['| case | impl | median time | images/s | peak mem | params | GMACs | GFLOP/s | of GEMM | speed-up | '
             'mem ratio |', '|---|---|---|---|---|---|---|---|---|---|---|']
    for rec in records:
        rats = rec.get('ratios') or ratios(rec['results'])
        for impl, r in rec['results'].items():
            rat = rats.get(impl)
            mem = 'error' if r.get('mem_error') else fmt_bytes(r.get('peak_mem_bytes'))
            cells = [
                case_label(rec['case']), impl, f'{r["time_median_s"] * 1e3:.1f} ms',
                f'{r["images_per_s"]:.2f}' if r.get('images_per_s') else '', mem, f'{r["params"] / 1e6:.2f} M',
                f'{r["macs"] / 1e9:.1f}' if r.get('macs') else 'n/a',
                f'{r["gflops"]:.1f}' if r.get('gflops') else 'n/a',
                f'{r["gemm_fraction"]:.0%}' if r.get('gemm_fraction') else 'n/a',
                'baseline' if rat is None and len(rec['results']) > 1 else f'{rat["speedup"]:.2f}x' if rat else '',
                f'{rat["mem_ratio"]:.2f}x' if rat and rat['mem_ratio'] else '']
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot_sweeps(json_path: str, fig_dir: str) -> list[str]:
    """PNG plots of the size sweeps (time and peak memory against input size, a line per implementation).

    Returns the paths written.
    """
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
        title = f'{sweep.upper()} {c["mode"]}, batch {c["shape"][0]}, {c["shape"][1]} ch, ' + \
            ', '.join(f'{k}={v}' for k, v in c.get('layer_args', {}).items())
        axes[0].set(xlabel='input H x W', ylabel='median time (ms)', title='time')
        axes[1].set(xlabel='input H x W', ylabel='peak memory (MiB)', title='peak memory')
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
