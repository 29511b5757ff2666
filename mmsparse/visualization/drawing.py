"""Pixel-exact drawings of the attention maps on the image the backbone saw (BGR uint8 in, BGR uint8 out).

Panels are drawn with numpy at the network input size, so a test can say which pixels changed: a BRA panel
leaves every pixel outside the query's region and its routed regions untouched. Text (titles, captions) is
rendered with matplotlib into separate strips, and :func:`compose` lays panels and strips out on one canvas,
returning where each panel went.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ['region_box', 'draw_routing', 'draw_association', 'draw_heatmap', 'draw_local_window', 'text_strip',
           'compose', 'contact_sheet', 'QUERY_COLOUR', 'ROUTED_COLOUR', 'POINT_COLOUR']

#: BGR outline of the query's region, of the routed regions, and the query point's marker
QUERY_COLOUR = (255, 255, 0)
ROUTED_COLOUR = (0, 215, 255)
POINT_COLOUR = (0, 0, 255)


def _colormap(values: np.ndarray, name: str = 'inferno') -> np.ndarray:
    """(...,) floats in [0, 1] -> (..., 3) BGR float in [0, 255]."""
    import matplotlib
    rgba = matplotlib.colormaps[name](np.clip(values, 0, 1))
    return rgba[..., 2::-1] * 255.0


def _stretch(values: Any, where: np.ndarray | None = None) -> np.ndarray:
    """Min-max scaling to [0, 1] over the entries selected by ``where`` (all by default); 0 elsewhere."""
    # why: attention over a few hundred tokens is near uniform in absolute terms, so show it relative to its range
    values = np.asarray(values, np.float64)
    where = np.ones(values.shape, bool) if where is None else where
    if not where.any():
        return np.zeros_like(values)
    lo, hi = values[where].min(), values[where].max()
    out = (values - lo) / (hi - lo) if hi > lo else np.ones_like(values)
    return np.where(where, out, 0.0)


def _upsample(grid: Any, cell: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Repeat every cell of a 2-D grid ``cell=(ch, cw)`` pixels, cropped/zero-filled to ``out_hw``."""
    up = np.repeat(np.repeat(np.asarray(grid), cell[0], 0), cell[1], 1)
    out = np.zeros(out_hw, up.dtype)
    h, w = min(out_hw[0], up.shape[0]), min(out_hw[1], up.shape[1])
    out[:h, :w] = up[:h, :w]
    return out


