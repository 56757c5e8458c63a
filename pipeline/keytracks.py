"""Condense an object's dense tracks into P key trajectories on the video's 100-frame timeline.

1. Keep the tracks that start inside the object's mask, are visible on the first frame,
   and stay visible for at least ``min_visible_frac`` of the event's frames.
2. Cluster them with k-means++ (fixed seed) into P groups; each group's *medoid* track
   (the member with the least total distance to the others) is a key trajectory. Groups
   are ordered by size, largest first.
3. Resample each key trajectory at the times of the video's global 100 frames that fall
   inside the event (the same indices as "From XX to YY"), normalise to [0, 1], and write
   (-1, -1) outside the event and where the point is not visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pite.schema import MISSING, NUM_FRAMES
from pite.timeline import frame_times, seconds_to_index


@dataclass
class KeyTrajectories:
    trajectory: np.ndarray  # float16 (P, 100, 2) normalised (x, y), -1 where absent
    visibility: np.ndarray  # bool (P, 100)
    num_tracks: int  # tracks that passed the filters


def select_tracks(visible: np.ndarray, inside: np.ndarray, min_visible_frac: float) -> np.ndarray:
    """Indices of tracks worth clustering.

    Args:
        visible: bool (T, N) visibility of each tracked point per event frame.
        inside: bool (N,) whether the point's first-frame position lies in the mask.
    Returns:
        int64 (K,) indices into N.
    """
    keep = inside & visible[0] & (visible.mean(axis=0) >= min_visible_frac)
    return np.flatnonzero(keep)


def _fill_invisible(xy: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(T, K, 2) positions with invisible frames replaced by the last (then next) visible one."""
    T = xy.shape[0]
    idx = np.where(visible, np.arange(T)[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)  # last visible frame at or before t (frame 0 is visible)
    return np.take_along_axis(xy, idx[..., None].repeat(2, axis=2), axis=0)


def medoid_tracks(feats: np.ndarray, num: int, seed: int) -> list[int]:
    """k-means++ clustering of ``feats`` (K, D) into ``min(num, K)`` groups; medoid index per group."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import pairwise_distances

    k = min(num, len(feats))
    if k == len(feats):
        return list(range(k))
    labels = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit_predict(feats)
    groups = sorted((np.flatnonzero(labels == c) for c in range(k)), key=lambda g: (-len(g), g[0]))
    medoids = []
    for members in groups:
        dist = pairwise_distances(feats[members]).sum(axis=1)
        medoids.append(int(members[np.argmin(dist)]))
    return medoids


def resample_to_timeline(xy: np.ndarray, visible: np.ndarray, times: np.ndarray, start_s: float, end_s: float,
                         duration_s: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Put one track onto the video's global 100-frame timeline.

    Args:
        xy: float (T, 2) pixel positions at ``times`` (T,) seconds; visible: bool (T,).
    Returns:
        (float32 (100, 2) normalised positions with -1 where absent, bool (100,) visibility)
    """
    out = np.full((NUM_FRAMES, 2), MISSING, dtype=np.float32)
    vis = np.zeros(NUM_FRAMES, dtype=bool)
    first, last = seconds_to_index(start_s, duration_s), seconds_to_index(end_s, duration_s)
    ks = np.arange(first, last + 1)
    t = np.clip(frame_times(duration_s)[ks], times[0], times[-1])
    x = np.interp(t, times, xy[:, 0]) / max(width - 1, 1)
    y = np.interp(t, times, xy[:, 1]) / max(height - 1, 1)
    # visible when the nearest decoded frames on both sides are visible
    right = np.clip(np.searchsorted(times, t, side="left"), 0, len(times) - 1)
    left = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 1)
    v = visible[left] & visible[right] & (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    out[ks[v], 0], out[ks[v], 1] = x[v], y[v]
    vis[ks[v]] = True
    return out, vis


def key_trajectories(track_xy: np.ndarray, track_visible: np.ndarray, inside: np.ndarray, times: np.ndarray,
                     start_s: float, end_s: float, duration_s: float, width: int, height: int,
                     num_trajectories: int = 3, min_visible_frac: float = 0.5, max_points: int = 4000,
                     seed: int = 0) -> KeyTrajectories | None:
    """Key trajectories of one object, or ``None`` when no track survives the filters.

    Args:
        track_xy: float (T, N, 2) pixel positions of the tracked points in the decoded frames.
        track_visible: bool (T, N).
        inside: bool (N,) points whose first-frame position lies inside the object's mask.
        times: float (T,) seconds of the decoded frames (times[0] = start of the event).
        width, height: size of the decoded frames, for normalisation.
    """
    keep = select_tracks(track_visible, inside, min_visible_frac)
    if len(keep) == 0:
        return None
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=max_points, replace=False))
    xy = _fill_invisible(track_xy[:, keep].astype(np.float32), track_visible[:, keep])
    scale = np.array([max(width, 1), max(height, 1)], dtype=np.float32)
    feats = (xy / scale).transpose(1, 0, 2).reshape(len(keep), -1)  # (K, T*2)
    chosen = medoid_tracks(feats, num_trajectories, seed)
    traj = np.full((num_trajectories, NUM_FRAMES, 2), MISSING, dtype=np.float32)
    vis = np.zeros((num_trajectories, NUM_FRAMES), dtype=bool)
    for p, j in enumerate(chosen):
        track = keep[j]
        traj[p], vis[p] = resample_to_timeline(track_xy[:, track], track_visible[:, track], times, start_s, end_s,
                                               duration_s, width, height)
    return KeyTrajectories(traj.astype(np.float16), vis, len(keep))
