"""Motion layers: group frame-0 points whose chained trajectories follow one homography per frame.

:func:`find_layers` is a greedy multi-frame RANSAC over anchor trajectories (a sparse grid chained
with forward–backward checks, used only while the track is uninterrupted). A hypothesis grows from
a random seed anchor's frame-0 neighbourhood: fit one homography per keyframe, collect the anchors
whose trajectories it explains, refit on them, repeat. The best hypothesis becomes a layer, its
anchors leave the pool, and the search continues until few anchors remain.

:func:`assign_points` then gives every frame-0 point the layer that best explains its trajectory
(or, for points whose track breaks at once, the layer of the nearest labelled point).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.tracking.homography import apply_h, fit_h


RELATIVE_TOLERANCE = 0.1  # step residual tolerance grows by this fraction of the step's length
INLIER_SHARE = 0.8  # share of a trajectory's steps that must fit for it to join a layer
MIN_STEPS = 3  # trajectories with fewer uninterrupted steps are too ambiguous to shape a layer
CLIP = 3.0  # normalised residuals are clipped here when averaged (robust to a few broken steps)


def step_errors(models: np.ndarray, defined: np.ndarray, traj: np.ndarray, alive: np.ndarray,
                inlier_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised residuals of trajectories under one layer's keyframe-step models.

    A step's residual is divided by its tolerance ``inlier_px + RELATIVE_TOLERANCE · |step|`` (fast
    motion is tracked less precisely). Args: models (K−1, 3, 3), defined (K−1,), traj (K, P, 2),
    alive (K, P). Returns normalised residuals (K−1, P) and usable (K−1, P) (alive and defined).
    """
    gap = apply_h(models, traj[:-1]) - traj[1:]
    step = traj[1:] - traj[:-1]
    residual = np.sqrt(gap[..., 0] ** 2 + gap[..., 1] ** 2)
    tolerance = inlier_px + RELATIVE_TOLERANCE * np.sqrt(step[..., 0] ** 2 + step[..., 1] ** 2)
    return residual / tolerance, alive[1:] & defined[:, None]


