"""``verify`` compares detections as sets: tied scores that reorder are not a difference, a moved box or a
changed label is, and an image with no detection on either side is reported as compared-nothing."""
import torch
from mmengine.structures import InstanceData

from mmsparse.deployment.runtime import _detection_row, match_detections, verify


def detections(boxes, labels, scores):
    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.tensor(labels),
                        scores=torch.tensor(scores))


REF = detections([[0, 0, 10, 10], [50, 50, 90, 80], [5, 5, 30, 40]], [1, 0, 1], [0.5, 0.5, 0.5])


def test_reordered_ties_match():
    order = [2, 0, 1]
    got = detections(REF.bboxes[order].tolist(), REF.labels[order].tolist(), REF.scores[order].tolist())
    pairs = match_detections(REF, got, box_tol=0.1)
    assert sorted(pairs) == [(0, 1), (1, 2), (2, 0)]
    row = _detection_row(REF, got, 0.1, 1e-3)
    assert row['ok'] and row['compared'] == 3 and row['box_err'] == 0.


def test_moved_box_and_changed_label_fail():
    moved = detections([[0, 0, 10, 10], [50, 50, 90, 80], [5, 5, 30, 45]], [1, 0, 1], [0.5, 0.5, 0.5])
    row = _detection_row(REF, moved, 1.0, 1e-3)
    assert not row['ok'] and row['compared'] == 2
    relabelled = detections(REF.bboxes.tolist(), [1, 2, 1], [0.5, 0.5, 0.5])
    row = _detection_row(REF, relabelled, 1.0, 1e-3)
    assert not row['ok'] and not row['labels_equal']


def test_nothing_to_compare_is_said(monkeypatch):
    from mmsparse.deployment import runtime

    class Graph:
        meta = dict(kind='single_stage', outputs=['cls_score0'])

    empty = detections(torch.zeros(0, 4).tolist(), [], [])
    rows = [dict(name='cls_score0', rel_err=0.), dict(name='detections[0]', **_detection_row(empty, empty, 1., 1e-3))]
    monkeypatch.setattr(runtime, 'compare', lambda *args, **kwargs: rows)
    monkeypatch.setattr(runtime, 'OnnxNetwork', Graph)
    lines = []
    rows = verify(None, Graph(), [(32, 32)], printer=lines.append)
    assert rows[1]['status'] == 'none'
    assert any('no detection from either to compare' in line for line in lines)
