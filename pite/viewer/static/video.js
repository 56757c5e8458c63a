/* Video page: plays the video with its annotations drawn on a canvas layered over it, synced
   to playback. Coordinates in the data are normalised to [0, 1]; trajectory point i belongs to
   global timeline frame i (time i / 100 * duration), null where invisible or outside the event.
   The canvas never has the video drawn into it, so it is never tainted and stays readable. */
(function () {
  "use strict";
  var el = PITE.el;
  var data = PITE.readData("pite-video");
  var D = data.duration_s;
  var video = document.getElementById("video");
  var img = document.getElementById("fallback-img");
  var canvas = document.getElementById("overlay");
  var ctx = canvas.getContext("2d");
  var notice = document.getElementById("notice");
  var scrub = document.getElementById("scrub");
  var state = {time: 0, hover: null, mode: "loading", showMasks: true, pinMasks: false, showTraj: true};
  var spans = [];  // caption phrase spans, for highlighting
  var eventRows = [];
  var settle;
  var ready = new Promise(function (resolve) { settle = resolve; });
  setTimeout(function () { settle(state.mode); }, 8000);  // a stalled load must not block seeking forever

  document.getElementById("video-title").textContent = data.video_id;
  document.getElementById("video-info").textContent = [data.video_path, PITE.fmtSeconds(D),
    data.width + "\u00d7" + data.height, data.fps.toFixed(2) + " fps", data.events.length + " events"].join(" \u00b7 ");
  document.getElementById("stage").style.aspectRatio = data.width + " / " + data.height;
  document.getElementById("legend").textContent = "Masks show on each event's first frame (held " +
    data.mask_hold_frames + " timeline frames); the three key trajectories of each phrase are drawn in its colour, " +
    "the current point as a dot, nothing where the point is not visible. Hover a phrase to highlight it.";

  // --- media and fallbacks -------------------------------------------------------------------

  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = false;
  }

  function useFallback(reason) {
    if (!data.fallback) return noMedia(reason + "; no pre-rendered overlay video either");
    showNotice(reason + "; showing the pre-rendered overlay " + (data.fallback_kind === "gif" ? "animation" : "video") + ".");
    if (data.fallback_kind === "gif") {
      state.mode = "fallback-gif";
      video.removeAttribute("src");
      video.hidden = true;
      img.hidden = false;
      img.src = data.fallback;
      settle(state.mode);
    } else {
      state.mode = "fallback";
      video.src = data.fallback;
    }
    draw();
  }

  function noMedia(reason) {
    state.mode = "none";
    video.removeAttribute("src");
    video.hidden = true;
    showNotice(reason + ". Annotations are drawn over a blank frame; use play, the frame buttons or the slider to move in time.");
    settle(state.mode);
    draw();
  }

  function mediaFailed(why) {
    if (state.mode === "source") useFallback(why);
    else if (state.mode === "fallback") noMedia(why);
  }

  video.addEventListener("error", function () {
    var code = video.error ? video.error.code : 0;
    mediaFailed(code === 4 ? "this browser cannot play the video" : "the video could not be loaded (error " + code + ")");
  });
  video.addEventListener("loadedmetadata", function () {
    if (video.videoWidth === 0) mediaFailed("this browser cannot decode the video track");
  });
  video.addEventListener("loadeddata", function () {
    if (video.videoWidth > 0 && (state.mode === "source" || state.mode === "fallback")) settle(state.mode);
  });

  // --- drawing -------------------------------------------------------------------------------

  function fitCanvas() {
    var ratio = window.devicePixelRatio || 1;
    var w = Math.max(1, Math.round(canvas.clientWidth * ratio)), h = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
  }

  function phraseKey(e, k) { return e + ":" + k; }

  function drawMask(phrase, w, h, alpha) {
    ctx.globalAlpha = 0.45 * alpha;
    ctx.fillStyle = phrase.color;
    ctx.beginPath();
    phrase.rings.forEach(function (ring) {
      for (var i = 0; i + 1 < ring.length; i += 2) {
        if (i === 0) ctx.moveTo(ring[i] * w, ring[i + 1] * h); else ctx.lineTo(ring[i] * w, ring[i + 1] * h);
      }
      ctx.closePath();
    });
    ctx.fill("evenodd");
    ctx.globalAlpha = alpha;
    ctx.strokeStyle = phrase.color;
    ctx.lineWidth = 1.5;
    ctx.setLineDash([6, 4]);
    var b = phrase.box;
    ctx.strokeRect(b[0] * w, b[1] * h, (b[2] - b[0]) * w, (b[3] - b[1]) * h);
    ctx.setLineDash([]);
  }

  function drawTrajectories(phrase, idx, w, h, alpha, width) {
    ctx.globalAlpha = alpha;
    ctx.strokeStyle = phrase.color;
    ctx.lineWidth = width;
    ctx.lineJoin = "round";
    ctx.lineCap = "round";
    phrase.traj.forEach(function (points) {
      ctx.beginPath();
      var open = false;
      for (var i = 0; i < points.length; i++) {
        var p = points[i];
        if (p === null) { open = false; continue; }  // invisible: break the polyline
        if (open) ctx.lineTo(p[0] * w, p[1] * h); else ctx.moveTo(p[0] * w, p[1] * h);
        open = true;
      }
      ctx.stroke();
      var now = points[idx];
      if (now) {
        ctx.beginPath();
        ctx.arc(now[0] * w, now[1] * h, width + 3.5, 0, 2 * Math.PI);
        ctx.fillStyle = phrase.color;
        ctx.fill();
        ctx.lineWidth = 1.5;
        ctx.strokeStyle = "#ffffff";
        ctx.stroke();
        ctx.lineWidth = width;
        ctx.strokeStyle = phrase.color;
      }
    });
  }

  function activeEvents(idx) {
    var active = [];
    data.events.forEach(function (event, e) { if (event.first <= idx && idx <= event.last) active.push(e); });
    return active;
  }

  function draw() {
    fitCanvas();
    var w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    var idx = PITE.frameIndex(state.time, D);
    var active = activeEvents(idx);
    var burnedIn = state.mode === "fallback" || state.mode === "fallback-gif";
    if (!burnedIn) {
      active.forEach(function (e) {
        var event = data.events[e];
        event.phrases.forEach(function (phrase, k) {
          var key = phraseKey(e, k);
          var dim = state.hover !== null && state.hover !== key;
          var alpha = dim ? 0.2 : state.hover === key ? 1 : 0.9;
          var maskOn = state.pinMasks || idx < event.first + data.mask_hold_frames;
          if (state.showMasks && maskOn) drawMask(phrase, w, h, alpha);
          if (state.showTraj) drawTrajectories(phrase, idx, w, h, alpha, state.hover === key ? 4 : 2.5);
        });
      });
      ctx.globalAlpha = 1;
    }
    document.getElementById("playhead").style.left = (100 * state.time / D) + "%";
    if (document.activeElement !== scrub) scrub.value = String(Math.round(1000 * state.time / D));
    document.getElementById("time-label").textContent =
      state.time.toFixed(2) + " s \u00b7 frame " + PITE.pad2(idx) + "/99";
    eventRows.forEach(function (row, e) { row.classList.toggle("current", active.indexOf(e) >= 0); });
  }

  // --- clock: the video's currentTime, or a timer when there is no playable video ------------

  var clock = {playing: false, rate: 1, last: 0};
  var playButton = document.getElementById("play");

  function mediaUsable() {
    return (state.mode === "source" || state.mode === "fallback") && video.readyState >= 1;
  }

  function setPlaying(on) {
    clock.playing = on;
    playButton.textContent = on ? "\u275a\u275a" : "\u25b6";
    if (on) {
      clock.last = performance.now();
      requestAnimationFrame(tick);
    }
  }

  function tick(now) {
    if (!clock.playing) return;
    if (mediaUsable()) {
      state.time = video.currentTime;
    } else {
      state.time = Math.min(D, state.time + (now - clock.last) / 1000 * clock.rate);
      clock.last = now;
      if (state.time >= D) setPlaying(false);
    }
    draw();
    if (clock.playing) requestAnimationFrame(tick);
  }

  function play() {
    if (state.time >= D - 1e-3) seek(0);
    if (mediaUsable()) video.play(); else setPlaying(true);
  }

  function pause() {
    if (mediaUsable()) video.pause(); else setPlaying(false);
  }

  video.addEventListener("play", function () { setPlaying(true); });
  video.addEventListener("pause", function () { setPlaying(false); state.time = video.currentTime; draw(); });
  ["seeked", "timeupdate"].forEach(function (name) {
    video.addEventListener(name, function () { if (!clock.playing) { state.time = video.currentTime; draw(); } });
  });
  playButton.addEventListener("click", function () { if (clock.playing) pause(); else play(); });
  document.getElementById("stage").addEventListener("click", function () { if (clock.playing) pause(); else play(); });
  document.getElementById("speed").addEventListener("change", function (event) {
    clock.rate = Number(event.target.value);
    video.playbackRate = clock.rate;
  });

  /** Move by ``delta`` global timeline frames (frame i is at i / 100 * duration). */
  function step(delta) {
    pause();
    var idx = Math.min(PITE.NUM_FRAMES - 1, Math.max(0, PITE.frameIndex(state.time, D) + delta));
    return seek(idx / PITE.NUM_FRAMES * D);
  }
  document.getElementById("prev-frame").addEventListener("click", function () { step(-1); });
  document.getElementById("next-frame").addEventListener("click", function () { step(1); });
  document.addEventListener("keydown", function (event) {
    var tag = event.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    if (event.key === " ") { event.preventDefault(); if (clock.playing) pause(); else play(); }
    else if (event.key === "ArrowLeft") { event.preventDefault(); step(-1); }
    else if (event.key === "ArrowRight") { event.preventDefault(); step(1); }
  });

  /** Move to second t; resolves once the overlay for t is drawn. */
  function seek(t) {
    t = Math.min(Math.max(0, t), D);
    return ready.then(function () {
      if (!mediaUsable()) {
        state.time = t;
        draw();
        return state.time;
      }
      return new Promise(function (resolve) {
        var done = false;
        function finish() {
          if (done) return;
          done = true;
          state.time = t;
          draw();
          resolve(state.time);
        }
        video.addEventListener("seeked", finish, {once: true});
        setTimeout(finish, 3000);
        video.currentTime = t;
      });
    });
  }

  scrub.addEventListener("input", function () { seek(Number(scrub.value) / 1000 * D); });

  // --- timeline and captions -----------------------------------------------------------------

  function buildTimeline() {
    var timeline = document.getElementById("timeline");
    var laneEnds = [];
    data.events.forEach(function (event, e) {
      var lane = 0;
      while (lane < laneEnds.length && laneEnds[lane] > event.start_s) lane++;
      laneEnds[lane] = event.end_s;
      var block = el("div", {className: "tl-event", text: PITE.pad2(event.first) + "\u2013" + PITE.pad2(event.last),
        attrs: {title: event.caption, "data-event": e}});
      block.style.left = (100 * event.start_s / D) + "%";
      block.style.width = (100 * (event.end_s - event.start_s) / D) + "%";
      block.style.top = (4 + 20 * lane) + "px";
      timeline.appendChild(block);
    });
    timeline.style.height = (8 + 20 * Math.max(1, laneEnds.length)) + "px";
    timeline.addEventListener("click", function (event) {
      var rect = timeline.getBoundingClientRect();
      seek((event.clientX - rect.left) / rect.width * D);
    });
  }

  function setHover(key) {
    state.hover = key;
    canvas.setAttribute("data-hover", key === null ? "" : key);
    spans.forEach(function (span) { span.classList.toggle("hl", span.getAttribute("data-key") === key); });
    draw();
  }

  function captionNodes(event, e) {
    var nodes = [], at = 0;
    var order = event.phrases.map(function (p, k) { return k; })
      .sort(function (a, b) { return event.phrases[a].char_start - event.phrases[b].char_start; });
    order.forEach(function (k) {
      var phrase = event.phrases[k];
      if (phrase.char_start < at) return;  // overlapping phrase: shown by the first one only
      if (phrase.char_start > at) nodes.push(document.createTextNode(event.caption.slice(at, phrase.char_start)));
      var key = phraseKey(e, k);
      var span = el("span", {className: "phrase", text: event.caption.slice(phrase.char_start, phrase.char_end),
        attrs: {"data-key": key, title: "score " + phrase.score.toFixed(3)},
        on: {mouseenter: function () { setHover(key); }, mouseleave: function () { setHover(null); }}});
      span.style.setProperty("--phrase-color", phrase.color);
      spans.push(span);
      nodes.push(span);
      at = phrase.char_end;
    });
    if (at < event.caption.length) nodes.push(document.createTextNode(event.caption.slice(at)));
    return nodes;
  }

  function buildCaptions() {
    var list = document.getElementById("captions");
    data.events.forEach(function (event, e) {
      var header = el("div", {className: "event-head mono",
        text: "From " + PITE.pad2(event.first) + " to " + PITE.pad2(event.last) + " \u00b7 " +
          event.start_s.toFixed(2) + "\u2013" + event.end_s.toFixed(2) + " s \u00b7 " + event.phrases.length + " phrases",
        on: {click: function () { seek(event.start_s); }}});
      var row = el("div", {className: "event", attrs: {"data-event": e}},
        [header, el("p", {className: "caption"}, captionNodes(event, e))]);
      eventRows.push(row);
      list.appendChild(row);
    });
    if (!data.events.length) list.appendChild(el("p", {className: "muted", text: "no events"}));
  }

  // --- start -----------------------------------------------------------------------------------

  document.getElementById("show-masks").addEventListener("change", function (e) { state.showMasks = e.target.checked; draw(); });
  document.getElementById("pin-masks").addEventListener("change", function (e) { state.pinMasks = e.target.checked; draw(); });
  document.getElementById("show-traj").addEventListener("change", function (e) { state.showTraj = e.target.checked; draw(); });
  if (window.ResizeObserver) new ResizeObserver(draw).observe(canvas); else window.addEventListener("resize", draw);

  buildTimeline();
  buildCaptions();
  if (data.src) {
    state.mode = "source";
    video.src = data.src;
  } else {
    useFallback("the source video was not found when the site was built");
  }
  draw();

  /** For tests and scripts. */
  window.piteViewer = {
    ready: ready,
    seek: seek,
    step: step,
    play: play,
    pause: pause,
    hover: setHover,
    redraw: draw,
    state: function () {
      return {time: state.time, index: PITE.frameIndex(state.time, D), mode: state.mode, hover: state.hover,
              canvas: [canvas.width, canvas.height], readyState: video.readyState,
              src: video.currentSrc || img.src || ""};
    },
  };
})();
