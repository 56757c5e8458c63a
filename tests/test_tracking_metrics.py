"""TAP-Vid metrics (AJ, <δ_avg, OA) on hand-computed cases."""

import math

import numpy as np
import pytest

from pite.eval.tracking import average_metrics, tapvid_metrics


def _tracks(num_frames=3, num_points=2):
    gt = np.zeros((num_frames, num_points, 2), np.float32)
    gt[..., 0] = np.arange(num_points) * 50 + 10
    gt[..., 1] = np.arange(num_frames)[:, None] * 5 + 20
    return gt, np.ones((num_frames, num_points), bool)


def test_all_visible_perfect_prediction_scores_100():
    gt, vis = _tracks()
    m = tapvid_metrics(gt, vis, gt, vis)
    assert m["AJ"] == pytest.approx(100) and m["delta_avg"] == pytest.approx(100) and m["OA"] == pytest.approx(100)


def test_all_visible_offset_by_three_pixels():
    # 3 px off everywhere: within δ = 4, 8, 16 but not 1, 2 → <δ_avg = 3/5; Jaccard 0 for δ 1, 2
    # (every prediction is a false positive) and 1 for the rest → AJ = 3/5 as well.
    gt, vis = _tracks()
    pred = gt + np.array([3.0, 0.0], np.float32)
    m = tapvid_metrics(pred, vis, gt, vis)
    assert m["delta_avg"] == pytest.approx(60)
    assert m["AJ"] == pytest.approx(60)
    assert m["jaccard_1"] == 0 and m["jaccard_16"] == pytest.approx(100)
    assert m["OA"] == pytest.approx(100)


def test_all_occluded():
    gt, _ = _tracks()
    occluded = np.zeros(gt.shape[:2], bool)
    occluded[0] = True  # the query frame (never evaluated)
    both_occluded = tapvid_metrics(gt, occluded, gt, occluded)
    assert both_occluded["OA"] == pytest.approx(100)
    assert math.isnan(both_occluded["AJ"]) and math.isnan(both_occluded["delta_avg"])  # no visible ground truth
    said_visible = tapvid_metrics(gt, np.ones_like(occluded), gt, occluded)
    assert said_visible["OA"] == pytest.approx(0)
    assert said_visible["AJ"] == pytest.approx(0)  # 0 TP / (0 visible + 4 FP)


def test_half_right_prediction():
    # Two points, frames 1 and 2 evaluated (4 pairs). Point 0 exact, point 1 100 px off.
    gt, vis = _tracks()
    pred = gt.copy()
    pred[:, 1] += 100.0
    visible_claim = tapvid_metrics(pred, vis, gt, vis)
    assert visible_claim["delta_avg"] == pytest.approx(50)  # 2 of 4 within every δ
    assert visible_claim["AJ"] == pytest.approx(100 * 2 / 6)  # TP 2 / (4 visible + 2 FP)
    assert visible_claim["OA"] == pytest.approx(100)
    pred_vis = vis.copy()
    pred_vis[1:, 1] = False  # the wrong point is reported occluded instead
    occluded_claim = tapvid_metrics(pred, pred_vis, gt, vis)
    assert occluded_claim["delta_avg"] == pytest.approx(50)  # ignores predicted occlusion
    assert occluded_claim["AJ"] == pytest.approx(50)  # TP 2 / (4 visible + 0 FP)
    assert occluded_claim["OA"] == pytest.approx(50)


def test_query_frame_is_not_evaluated_and_threshold_is_strict():
    gt, vis = _tracks()
    pred = gt.copy()
    pred[0] += 50.0  # frame 0 is the query frame: ignored
    pred[1:] += np.array([1.0, 0.0], np.float32)  # exactly 1 px: not within δ = 1 (strict), within δ = 2
    m = tapvid_metrics(pred, vis, gt, vis)
    assert m["delta_1"] == 0 and m["delta_2"] == pytest.approx(100)
    assert m["delta_avg"] == pytest.approx(80)


def test_coordinates_are_rescaled_to_256():
    gt, vis = _tracks()
    pred = gt + np.array([1.5, 0.0], np.float32)  # 1.5 px in a 128-px frame = 3 px at 256
    m = tapvid_metrics(pred, vis, gt, vis, frame_size=(128, 128))
    assert m["delta_2"] == 0 and m["delta_4"] == pytest.approx(100)


def test_per_point_query_frames():
    gt, vis = _tracks()
    pred = gt.copy()
    pred[1, 1] += 40.0  # wrong on frame 1, but point 1 is queried on frame 1
    m = tapvid_metrics(pred, vis, gt, vis, query_frames=np.array([0, 1]))
    assert m["delta_avg"] == pytest.approx(100)


def test_average_skips_nan_videos():
    out = average_metrics([{"AJ": 50.0, "delta_avg": float("nan"), "OA": 80.0},
                           {"AJ": 70.0, "delta_avg": 60.0, "OA": 90.0}])
    assert out == {"AJ": pytest.approx(60), "delta_avg": pytest.approx(60), "OA": pytest.approx(85)}


def test_shape_errors_are_explained():
    gt, vis = _tracks()
    with pytest.raises(ValueError, match="T, N, 2"):
        tapvid_metrics(gt[..., 0], vis, gt, vis)
