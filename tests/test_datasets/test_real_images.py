"""The real-image datasets (mmsparse/datasets/real.py): tiling and split logic on small hand-worked arrays, and
the conversion of the real wheels' images with the published counts (574 + 279 + 61 + 37 trees, 125 nuclei)."""
import json
import os.path as osp
import time

import numpy as np
import pytest

from mmsparse.datasets.real import (FetchError, best_split_column, convert_nuclei, convert_trees, fetch_wheel,
                                    instance_annotations, nuclei_image_to_bgr, read_voc_boxes, split_instances,
                                    tile_boxes, tile_starts)
from tests.conftest import REPO

#: the converter's own wheel cache (git-ignored): the download happens once per checkout
CACHE = osp.join(REPO, 'data', 'real', 'wheels')


def test_tile_starts_by_hand():
    assert tile_starts(1000, 400, 100) == [0, 300, 600]  # gaps of 300 = 400 - 100: three tiles suffice
    assert tile_starts(1001, 400, 100) == [0, 200, 400, 601]  # one pixel more needs a fourth, spread evenly
    assert tile_starts(400, 400, 100) == [0] and tile_starts(250, 400, 100) == [0]
    with pytest.raises(ValueError, match='min_overlap'):
        tile_starts(1000, 100, 100)


def test_tile_boxes_by_hand():
    # 10 x 10 image, 6-px tiles overlapping by 2: origins (0, 0), (4, 0), (0, 4), (4, 4)
    boxes = np.array([[1, 1, 3, 3],  # A: whole in tile (0, 0) only
                      [3, 1, 7, 3],  # B: wider than the overlap, cut by both top tiles, 6/8 visible in each: kept
                      [4.5, 4.5, 5.5, 5.5],  # C: in the overlap of all four tiles
                      [0, 5, 2, 9]])  # D: whole in (0, 4); 2/8 of it in (0, 0): dropped there
    tiles, counts = tile_boxes(boxes, 10, 10, tile=6, min_overlap=2, min_visible=0.5)
    assert [(x, y) for x, y, _ in tiles] == [(0, 0), (4, 0), (0, 4), (4, 4)]
    expected = [[[1, 1, 3, 3], [3, 1, 6, 3], [4.5, 4.5, 5.5, 5.5]],
                [[0, 1, 3, 3], [0.5, 4.5, 1.5, 5.5]],
                [[4.5, 0.5, 5.5, 1.5], [0, 1, 2, 5]],
                [[0.5, 0.5, 1.5, 1.5]]]
    for (_, _, got), want in zip(tiles, expected):
        np.testing.assert_array_equal(got, want)
    assert counts == dict(boxes=4, whole_in_a_tile=3, instances=8, clipped_kept=2, clipped_dropped=1, tiles=4)
    # a stricter threshold drops B's halves too
    assert tile_boxes(boxes, 10, 10, 6, 2, 0.8)[1]['clipped_dropped'] == 3


def test_boxes_no_larger_than_the_overlap_lie_whole_in_a_tile():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [950, 850], size=(300, 2))
    boxes = np.concatenate([xy, np.minimum(xy + rng.uniform(5, 50, size=(300, 2)), [1000, 900])], axis=1)
    _, counts = tile_boxes(boxes, 900, 1000, tile=128, min_overlap=50, min_visible=0.5)
    assert counts['whole_in_a_tile'] == 300
    # with less overlap than the boxes' size some of them are only ever cut
    assert tile_boxes(boxes, 900, 1000, tile=128, min_overlap=10, min_visible=0.5)[1]['whole_in_a_tile'] < 300


def test_split_instances_by_hand():
    labels = np.array([[1, 1, 2, 2, 3, 3]] * 4)
    assert split_instances(labels, 3) == ([1], [3], [2])
    assert split_instances(labels, 2) == ([1], [2, 3], [])
    assert best_split_column(labels, 1, 5) == 2  # columns 2 and 4 cut nothing; the leftmost wins
    assert best_split_column(labels, 3, 3) == 3
    with pytest.raises(ValueError, match='column must be inside'):
        split_instances(labels, 0)