def _outline(canvas: np.ndarray, box: tuple[int, int, int, int], colour: tuple[int, int, int], width: int) -> None:
    x0, y0, x1, y1 = box
    width = max(1, min(width, (x1 - x0) // 2, (y1 - y0) // 2))
    canvas[y0:y0 + width, x0:x1] = colour
    canvas[y1 - width:y1, x0:x1] = colour
    canvas[y0:y1, x0:x0 + width] = colour
    canvas[y0:y1, x1 - width:x1] = colour


def _mark(canvas: np.ndarray, point: tuple[int, int], colour: tuple[int, int, int] = POINT_COLOUR, size: int = 5,
          clip: tuple[int, int, int, int] | None = None) -> None:
    """A plus sign at ``point`` (x, y), limited to ``clip`` (x0, y0, x1, y1) when given."""
    hgt, wdt = canvas.shape[:2]
    x0, y0, x1, y1 = clip or (0, 0, wdt, hgt)
    x, y = point
    canvas[max(y - 1, y0):min(y + 2, y1), max(x - size, x0):min(x + size + 1, x1)] = colour
    canvas[max(y - size, y0):min(y + size + 1, y1), max(x - 1, x0):min(x + 2, x1)] = colour


def region_box(region: int, n_win: int, region_hw: tuple[int, int], stride: int,
               image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box ``(x0, y0, x1, y1)`` (half-open, clipped to the image) of BRA region ``region``.

    ``region_hw`` is the region size ``(rh, rw)`` in feature cells of ``stride`` pixels.
    """
    ry, rx = divmod(int(region), n_win)
    rh, rw = region_hw
    y0, x0 = ry * rh * stride, rx * rw * stride
    return (min(x0, image_hw[1]), min(y0, image_hw[0]), min(x0 + rw * stride, image_hw[1]),
            min(y0 + rh * stride, image_hw[0]))


def draw_routing(img: np.ndarray, attention: dict[str, Any], n_win: int, stride: int, point: tuple[int, int],
                 alpha: float = 0.65) -> np.ndarray:
    """The query's region (cyan), its routed regions (yellow, heat map min-max scaled over them), the query (red +).

    Every other pixel is the input's.

    Args:
        img: (H, W, 3) BGR uint8, the image the backbone saw.
        attention: :meth:`BiLevelRoutingAttention.explain` of the query.
        n_win: regions per side.
        stride: pixels per feature cell.
        point: the query pixel (x, y).
        alpha: heat-map opacity.
    """
    hgt, wdt = img.shape[:2]
    _, _, rh, rw = attention['layout']
    out = img.astype(np.float64)
    weights = attention['weights'].cpu().numpy()
    routed = np.zeros(weights.shape, bool)
    for r in attention['routed']:
        ry, rx = divmod(int(r), n_win)
        routed[ry * rh:(ry + 1) * rh, rx * rw:(rx + 1) * rw] = True
    heat = _colormap(_upsample(_stretch(weights, routed), (stride, stride), (hgt, wdt)))
    boxes = {r: region_box(r, n_win, (rh, rw), stride, (hgt, wdt)) for r in attention['routed']}
    for x0, y0, x1, y1 in boxes.values():
        out[y0:y1, x0:x1] = (1 - alpha) * out[y0:y1, x0:x1] + alpha * heat[y0:y1, x0:x1]
    out = out.round().clip(0, 255).astype(np.uint8)
    for box in boxes.values():
        _outline(out, box, ROUTED_COLOUR, 2)
    qbox = region_box(attention['region'], n_win, (rh, rw), stride, (hgt, wdt))
    _outline(out, qbox, QUERY_COLOUR, 3)
    _mark(out, point, clip=qbox)
    return out


def draw_association(img: np.ndarray, labels: np.ndarray, alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    """STViT super tokens: a colour per label blended over the image, label borders in white.

    ``labels`` (h, w) from :meth:`SuperTokenAttention.assignment` (-1: out-of-grid, black), nearest-neighbour
    upsampled; ``seed`` picks the colours.
    """
    import cv2
    import matplotlib
    hgt, wdt = img.shape[:2]
    up = cv2.resize(np.asarray(labels).astype(np.int32), (wdt, hgt), interpolation=cv2.INTER_NEAREST)
    n = int(up.max()) + 2
    hues = np.random.default_rng(seed).permutation(n) / n
    palette = matplotlib.colormaps['hsv'](hues)[:, 2::-1] * 255.0
    palette[0] = 0
    out = (1 - alpha) * img.astype(np.float64) + alpha * palette[up + 1]
    border = np.zeros((hgt, wdt), bool)
    border[:, 1:] |= up[:, 1:] != up[:, :-1]
    border[1:, :] |= up[1:, :] != up[:-1, :]
    out[border] = 255
    return out.round().clip(0, 255).astype(np.uint8)


def draw_heatmap(img: np.ndarray, weights: np.ndarray | torch.Tensor, cell_px: int, point: tuple[int, int],
                 alpha: float = 0.6) -> np.ndarray:
    """A (hk, wk) weight grid (min-max scaled), each cell ``cell_px`` pixels, blended over the whole image."""
    hgt, wdt = img.shape[:2]
    w = weights.cpu().numpy() if hasattr(weights, 'cpu') else np.asarray(weights)
    heat = _colormap(_upsample(_stretch(w), (cell_px, cell_px), (hgt, wdt)))
    out = ((1 - alpha) * img.astype(np.float64) + alpha * heat).round().clip(0, 255).astype(np.uint8)
    _mark(out, point)
    return out


def draw_local_window(img: np.ndarray, weights: np.ndarray | torch.Tensor, feat_yx: tuple[int, int], stride: int,
                      size: int | None = None, alpha: float = 0.6) -> np.ndarray:
    """AttnConv local weights (k, k) as a heat map on the query cell's window, zoomed to a ``size`` square.

    The crop is centred on the query cell and three windows wide; the window is outlined, the query cell in red.
    """
    import cv2
    hgt, wdt = img.shape[:2]
    size = size or hgt
    w = weights.cpu().numpy() if hasattr(weights, 'cpu') else np.asarray(weights)
    k = w.shape[0]
    fy, fx = feat_yx
    out = img.astype(np.float64)
    heat = _colormap(_stretch(w))
    r = k // 2
    for dy in range(k):
        for dx in range(k):
            y0, x0 = (fy + dy - r) * stride, (fx + dx - r) * stride
            ys, xs = slice(max(y0, 0), max(min(y0 + stride, hgt), 0)), slice(max(x0, 0), max(min(x0 + stride, wdt), 0))
            out[ys, xs] = (1 - alpha) * out[ys, xs] + alpha * heat[dy, dx]
    out = out.round().clip(0, 255).astype(np.uint8)
    half = max(3 * k * stride // 2, 16)
    cy, cx = fy * stride + stride // 2, fx * stride + stride // 2
    pad = np.pad(out, ((half, half), (half, half), (0, 0)))
    crop = pad[cy:cy + 2 * half, cx:cx + 2 * half]
    zoom = cv2.resize(crop, (size, size), interpolation=cv2.INTER_NEAREST)
    f = size / (2 * half)

    def box(y0: int, x0: int, n: int) -> tuple[int, int, int, int]:
        return (int((x0 - cx + half) * f), int((y0 - cy + half) * f), int((x0 + n * stride - cx + half) * f),
                int((y0 + n * stride - cy + half) * f))

    _outline(zoom, box((fy - r) * stride, (fx - r) * stride, k), ROUTED_COLOUR, 2)
    _outline(zoom, box(fy * stride, fx * stride, 1), POINT_COLOUR, 2)
    return zoom


def text_strip(lines: Sequence[str], width: int, line_px: int = 18, fontsize: float = 10,
               bg: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Lines of text rendered by matplotlib into a (len(lines) * line_px + 6, width, 3) BGR strip."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    height = len(lines) * line_px + 6
    # matplotlib takes an RGB array at run time; its stubs list tuples only
    fig = Figure(figsize=(width / 100, height / 100), dpi=100,
                 facecolor=np.array(bg[::-1]) / 255)  # type: ignore[arg-type]
    canvas = FigureCanvasAgg(fig)
    for i, line in enumerate(lines):
        fig.text(4 / width, 1 - (3 + (i + 0.5) * line_px) / height, line, fontsize=fontsize, va='center',
                 ha='left', family='DejaVu Sans')
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    return np.ascontiguousarray(rgb[:height, :width, ::-1])


def compose(panels: Sequence[np.ndarray], captions: Sequence[str], title_lines: Sequence[str], gap: int = 8,
            min_width: int = 720) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Panels side by side, each under its caption (split at newlines), under a title strip.

    Returns the BGR uint8 canvas and each panel's box ``(x0, y0, x1, y1)`` on it.
    """
    height = max(p.shape[0] for p in panels)
    width = max(min_width, sum(p.shape[1] for p in panels) + gap * (len(panels) + 1))  # room for the title
    title = text_strip(title_lines, width, fontsize=11)
    lines = [c.split('\n') for c in captions]
    cap_h = 16 * max(len(c) for c in lines) + 8
    canvas = np.full((title.shape[0] + cap_h + height + gap, width, 3), 255, np.uint8)
    canvas[:title.shape[0]] = title
    x, top = gap, title.shape[0] + cap_h
    boxes: list[tuple[int, int, int, int]] = []
    for panel, caption in zip(panels, lines):
        h, w = panel.shape[:2]
        strip = text_strip(caption, w, line_px=16, fontsize=9)
        canvas[top - 2 - strip.shape[0]:top - 2, x:x + w] = strip
        canvas[top:top + h, x:x + w] = panel
        boxes.append((x, top, x + w, top + h))
        x += w + gap
    return canvas, boxes


def contact_sheet(images: Sequence[np.ndarray], titles: Sequence[str], suptitle: str,
                  out_path: str | os.PathLike[str], dpi: int = 100) -> None:
    """BGR pictures stacked in one matplotlib figure saved to ``out_path``, as wide as the widest at ``dpi``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    width_in = max(img.shape[1] for img in images) / dpi + 0.4
    ratios = [img.shape[0] / img.shape[1] for img in images]
    fig = Figure(figsize=(width_in, width_in * sum(ratios) + 0.6 + 0.3 * len(images)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), 1, gridspec_kw=dict(height_ratios=ratios), squeeze=False)[:, 0]
    for ax, img, title in zip(axes, images, titles):
        ax.imshow(img[..., ::-1])
        ax.set_title(title, fontsize=10, loc='left')
        ax.axis('off')
    fig.suptitle(suptitle, fontsize=12)
    fig.tight_layout()
    fig.savefig(out_path)
