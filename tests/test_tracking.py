"""Dense trackers: synthetic motion, occlusion flags, the interface, and a floor for the default."""

import pickle

import cv2
import numpy as np
import pytest

from bench.tracking import make_video
from pipeline.tracking import TRACKERS, TrackerSettings, Tracks, grid_queries, make_tracker, work_size
from pite.eval.tracking import tapvid_metrics

SPEED = np.array([1.0, 0.5])  # px / frame of the square
SQUARE_AT = np.array([60.0, 80.0])  # top-left corner on frame 0
SIDE = 60
BAR = 30  # height of the occluding bar ...
BAR_RIGHT = 120  # ... which covers columns [0, BAR_RIGHT)


def _texture(rng, h, w):
    noise = cv2.resize(rng.random((h // 4, w // 4, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(cv2.GaussianBlur(noise * 255, (0, 0), 1.0), 0, 255).astype(np.float32)


def make_square_video():
    """51 frames (50 steps): a textured square translating at SPEED over a textured background; a
    textured bar sweeps down over the square's left part."""
    rng = np.random.default_rng(0)
    background, square, bar = _texture(rng, 256, 256), _texture(rng, SIDE, SIDE), _texture(rng, BAR, 256)
    frames = []
    for t in range(51):
        frame = background.copy()
        shift = SQUARE_AT + SPEED * t
        warp = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
        layer = cv2.warpAffine(square, warp, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        mask = cv2.warpAffine(np.ones((SIDE, SIDE), np.float32), warp, (256, 256)) > 0.5
        frame[mask] = layer[mask]
        top = _bar_top(t)
        rows = slice(max(top, 0), min(top + BAR, 256))
        if rows.start < rows.stop:
            frame[rows, :BAR_RIGHT] = bar[rows.start - top : rows.stop - top, :BAR_RIGHT]
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module")
def square_video():
    return make_square_video()


def _square_queries():
    ys, xs = np.mgrid[10:SIDE - 10:6, 10:SIDE - 10:6]
    return (np.stack([xs.ravel(), ys.ravel()], axis=1) + SQUARE_AT).astype(np.float32)


def _bar_top(t):
    return -60 + 5 * t  # the bar sweeps down over the square's left part during frames ~24-45


def _covered_by_bar(xy, t, margin=0.0):
    top = _bar_top(t)
    return (xy[:, 0] < BAR_RIGHT - margin) & (xy[:, 1] >= top + margin) & (xy[:, 1] < top + BAR - margin)


@pytest.mark.parametrize("backend", ["dis_chain", "dis_layers"])
def test_translating_square_is_tracked_and_occlusion_flagged(square_video, backend):
    queries = _square_queries()
    tracks = make_tracker(TrackerSettings(backend=backend)).track(square_video, queries)
    truth = queries + SPEED * 50
    never_covered = ~np.any([_covered_by_bar(queries + SPEED * t, t) for t in range(51)], axis=0)
    error = np.linalg.norm(tracks.xy[-1] - truth, axis=1)[never_covered]
    covered = np.array([_covered_by_bar(queries + SPEED * t, t, margin=3.0) for t in range(51)])  # (T, N)
    flagged = (covered & ~tracks.visible).any(axis=0)[covered.any(axis=0)]  # occluded while under the bar
    assert never_covered.sum() > 10 and covered.any(axis=0).sum() > 10
    if backend == "dis_layers":  # the default: no drift, every occlusion seen
        assert error.max() < 2.0 and flagged.mean() > 0.9
    else:  # chained DIS drifts near the square's edges and misses occlusions the bar drags along
        assert np.median(error) < 3.0 and flagged.mean() >= 0.4


def test_long_range_tracker_recovers_after_occlusion(square_video):
    queries = _square_queries()
    tracks = make_tracker(TrackerSettings(backend="dis_layers")).track(square_video, queries)
    was_covered = np.any([_covered_by_bar(queries + SPEED * t, t) for t in range(51)], axis=0)
    assert was_covered.sum() > 10
    error = np.linalg.norm(tracks.xy[-1] - (queries + SPEED * 50), axis=1)[was_covered]
    assert np.median(error) < 2.0 and tracks.visible[-1][was_covered].mean() > 0.8


def test_dense_queries_and_coordinate_mapping():
    """A static 384x512 video tracked at a 128-px short side: every work pixel, mapped back exactly."""
    rng = np.random.default_rng(1)
    frame = _texture(rng, 384, 512).astype(np.uint8)
    frames = np.stack([frame] * 4)
    settings = TrackerSettings(backend="dis_chain", short_side=128)
    tracks = make_tracker(settings).track(frames)
    grid = grid_queries(384, 512, 128)
    assert work_size(384, 512, 128) == (128, 171) and grid.shape == (128 * 171, 2)
    assert tracks.xy.shape == (4, len(grid), 2) and tracks.visible.shape == (4, len(grid))
    assert np.abs(tracks.xy[0] - grid).max() < 1e-4
    assert np.median(np.abs(tracks.xy[-1] - grid)) < 0.1  # nothing moves
    assert grid[:, 0].min() > 0 and grid[:, 0].max() < 511 and grid[1, 0] - grid[0, 0] == pytest.approx(512 / 171)


def test_default_tracker_floor_on_a_fixed_easy_video():
    video = make_video("easy", 0, num_queries=96, frames=40)
    settings = TrackerSettings()
    assert settings.backend == "dis_layers"
    tracks = make_tracker(settings).track(video.frames, video.queries)
    assert isinstance(tracks, Tracks) and tracks.xy.dtype == np.float32
    metrics = tapvid_metrics(tracks.xy, tracks.visible, video.gt_xy, video.gt_visible)
    assert metrics["AJ"] > 70 and metrics["OA"] > 85


def test_registry_and_settings():
    assert set(TRACKERS) == {"dis_chain", "dis_layers", "raft"}
    settings = pickle.loads(pickle.dumps(TrackerSettings(backend="dis_chain", fb_threshold=2.0)))
    assert settings.fb_threshold == 2.0
    with pytest.raises(ValueError, match="unknown tracker backend"):
        make_tracker(TrackerSettings(backend="cotracker"))
    with pytest.raises(ValueError, match="uint8"):
        make_tracker(TrackerSettings(backend="dis_chain")).track(np.zeros((2, 8, 8, 3), np.float32))


def test_raft_needs_local_weights_and_runs_with_them(tmp_path):
    torch = pytest.importorskip("torch")
    from pipeline.tracking.raft import load_raft

    frames = np.random.default_rng(2).integers(0, 255, (2, 40, 48, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="raft_weights"):
        make_tracker(TrackerSettings(backend="raft")).track(frames)
    path = tmp_path / "raft_small.pth"
    torch.save(load_raft(TrackerSettings(), random_weights=True).state_dict(), path)
    torch.set_num_threads(1)
    tracks = make_tracker(TrackerSettings(backend="raft", raft_weights=str(path), raft_iters=2)).track(frames)
    assert tracks.xy.shape == (2, 40 * 48, 2) and np.isfinite(tracks.xy).all()