def test_instance_annotations_by_hand():
    labels = np.zeros((5, 6), dtype=np.int64)
    labels[1:3, 2:5] = 5
    labels[4, 0] = 7
    anns = instance_annotations(labels, [5, 7], np.bincount(labels.ravel()))
    assert [a['bbox'] for a in anns] == [[2.0, 1.0, 3.0, 2.0], [0.0, 4.0, 1.0, 1.0]]
    assert [a['area'] for a in anns] == [6.0, 1.0]
    full = np.bincount(labels.ravel())
    full[5] += 1  # as if one pixel of instance 5 lay outside this crop
    with pytest.raises(AssertionError, match='instance 5: 6 of its 7 pixels'):
        instance_annotations(labels, [5], full)


def test_nuclei_image_scaling_and_voc_boxes():
    bgr = nuclei_image_to_bgr(np.array([[10, 20], [30, 10]], dtype=np.uint16))
    assert bgr.shape == (2, 2, 3) and bgr.dtype == np.uint8
    np.testing.assert_array_equal(bgr[..., 0], [[0, 128], [255, 0]])
    xml = ('<annotation><object><name>Tree</name><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>10</xmax>'
           '<ymax>12</ymax></bndbox></object></annotation>')
    np.testing.assert_array_equal(read_voc_boxes(xml), [[3, 4, 10, 12]])
    assert read_voc_boxes('<annotation/>').shape == (0, 4)


def test_unreachable_index_fails_in_one_line(tmp_path):
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_wheel('deepforest', '2.1.0', str(tmp_path), index_url='http://127.0.0.1:9/simple')
    message = str(info.value)
    assert '\n' not in message and 'deepforest==2.1.0' in message and 'reachable' in message
    assert time.monotonic() - start < 30


def _fetch_or_skip(dataset):
    from mmsparse.datasets.real import WHEELS
    package, version, _ = WHEELS[dataset]
    try:
        return fetch_wheel(package, version, CACHE)
    except FetchError as exc:
        pytest.skip(f'no wheel in {CACHE} and the index cannot be reached: {exc}')


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_trees_from_the_real_wheel(tmp_path):
    _fetch_or_skip('trees')
    counts = convert_trees(str(tmp_path), CACHE)
    # the wheel's own box counts (Pascal VOC files): 574 trees in the training crop, 279 + 61 + 37 for validation
    assert counts['boxes'] == 574 and counts['whole_in_a_tile'] == 574  # tiling loses no tree
    assert counts['val_boxes'] == 279 and counts['val_other_sites_boxes'] == 61 + 37
    # 2299 x 2472 with 400-px tiles overlapping by >= 110 px: 8 x 9 origins
    assert counts['tiles'] == 72
    train = _load(counts['files']['train'])
    assert len(train['images']) == 72 and len(train['annotations']) == counts['instances']
    assert counts['instances'] - counts['clipped_kept'] >= 574  # each tree whole at least once, plus clipped parts
    for ann in train['annotations']:
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and x + w <= 400 and y + h <= 400 and w > 0 and h > 0
    val, other = _load(counts['files']['val']), _load(counts['files']['val_other_sites'])
    assert [(i['width'], i['height']) for i in val['images']] == [(1249, 1035)]
    assert [(i['width'], i['height']) for i in other['images']] == [(400, 400), (400, 400)]
    assert len(val['annotations']) == 279 and len(other['annotations']) == 98
    ids = [a['id'] for d in (train, val, other) for a in d['annotations']]
    assert len(ids) == len(set(ids))
    assert all(osp.isfile(osp.join(str(tmp_path), i['file_name'])) for d in (train, val, other) for i in d['images'])


def test_nuclei_from_the_real_wheel(tmp_path):
    from pycocotools.coco import COCO
    _fetch_or_skip('nuclei')
    counts = convert_nuclei(str(tmp_path), CACHE)
    assert counts['nuclei'] == 125
    assert counts['train'] + counts['val'] + counts['crossing_dropped'] == 125
    assert 204 <= counts['column'] <= 307
    for split, width in (('train', counts['column']), ('val', 512 - counts['column'])):
        coco = COCO(counts['files'][split])
        assert [(i['width'], i['height']) for i in coco.dataset['images']] == [(width, 512)]
        assert len(coco.dataset['annotations']) == counts[split]
        masks = [coco.annToMask(a) for a in coco.dataset['annotations']]
        assert max(m.sum() for m in masks) > 0 and (np.sum(masks, axis=0) <= 1).all()  # instances do not overlap
