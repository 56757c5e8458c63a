"""`pite view`: the static site, its fallback overlay videos, `--serve`, and the pages in headless
Chromium (Debian's `chromium`; the browser tests fail with an install hint when it is missing).

The test run has three videos with known trajectories on a 3 s, 64x48 clip: ``diag`` (H.264,
plays), ``mpeg4`` (MPEG-4 Part 2, which Chromium cannot play: the page falls back to the
pre-rendered overlay) and ``gone`` (no file: overlays over a blank frame), plus ``xss`` whose
caption and id carry HTML, one failed video and one dropped event. Screenshots go to
``$PITE_ARTIFACTS/viewer`` (default ``artifacts/viewer`` in the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from chromium import BrowserError, Chromium, find_chromium  # tests/chromium.py: tests/ is on sys.path under pytest
from pite.masks import decode_mask, encode_mask
from pite.schema import MISSING, Event, Failure, Phrase, VideoRecord, write_failures, write_shard
from pite.timeline import NUM_FRAMES, seconds_to_index
from pite.viewer import add_view_command
from pite.viewer.render import PALETTE, render_overlay_video
from pite.viewer.serve import make_server
from pite.viewer.site import (
    SiteError,
    SiteSettings,
    build_site,
    json_for_html,
    load_stats,
    mask_rings,
    video_slug,
)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("PITE_ARTIFACTS", REPO / "artifacts")) / "viewer"
DURATION, WIDTH, HEIGHT, FPS = 3.0, 160, 120, 25
FIRST, LAST = 0, seconds_to_index(2.0, DURATION)  # event 0 covers timeline frames 0..67
PROBE_TIME = 1.5  # timeline frame 50
PROBE = seconds_to_index(PROBE_TIME, DURATION)
XSS_CAPTION = 'a cat </script><script>window.__pwned = 1</script><!-- <img src=x onerror="window.__pwned=2"> sits.'
XSS_ID = "xss<script>window.__pwned=3</script>"
RED, GREEN = PALETTE[0], PALETTE[1]

# --- the test run --------------------------------------------------------------------------------


def write_clip(path: Path, codec: str) -> Path:
    """A 3 s clip of a red ball along the diagonal and a green cube along the anti-diagonal (the
    paths of ``diag_events``) over a grey ramp, written with PyAV."""
    import av
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.broadcast_to((np.arange(WIDTH)[None, :] * 160 // WIDTH + 60).astype(np.uint8), (HEIGHT, WIDTH))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for t in range(int(DURATION * FPS)):
            image = np.repeat(ramp[..., None], 3, axis=2).copy()
            frame = min(seconds_to_index(t / FPS, DURATION), LAST)
            (bx, by), (cx, cy) = diag_point(frame), anti_point(frame)
            cv2.circle(image, (round(bx * WIDTH), round(by * HEIGHT)), 9, (200, 30, 30), -1, cv2.LINE_AA)
            cv2.rectangle(image, (round(cx * WIDTH) - 7, round(cy * HEIGHT) - 7),
                          (round(cx * WIDTH) + 7, round(cy * HEIGHT) + 7), (30, 160, 40), -1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def line(p0: tuple[float, float], p1: tuple[float, float], first: int, last: int) -> np.ndarray:
    """(100, 2) points moving linearly from p0 at ``first`` to p1 at ``last``, -1 elsewhere."""
    points = np.full((NUM_FRAMES, 2), MISSING, np.float32)
    s = (np.arange(first, last + 1) - first) / max(last - first, 1)
    points[first:last + 1] = np.asarray(p0) + s[:, None] * (np.asarray(p1) - np.asarray(p0))
    return points


def phrase(caption: str, text: str, tracks: list[np.ndarray], mask_box: tuple[int, int, int, int],
           hidden: tuple[int, int] | None = None) -> Phrase:
    """A phrase whose mask (on a 24x32 decode, half the video size) fills ``mask_box`` rows/cols
    (r0, r1, c0, c1); ``hidden`` makes trajectory 1 invisible on those frames (inclusive)."""
    trajectory = np.stack(tracks).astype(np.float16)
    if hidden:
        trajectory[1, hidden[0]:hidden[1] + 1] = MISSING
    mask = np.zeros((24, 32), bool)
    r0, r1, c0, c1 = mask_box
    mask[r0:r1, c0:c1] = True
    start = caption.index(text)
    box = (c0 / 32, r0 / 24, c1 / 32, r1 / 24)
    return Phrase(text, start, start + len(text), box, encode_mask(mask), 0.9, trajectory,
                  (trajectory != MISSING).all(axis=-1))


def diag_events() -> list[Event]:
    """Event 0 (0-2 s): "a red ball" moves along the diagonal (trajectory 0), a horizontal line at
    y = 0.8 (trajectory 1, invisible on frames 40-60) and a vertical line at x = 0.8; "a small cube"
    along the anti-diagonal. Event 1 (2-3 s): "the ball"."""
    c0 = "a red ball rolls past a small cube."
    ball_tracks = [line((0.1, 0.1), (0.9, 0.9), FIRST, LAST), line((0.1, 0.8), (0.9, 0.8), FIRST, LAST),
                   line((0.8, 0.1), (0.8, 0.9), FIRST, LAST)]
    cube_tracks = [line((0.9, 0.1), (0.1, 0.9), FIRST, LAST), line((0.6, 0.2), (0.6, 0.2), FIRST, LAST),
                   line((0.4, 0.2), (0.4, 0.2), FIRST, LAST)]
    ball = phrase(c0, "a red ball", ball_tracks, (14, 19, 2, 7), hidden=(40, 60))
    cube = phrase(c0, "a small cube", cube_tracks, (2, 6, 20, 26))
    c1 = "the ball stops."
    first1 = seconds_to_index(2.0, DURATION)
    stop = phrase(c1, "the ball", [line((0.9, 0.9), (0.9, 0.9), first1, NUM_FRAMES - 1)] * 3, (18, 22, 26, 30))
    return [Event(0.0, 2.0, c0, [ball, cube]), Event(2.0, DURATION, c1, [stop])]


def record(video_id: str, path: str, events: list[Event] | None = None) -> VideoRecord:
    return VideoRecord(video_id, path, DURATION, float(FPS), WIDTH, HEIGHT, diag_events() if events is None else events)


def xss_record() -> VideoRecord:
    cat = phrase(XSS_CAPTION, "a cat", [line((0.5, 0.5), (0.5, 0.5), 0, 99)] * 3, (4, 8, 4, 8))
    script = phrase(XSS_CAPTION, "<script>", [line((0.2, 0.5), (0.3, 0.5), 0, 99)] * 3, (4, 8, 10, 14))
    return record(XSS_ID, "videos/xss.mp4", [Event(0.0, DURATION, XSS_CAPTION, [cat, script])])


STATS = {"totals": {"videos_input": 5, "videos_written": 4, "videos_failed": 1},
         "failures": {"decode/missing_file": 1, "keytracks/too_few_visible": 1},
         "steps": {"decode": {"seconds": 0.5, "counts": {"videos": 5}, "drops": {"missing_file": 1}},
                   "nounphrases": {"seconds": 2.0, "counts": {"phrases_out": 9}, "drops": {"pronoun": 3}},
                   "keytracks": {"seconds": 1.25, "counts": {"trajectories": 9}, "drops": {"too_few_visible": 1}}}}
REASONS = {"nounphrases/pronoun": 3, "decode/missing_file": 1, "keytracks/too_few_visible": 1}


def make_run(root: Path) -> Path:
    """``root/run`` with shards, failures and stats.json; videos under ``root/videos``."""
    write_clip(root / "videos" / "diag.mp4", "libx264")
    write_clip(root / "videos" / "mpeg4.mp4", "mpeg4")
    run = root / "run"
    records = [record("diag", "videos/diag.mp4"), record("mpeg4", "videos/mpeg4.mp4"),
               record("gone", "videos/gone.mp4"), xss_record()]
    write_shard(records[:2], run / "shards" / "shard-00000.parquet")
    write_shard(records[2:], run / "shards" / "shard-00001.parquet")
    write_failures([Failure("missing_clip", -1, "decode", "missing_file", "<b>no such file</b> missing_clip.mp4"),
                    Failure("diag", 2, "keytracks", "too_few_visible", "event 2: 12% of points visible")],
                   run / "failures" / "shard-00000.parquet")
    (run / "stats.json").write_text(json.dumps(STATS))
    return run


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("viewer")
    run = make_run(root)
    summary = build_site(run, root / "site", SiteSettings())  # the video root is found next to the run
    assert summary.video_root == root and summary.pages == 4 and summary.failed_videos == 1
    assert summary.fallbacks == 2 and sorted(summary.missing_videos) == sorted(["gone", XSS_ID])
    return root / "site"


@pytest.fixture(scope="module")
def big_site(tmp_path_factory) -> Path:
    """A 200-video run without video files, for the index load time."""
    root = tmp_path_factory.mktemp("viewer-big")
    records = []
    for i in range(200):
        caption = f"clip {i}: a dog number {i} chases a ball."
        dog = phrase(caption, f"a dog number {i}", [line((0.1, 0.2), (0.8, 0.6), 0, 99)] * 3, (2, 8, 2, 8))
        duration = 5.0 + i % 17
        records.append(VideoRecord(f"video_{i:03d}", f"videos/video_{i:03d}.mp4", duration, 25.0, 64, 48,
                                   [Event(0.0, duration, caption, [dog])] * (1 + i % 3)))
    write_shard(records, root / "run" / "shards" / "shard-00000.parquet")
    build_site(root / "run" / "shards", root / "site", SiteSettings(fallback="none"))
    return root / "site"


@pytest.fixture(scope="module")
def browser():
    try:
        executable = find_chromium()
    except BrowserError as error:
        pytest.fail(str(error), pytrace=False)
    with Chromium(executable) as chromium:
        chromium.set_viewport(1280, 900)
        yield chromium


def open_page(browser: Chromium, path: Path) -> float:
    seconds = browser.navigate(path.resolve().as_uri())
    browser.wait_for("document.body.getAttribute('data-ready') === '1' || !!window.piteViewer")
    return seconds


def video_page(site: Path, video_id: str) -> Path:
    return site / "videos" / f"{video_slug(video_id)}.html"


def pixel(browser: Chromium, x: float, y: float) -> list[int]:
    """RGBA of the overlay canvas at normalised (x, y)."""
    return browser.evaluate(
        "(() => { const c = document.getElementById('overlay');"
        f" return Array.from(c.getContext('2d').getImageData(Math.floor({x} * c.width), Math.floor({y} * c.height),"
        " 1, 1).data); })()"
    )


def diag_point(frame: int) -> tuple[float, float]:
    s = (frame - FIRST) / (LAST - FIRST)
    return 0.1 + 0.8 * s, 0.1 + 0.8 * s


def anti_point(frame: int) -> tuple[float, float]:
    s = (frame - FIRST) / (LAST - FIRST)
    return 0.9 - 0.8 * s, 0.1 + 0.8 * s


def is_color(rgba: list[int], hex_color: str, min_alpha: int = 150) -> bool:
    want = [int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]
    return rgba[3] >= min_alpha and all(abs(a - b) <= 40 for a, b in zip(rgba[:3], want))


# --- Python side -------------------------------------------------------------------------------


def test_missing_chromium_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PITE_CHROMIUM", str(tmp_path / "no-such-chromium"))
    with pytest.raises(BrowserError, match="apt-get install -y chromium"):
        find_chromium()


def test_json_for_html_cannot_close_the_script_block():
    text = json_for_html({"caption": "</script><!-- <b>&amp;", "line": "a\u2028b"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"caption": "</script><!-- <b>&amp;", "line": "a\u2028b"}


def test_stats_are_summed_from_shard_files_without_stats_json(tmp_path):
    for k, n in enumerate((2, 3)):
        part = {"totals": {"videos_written": n, "manifest_rows_rejected": 0}, "failures": {"decode/missing_file": 1},
                "steps": {"decode": {"seconds": 0.5, "counts": {"videos": n}, "drops": {"missing_file": 1}}}}
        (tmp_path / "stats").mkdir(exist_ok=True)
        (tmp_path / "stats" / f"shard-{k:05d}.json").write_text(json.dumps(part))
    stats = load_stats(tmp_path)
    assert stats["totals"] == {"videos_written": 5, "manifest_rows_rejected": 0}
    assert stats["failures"] == {"decode/missing_file": 2}
    assert stats["steps"]["decode"] == {"seconds": 1.0, "counts": {"videos": 5}, "drops": {"missing_file": 2}}


def test_mask_rings_trace_the_mask():
    import cv2

    mask = np.zeros((24, 32), bool)
    mask[4:20, 6:26] = True
    mask[9:14, 12:18] = False  # a hole
    rings = mask_rings(encode_mask(mask))
    canvas = np.zeros((240, 320), np.uint8)
    polygons = [np.round(np.asarray(r).reshape(-1, 2) * [320, 240]).astype(np.int32) for r in rings]
    for polygon in polygons:  # even-odd fill
        layer = np.zeros_like(canvas)
        cv2.fillPoly(layer, [polygon], 1)
        canvas ^= layer
    truth = cv2.resize(decode_mask(encode_mask(mask)).astype(np.uint8), (320, 240), interpolation=cv2.INTER_NEAREST)
    iou = (canvas & truth).sum() / (canvas | truth).sum()
    assert len(rings) == 2 and iou > 0.85


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_overlay_video_draws_on_the_timeline_frames(tmp_path, fmt):
    import av

    from pite.viewer.render import decode_timeline_frames

    source = write_clip(tmp_path / "clip.mp4", "libx264")
    out = render_overlay_video(source, record("diag", "clip.mp4"), tmp_path / f"overlay.{fmt}", fmt=fmt)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        seconds = container.duration / av.time_base if container.duration else None
    assert len(frames) == NUM_FRAMES and frames[0].shape == (240, 320, 3), "scaled up to 320 px wide"
    assert seconds is None or abs(seconds - DURATION) < 0.1
    plain = decode_timeline_frames(source, DURATION, (320, 240))[PROBE].astype(int)
    x, y = 0.8, diag_point(PROBE)[1]  # trajectory 2 of the ball: no object of the clip is there
    at = (int(y * 239), int(x * 319))
    r, g, _ = frames[PROBE][at].astype(int)
    assert r - g > 50 and abs(plain[at][0] - plain[at][1]) < 20, "the current point is drawn in the ball's colour"


def test_site_layout_index_data_and_rebuild(site, tmp_path):
    index = (site / "index.html").read_text()
    data = json.loads(index.split('id="pite-index">', 1)[1].split("</script>", 1)[0])
    ids = {row["id"]: row for row in data["videos"]}
    assert set(ids) == {"diag", "mpeg4", "gone", XSS_ID, "missing_clip"}
    assert ids["missing_clip"]["status"] == "failed" and ids["missing_clip"]["page"] is None
    assert ids["diag"]["reasons"] == ["too_few_visible"] and ids["diag"]["phrases"] == 3
    assert {bar["label"]: bar["count"] for bar in data["reasons"]} == REASONS  # a drop repeating a failure: once
    assert [bar["kind"] for bar in data["reasons"]] == ["drop", "failure", "failure"]
    for video_id in ("diag", "mpeg4", "gone", XSS_ID):
        assert (site / ids[video_id]["page"]).is_file()
    media = sorted(p.name for p in (site / "media").iterdir() if not p.name.startswith("."))
    slug = video_slug("diag")
    assert f"{slug}.mp4" in media and f"{slug}.overlay.mp4" in media and len(media) == 4
    # Raw HTML: the caption's markup never appears unescaped anywhere.
    for page in [site / "index.html", *(site / "videos").iterdir()]:
        assert "<script>window.__pwned" not in page.read_text() and "<img src=x" not in page.read_text()
    # A second build into the same folder reuses it; a foreign non-empty folder is refused.
    run = site.parent / "run"
    again = build_site(run, site, SiteSettings(copy_videos=False, fallback="none"))
    assert again.pages == 4 and (site / "media" / f"{slug}.mp4").is_symlink()
    assert not (site / "media" / f"{slug}.overlay.mp4").exists()
    build_site(run, site, SiteSettings())  # back to the copied site for the browser tests
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(SiteError, match="not a viewer site"):
        build_site(run, tmp_path / "foreign")


def test_view_command_line(site, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_view_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli-site"
    args = parser.parse_args(["view", "--shards", str(site.parent / "run" / "shards"), "--out", str(out),
                              "--video-root", str(site.parent), "--link-videos", "--fallback", "none", "--limit", "2"])
    assert args.func(args) == 0
    assert "wrote 2 video pages" in capsys.readouterr().out
    assert len(list((out / "videos").glob("*.html"))) == 2


def test_serve_answers_range_requests(site):
    server = make_server(site, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(f"{base}/index.html") as reply:
            assert reply.status == 200 and b"pite-index" in reply.read()
        video = f"{base}/media/{video_slug('diag')}.mp4"
        size = (site / "media" / f"{video_slug('diag')}.mp4").stat().st_size
        request = urllib.request.Request(video, headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(request) as reply:
            assert reply.status == 206 and reply.headers["Content-Range"] == f"bytes 10-19/{size}"
            assert len(reply.read()) == 10
    finally:
        server.shutdown()
        server.server_close()


# --- in headless Chromium --------------------------------------------------------------------------


def test_index_lists_every_video_filters_and_sorts(site, browser):
    open_page(browser, site / "index.html")
    shown = browser.evaluate("window.piteIndex.shownIds()")
    assert sorted(shown) == sorted(["diag", "mpeg4", "gone", XSS_ID, "missing_clip"])
    assert browser.evaluate("window.piteIndex.filter('small cube', '')") == ["diag", "gone", "mpeg4"]
    assert browser.evaluate("window.piteIndex.filter('', 'missing_file')") == ["missing_clip"]
    assert browser.evaluate("document.querySelectorAll('#failures tbody tr').length") == 1
    browser.evaluate("window.piteIndex.filter('', '')")
    bars = browser.evaluate("Array.from(document.querySelectorAll('.bar-row')).map(r => r.dataset.reason)")
    assert bars == list(REASONS), "most frequent first"
    order = browser.evaluate("window.piteIndex.sort('phrases:asc')")
    assert order[0] == XSS_ID and order[-1] == "missing_clip"  # failed videos have no count: last
    browser.evaluate("window.piteIndex.sort('id:asc')")
    browser.screenshot(ARTIFACTS / "index.png")


def test_video_page_draws_trajectories_at_a_known_time(site, browser):
    open_page(browser, video_page(site, "diag"))
    assert browser.evaluate("window.piteViewer.ready") == "source"
    assert browser.evaluate("window.piteViewer.state().readyState") >= 2, "Chromium plays the H.264 source"
    browser.evaluate(f"window.piteViewer.seek({PROBE_TIME})")
    state = browser.evaluate("window.piteViewer.state()")
    assert state["index"] == PROBE and state["canvas"][0] > 300
    assert is_color(pixel(browser, *diag_point(PROBE)), RED), "the ball's current point, trajectory 0"
    assert is_color(pixel(browser, *anti_point(PROBE)), GREEN), "the cube's current point"
    x_hidden = diag_point(PROBE)[0]
    assert pixel(browser, x_hidden, 0.8)[3] == 0, "trajectory 1 is invisible at frame 50: no point, no line"
    assert pixel(browser, 0.3, 0.8)[3] > 0, "trajectory 1 is drawn where it is visible (frames 0-39)"
    assert pixel(browser, 0.5, 0.03)[3] == 0, "nothing far from every trajectory"
    assert pixel(browser, 4.5 / 32, 16.5 / 24)[3] == 0, "the mask is gone mid-event"
    browser.screenshot(ARTIFACTS / "video-diag-t1.5.png")
    browser.evaluate("window.piteViewer.seek(0)")
    assert is_color(pixel(browser, 4.5 / 32, 16.5 / 24), RED, min_alpha=60), "the ball's mask on the first frame"
    browser.evaluate("window.piteViewer.seek(2.5)")
    assert pixel(browser, *diag_point(PROBE))[3] == 0, "event 0's trajectories are not drawn in event 1"
    current = browser.evaluate("Array.from(document.querySelectorAll('.event.current')).map(e => e.dataset.event)")
    assert current == ["1"]


def test_hovering_a_phrase_highlights_its_trajectories(site, browser):
    open_page(browser, video_page(site, "diag"))
    browser.evaluate(f"window.piteViewer.seek({PROBE_TIME})")
    ball, cube = pixel(browser, *diag_point(PROBE)), pixel(browser, *anti_point(PROBE))
    browser.hover(".phrase[data-key='0:1']")  # "a small cube"
    browser.wait_for("window.piteViewer.state().hover === '0:1'", timeout=5)
    assert browser.evaluate("Array.from(document.querySelectorAll('.phrase.hl')).map(s => s.textContent)") == [
        "a small cube"]
    ball_hl, cube_hl = pixel(browser, *diag_point(PROBE)), pixel(browser, *anti_point(PROBE))
    assert ball_hl[3] < 0.6 * ball[3], "the other phrase is dimmed"
    assert cube_hl[3] >= cube[3] and is_color(cube_hl, GREEN), "the hovered phrase stays fully drawn"
    browser.screenshot(ARTIFACTS / "video-diag-hover.png")
    browser.mouse_move(5, 5)
    browser.wait_for("window.piteViewer.state().hover === null", timeout=5)
    assert pixel(browser, *diag_point(PROBE))[3] == ball[3]


def test_unplayable_video_falls_back_and_missing_video_still_draws(site, browser):
    open_page(browser, video_page(site, "mpeg4"))
    assert browser.evaluate("window.piteViewer.ready") == "fallback"
    state = browser.evaluate("window.piteViewer.state()")
    assert state["src"].endswith(".overlay.mp4") and state["readyState"] >= 2
    assert browser.evaluate("!document.getElementById('notice').hidden")
    browser.evaluate(f"window.piteViewer.seek({PROBE_TIME})")
    assert pixel(browser, *diag_point(PROBE))[3] == 0, "the overlays are burned into the fallback, not redrawn"
    browser.screenshot(ARTIFACTS / "video-fallback.png")
    open_page(browser, video_page(site, "gone"))
    assert browser.evaluate("window.piteViewer.ready") == "none"
    browser.evaluate(f"window.piteViewer.seek({PROBE_TIME})")
    assert is_color(pixel(browser, *diag_point(PROBE)), RED)
    browser.evaluate("window.piteViewer.step(1)")
    assert browser.evaluate("window.piteViewer.state().index") == PROBE + 1
    assert is_color(pixel(browser, *diag_point(PROBE + 1)), RED), "the point moved one timeline frame on"
    browser.evaluate("window.piteViewer.play()")  # no video: a timer drives the overlays
    browser.wait_for(f"window.piteViewer.state().time > {PROBE_TIME + 0.3}", timeout=5)
    browser.evaluate("window.piteViewer.pause()")


def test_caption_markup_is_shown_as_text_and_never_runs(site, browser):
    open_page(browser, site / "index.html")
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    assert XSS_ID in browser.evaluate("window.piteIndex.shownIds()")
    open_page(browser, video_page(site, XSS_ID))
    browser.evaluate("window.piteViewer.ready")
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    assert browser.evaluate("document.querySelector('.event .caption').textContent") == XSS_CAPTION
    assert browser.evaluate("document.getElementById('video-title').textContent") == XSS_ID
    assert browser.evaluate("document.querySelectorAll('.captions script, .captions img').length") == 0
    assert browser.evaluate("document.querySelector(\".phrase[data-key='0:1']\").textContent") == "<script>"


def test_index_of_200_videos_loads_fast(big_site, browser):
    wall = open_page(browser, big_site / "index.html")
    rendered_ms = browser.evaluate("window.piteIndex.renderedAt")
    assert browser.evaluate("window.piteIndex.shownIds().length") == 200
    assert rendered_ms < 2000 and wall < 2.0, f"index rendered at {rendered_ms:.0f} ms, load took {wall:.2f} s"
    assert browser.evaluate("window.piteIndex.filter('a dog number 7', '').length") == 11  # 7, 70-79
    browser.screenshot(ARTIFACTS / "index-200.png")


def test_site_over_http_plays_and_seeks(site, browser):
    server = make_server(site, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        browser.navigate(f"{base}/index.html")
        assert len(browser.wait_for("window.piteIndex && window.piteIndex.shownIds()")) == 5
        browser.navigate(f"{base}/videos/{video_slug('diag')}.html")
        assert browser.evaluate("window.piteViewer.ready") == "source"
        assert browser.evaluate("window.piteViewer.seek(2.25)") == pytest.approx(2.25)
        browser.evaluate("document.getElementById('video').play()")
        started = time.monotonic()
        browser.wait_for("window.piteViewer.state().time > 2.4", timeout=5)
        assert time.monotonic() - started < 5
        assert is_color(pixel(browser, 0.9, 0.9), PALETTE[2]), "event 1's phrase at its point while playing"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_demo_shards_render_and_draw_their_trajectories(tmp_path, browser, repo_root):
    """The real demo run (tiny models on the sample clips): every video listed, a trajectory drawn."""
    from pipeline.annotate import annotate
    from pipeline.config import PipelineConfig
    from pipeline.demo_data import prepare_demo_videos
    from pite.config import load_config
    from pite.schema import read_shards

    videos = prepare_demo_videos(repo_root / "data/demo/videos")
    cfg = load_config(repo_root / "configs/pipeline/demo.yaml", PipelineConfig,
                      overrides=[f"manifest.path={repo_root / 'data/demo/manifest.jsonl'}",
                                 f"manifest.video_root={videos}"])
    annotate(cfg, out=tmp_path / "run", progress=False)
    build_site(tmp_path / "run", tmp_path / "site", SiteSettings(video_root=videos, fallback="none"))
    open_page(browser, tmp_path / "site" / "index.html")
    shown = browser.evaluate("window.piteIndex.shownIds()")
    assert sorted(shown) == ["bigbuckbunny", "bikes", "carphone_pristine", "missing_clip", "synthetic_square"]
    record = next(r for r in read_shards(tmp_path / "run" / "shards") if r.video_id == "synthetic_square")
    phrase = record.events[0].phrases[0]
    k = int(np.flatnonzero(phrase.visibility[0])[len(np.flatnonzero(phrase.visibility[0])) // 2])
    open_page(browser, video_page(tmp_path / "site", "synthetic_square"))
    browser.evaluate(f"window.piteViewer.seek({k / 100 * record.duration_s + 1e-3})")
    x, y = (float(v) for v in phrase.trajectory[0, k])
    assert pixel(browser, x, y)[3] > 0, "the key trajectory's current point is drawn on the overlay"
    browser.screenshot(ARTIFACTS / "demo-synthetic_square.png")
