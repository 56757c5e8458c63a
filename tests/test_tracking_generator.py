"""The procedural tracking benchmark: reproducible, and its ground truth agrees with its pixels."""

import numpy as np
import pytest

from bench.tracking import SPLITS, make_scene, make_video
from pipeline.tracking.flow import sample

FRAMES = 24  # short videos keep these tests fast; the motion model is the same at any length


@pytest.fixture(scope="module")
def easy():
    return make_video("easy", 1, num_queries=200, frames=FRAMES)


def test_same_seed_same_video():
    a = make_video("occlusion", 2, num_queries=32, frames=6)
    b = make_video("occlusion", 2, num_queries=32, frames=6)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.gt_xy, b.gt_xy)
    assert np.array_equal(a.gt_visible, b.gt_visible)
    other = make_video("occlusion", 2, seed=1, num_queries=32, frames=6)
    assert not np.array_equal(a.frames, other.frames)


def test_shapes_and_query_frame(easy):
    assert easy.frames.shape == (FRAMES, 256, 256, 3) and easy.frames.dtype == np.uint8
    assert easy.gt_xy.shape == (FRAMES, 200, 2) and easy.gt_visible.shape == (FRAMES, 200)
    assert np.array_equal(easy.gt_xy[0], easy.queries) and easy.gt_visible[0].all()
    assert (easy.query_layer > 0).mean() >= 0.45  # about half the queries lie on objects


def test_true_motion_lands_on_the_same_texture(easy):
    """A frame-0 point warped by the true motion shows the same colour in later frames (easy split:
    no lighting change, blur or noise), and far closer than an unrelated point would."""
    frames = easy.frames.astype(np.float32)
    reference = sample(frames[0], easy.queries)
    for t in (5, FRAMES - 1):
        vis = easy.gt_visible[t]
        diff = np.abs(sample(frames[t], easy.gt_xy[t]) - reference).mean(axis=1)[vis]
        shuffled = np.abs(sample(frames[t], easy.gt_xy[t][::-1]) - reference).mean(axis=1)[vis]
        assert np.median(diff) < 2.0 and np.percentile(diff, 90) < 8.0
        assert np.median(shuffled) > 10 * np.median(diff) + 10


def test_occlusion_flags_match_the_layer_order():
    """Visible ⇔ inside the frame and the query's own layer is the nearest one there."""
    video = make_video("occlusion", 0, num_queries=150, frames=FRAMES)
    scene = video.scene
    for t in range(0, FRAMES, 4):
        pos = video.gt_xy[t].astype(np.float64)
        inside = (pos[:, 0] >= 0) & (pos[:, 0] <= 255) & (pos[:, 1] >= 0) & (pos[:, 1] <= 255)
        on_top = scene.top_layer(float(t), pos) == video.query_layer
        assert np.array_equal(video.gt_visible[t], inside & on_top)


def test_splits_differ_in_difficulty():
    occlusion = make_video("occlusion", 3, num_queries=100)
    reappearing = (~occlusion.gt_visible).any(axis=0) & occlusion.gt_visible[-1]
    assert (~occlusion.gt_visible).mean() > 0.05 and reappearing.any()
    hard = make_scene("hard", 0)
    assert hard.effects.blur_exposure > 0 and hard.effects.gain_amp > 0 and hard.effects.noise_sigma > 0
    easy = make_scene("easy", 0)
    assert easy.effects.blur_exposure == 0 and easy.effects.gain_amp == 0
    assert SPLITS == ("easy", "occlusion", "hard")
    with pytest.raises(ValueError, match="unknown split"):
        make_scene("medium", 0)
