"""Key trajectories: filters, k-means++ medoids, and resampling onto the 100-frame timeline."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.keytracks import key_trajectories, medoid_tracks, resample_to_timeline, select_tracks
from pite.timeline import seconds_to_index


def _three_groups(T=20, per=30, seed=0):
    """Three groups of tracks moving right, down and diagonally, with small jitter."""
    rng = np.random.default_rng(seed)
    t = np.arange(T, dtype=np.float32)[:, None]
    xy = []
    for vx, vy, x0, y0 in ((2, 0, 10, 10), (0, 2, 60, 10), (1.5, 1.5, 10, 60)):
        base = np.stack([x0 + vx * t, y0 + vy * t], -1)  # (T, 1, 2)
        xy.append(base + rng.normal(0, 0.2, (T, per, 2)))
    return np.concatenate(xy, 1).astype(np.float32)  # (T, 3*per, 2)


def test_select_tracks_needs_first_frame_and_enough_visibility():
    visible = np.ones((10, 4), bool)
    visible[0, 1] = False  # not visible where grounded
    visible[2:, 2] = False  # visible only 20%
    inside = np.array([True, True, True, False])
    assert select_tracks(visible, inside, 0.5).tolist() == [0]


def test_medoids_are_one_per_motion_group_largest_first():
    xy = _three_groups()
    xy = np.concatenate([xy, xy[:, :10]], axis=1)  # group 0 is now the largest
    feats = xy.transpose(1, 0, 2).reshape(xy.shape[1], -1)
    medoids = medoid_tracks(feats, 3, seed=0)
    groups = [min(m, 89) // 30 if m < 90 else 0 for m in medoids]
    assert sorted(groups) == [0, 1, 2] and groups[0] == 0
    assert medoid_tracks(feats, 3, seed=0) == medoids  # seeded


def test_resample_writes_minus_one_outside_event_and_where_invisible():
    duration, start, end = 10.0, 2.0, 6.0
    times = np.linspace(start, end, 41)
    xy = np.stack([np.linspace(0, 99, 41), np.full(41, 50.0)], 1)
    visible = np.ones(41, bool)
    visible[20:25] = False  # around t = 4.0..4.4
    traj, vis = resample_to_timeline(xy, visible, times, start, end, duration, 100, 101)
    first, last = seconds_to_index(start, duration), seconds_to_index(end, duration)
    assert (first, last) == (20, 60)
    assert (traj[:first] == -1).all() and (traj[last + 1:] == -1).all() and not vis[:first].any()
    assert vis[first] and vis[last] and traj[first, 0] == pytest.approx(0.0) and traj[last, 0] == pytest.approx(1.0)
    assert not vis[40:45].any() and (traj[40:45] == -1).all()
    assert traj[30, 1] == pytest.approx(0.5)  # y = 50 / (101 - 1)
    assert ((traj[vis] >= 0) & (traj[vis] <= 1)).all()


def test_key_trajectories_follow_the_true_motion():
    T, duration = 21, 4.0
    xy = _three_groups(T=T)
    visible = np.ones(xy.shape[:2], bool)
    inside = np.zeros(xy.shape[1], bool)
    inside[30:60] = True  # the object is the group moving down
    times = np.linspace(0.0, 2.0, T)
    out = key_trajectories(xy, visible, inside, times, 0.0, 2.0, duration, 128, 128, num_trajectories=3)
    assert out is not None and out.num_tracks == 30
    assert out.trajectory.shape == (3, 100, 2) and out.trajectory.dtype == np.float16
    last = seconds_to_index(2.0, duration)
    for p in range(3):
        assert out.visibility[p, : last + 1].all() and not out.visibility[p, last + 1:].any()
        # moving down 2 px/frame: x stays near 60, y goes 10 -> 50 (normalised by 127)
        assert abs(float(out.trajectory[p, 0, 0]) - 60 / 127) < 0.02
        assert abs(float(out.trajectory[p, last, 1]) - 50 / 127) < 0.02


def test_no_surviving_track_gives_none():
    xy = _three_groups()
    visible = np.zeros(xy.shape[:2], bool)
    visible[0] = True  # visible on the first frame only
    inside = np.ones(xy.shape[1], bool)
    assert key_trajectories(xy, visible, inside, np.linspace(0, 1, xy.shape[0]), 0, 1, 2, 64, 64) is None