def fit_summary(norm_res: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trajectory: mean clipped normalised residual (inf without evidence), share of fitting
    steps, and number of usable steps."""
    count = usable.sum(axis=0)
    clipped = np.where(usable, np.minimum(norm_res, CLIP), 0.0).sum(axis=0)
    fitting = np.where(usable, norm_res < 1.0, False).sum(axis=0)
    mean = np.where(count > 0, clipped / np.maximum(count, 1), np.inf)
    return mean, fitting / np.maximum(count, 1), count


def fit_step_models(traj: np.ndarray, alive: np.ndarray, size: tuple[int, int],
                    min_support: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """One homography per keyframe step k→k+1 from trajectories (K, P, 2) while alive (K, P) at k+1.

    Returns models (K−1, 3, 3) and defined bool (K−1,) (enough support).
    """
    h, w = size
    weight = alive[1:].astype(np.float64)
    models = fit_h(traj[:-1], traj[1:], weight, (w / 2.0, h / 2.0), max(h, w) / 2.0)
    return models, weight.sum(axis=1) >= min_support


def find_layers(
    traj: np.ndarray,
    alive: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    max_layers: int = 8,
    inlier_px: float = 0.4,
    seed_radius: float = 12.0,
    hypotheses: int = 8,
    min_fraction: float = 0.01,
    max_failures: int = 3,
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Greedy multi-frame RANSAC layering of anchor trajectories.

    Motion is compared step by step (keyframe k → k+1), so the slow drift of chained tracks does not
    break a layer apart. During the search an anchor fits a layer when at least 80 % of its steps
    are within ``inlier_px`` (+10 % of the step length) of the layer's motion — tight, so a slowly
    moving object is not swallowed by the background. Afterwards every anchor goes to the layer that
    explains it best and the layers are refitted (two rounds). The search stops after
    ``max_failures`` rounds in a row find no layer of at least ``min_fraction`` of the anchors.

    Args:
        traj: float (K, A, 2) chained anchor positions at keyframes (keyframe 0 = frame 0, the anchors);
        alive: bool (K, A) the track is uninterrupted at that keyframe; size: (h, w) of the frames.
    Returns:
        labels int (A,) (−1 = no layer) and per layer its step models (K−1, 3, 3) and defined (K−1,).
    """
    p0 = traj[0]
    num = len(p0)
    evidence = alive[1:].sum(axis=0)
    pool = evidence >= 1
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    min_size = max(6, int(min_fraction * num))
    failures = 0
    while len(layers) < max_layers and pool.sum() >= min_size and failures < max_failures:
        candidates = np.flatnonzero(pool & (evidence >= MIN_STEPS + 1))
        if len(candidates) == 0:
            break
        idx = np.flatnonzero(pool)
        sub_traj, sub_alive = traj[:, idx], alive[:, idx]
        best_inliers, best_model = None, None
        for seed in rng.choice(candidates, size=min(hypotheses, len(candidates)), replace=False):
            members = np.linalg.norm(sub_traj[0] - p0[seed], axis=1) < seed_radius
            inliers = members
            for _ in range(3):
                models, defined = fit_step_models(sub_traj[:, members], sub_alive[:, members], size)
                _, share, count = fit_summary(*step_errors(models, defined, sub_traj, sub_alive, inlier_px))
                inliers = (count >= MIN_STEPS) & (share >= INLIER_SHARE)
                if inliers.sum() < 4:
                    break
                members = inliers
            if best_inliers is None or inliers.sum() > best_inliers.sum():
                best_inliers, best_model = inliers, (models, defined)
        if best_inliers is None or best_inliers.sum() < min_size:
            failures += 1
            continue
        failures = 0
        pool[idx[best_inliers]] = False
        if _duplicate_of(best_model, layers, sub_traj[:, best_inliers], sub_alive[:, best_inliers], inlier_px) is None:
            layers.append(best_model)  # (a duplicate's anchors simply join that layer in _refine)
    if not layers:
        return np.full(num, -1, np.int64), layers
    return _refine(traj, alive, size, layers, inlier_px)


def _duplicate_of(model, layers, traj, alive, inlier_px) -> int | None:
    """Index of an existing layer whose step motion matches ``model`` on these trajectories to within
    ``inlier_px`` per step on average (e.g. a background fragment split off by tracking noise)."""
    models, defined = model
    for index, (other, other_defined) in enumerate(layers):
        both = alive[1:] & (defined & other_defined)[:, None]
        if both.sum() == 0:
            continue
        gap = np.linalg.norm(apply_h(models, traj[:-1]) - apply_h(other, traj[:-1]), axis=-1)
        if gap[both].mean() < inlier_px:
            return index
    return None


def _refine(traj, alive, size, layers, inlier_px, rounds: int = 2):
    """Reassign every anchor to its best layer and refit the layers on their well-fitting anchors."""
    labels = np.full(traj.shape[1], -1, np.int64)
    for _ in range(rounds + 1):
        errors = np.stack([fit_summary(*step_errors(m, d, traj, alive, inlier_px))[0] for m, d in layers])
        labels = np.where(np.isfinite(errors.min(axis=0)), errors.argmin(axis=0), -1)
        fitting = (errors.min(axis=0) < 1.0) & (alive[1:].sum(axis=0) >= MIN_STEPS)
        refit = []
        for k, (models, defined) in enumerate(layers):
            members = (labels == k) & fitting
            refit.append(fit_step_models(traj[:, members], alive[:, members], size) if members.sum() >= 4
                         else (models, defined))
        layers = refit
    return labels, layers


def assign_points(
    traj: np.ndarray,
    alive: np.ndarray,
    layers: list[tuple[np.ndarray, np.ndarray]],
    grid_shape: tuple[int, int],
    inlier_px: float = 0.4,
) -> np.ndarray:
    """Layer of every frame-0 grid point (row-major ``grid_shape``), by lowest mean normalised residual.

    Args:
        traj: (K, G, 2) chained positions of the grid at keyframes; alive: (K, G).
    Returns: int (G,) layer index; points with no uninterrupted step get the nearest labelled point's.
    """
    num = traj.shape[1]
    best = np.full(num, np.inf, np.float32)
    labels = np.full(num, -1, np.int64)
    for index, (models, defined) in enumerate(layers):
        mean, _, _ = fit_summary(*step_errors(models, defined, traj, alive, inlier_px))
        better = mean < best
        best[better] = mean[better]
        labels[better] = index
    return fill_nearest(labels, grid_shape)


def fill_nearest(labels: np.ndarray, grid_shape: tuple[int, int]) -> np.ndarray:
    """Replace −1 labels of a row-major grid by the label of the nearest labelled pixel."""
    image = labels.reshape(grid_shape)
    unknown = image < 0
    if not unknown.any() or unknown.all():
        return np.where(labels < 0, 0, labels)
    _, nearest = cv2.distanceTransformWithLabels(unknown.astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    known_idx = np.flatnonzero(~unknown.ravel())
    # DIST_LABEL_PIXEL numbers the zero (known) pixels 1.. in row-major scan order.
    lookup = np.concatenate([[0], image.ravel()[known_idx]])
    filled = lookup[nearest.ravel()]
    return np.where(labels < 0, filled, labels)
