/* Index page: summary of stats.json and the failures table, then every video, filterable by
   phrase text and failure reason and sortable by duration, phrase count and visibility. */
(function () {
  "use strict";
  var el = PITE.el;
  var data = PITE.readData("pite-index");
  var PAGE_SIZE = 250;
  var view = {phrase: "", reason: "", sortKey: "id", sortDir: "asc", page: 0, failurePage: 0};

  document.getElementById("run-info").textContent =
    "run " + data.run + " \u00b7 " + data.videos.length + " videos \u00b7 built " + data.generated;

  // --- summary -------------------------------------------------------------------------------

  function renderTotals() {
    var body = document.querySelector("#totals tbody");
    Object.keys(data.stats.totals || {}).forEach(function (key) {
      body.appendChild(el("tr", {}, [el("th", {text: key}), el("td", {className: "num", text: data.stats.totals[key]})]));
    });
    if (!body.firstChild) body.appendChild(el("tr", {}, [el("td", {text: "no stats.json in this run"})]));
  }

  function renderReasonChart() {
    var chart = document.getElementById("reason-chart");
    var top = data.reasons.length ? data.reasons[0].count : 0;
    data.reasons.forEach(function (reason) {
      var bar = el("div", {className: "bar " + reason.kind});
      bar.style.width = Math.max(1, 100 * reason.count / top) + "%";
      chart.appendChild(el("div", {className: "bar-row", attrs: {"data-reason": reason.label, title: reason.kind}}, [
        el("span", {className: "bar-label", text: reason.label}),
        el("span", {className: "bar-track"}, [bar]),
        el("span", {className: "bar-value num", text: reason.count}),
      ]));
    });
    if (!data.reasons.length) chart.appendChild(el("p", {className: "muted", text: "no failures or drops"}));
  }

  function renderSteps() {
    var body = document.querySelector("#steps tbody");
    var steps = data.stats.steps || {};
    function pairs(obj) {
      return Object.keys(obj || {}).map(function (k) { return k + " " + obj[k]; }).join(", ");
    }
    Object.keys(steps).forEach(function (name) {
      var s = steps[name];
      body.appendChild(el("tr", {}, [el("td", {text: name}), el("td", {className: "num", text: (s.seconds || 0).toFixed(2)}),
        el("td", {text: pairs(s.counts)}), el("td", {text: pairs(s.drops)})]));
    });
  }

  // --- videos --------------------------------------------------------------------------------

  function renderReasonOptions() {
    var select = document.getElementById("filter-reason");
    var counts = {};
    data.failures.forEach(function (f) { counts[f.reason] = (counts[f.reason] || 0) + 1; });
    Object.keys(counts).sort().forEach(function (reason) {
      select.appendChild(el("option", {text: reason + " (" + counts[reason] + ")", attrs: {value: reason}}));
    });
  }

  data.videos.forEach(function (v) {
    v.search = v.texts.map(function (t) { return t.toLowerCase(); });
  });

  function matches(v) {
    if (view.reason && v.reasons.indexOf(view.reason) < 0) return false;
    if (!view.phrase) return true;
    for (var i = 0; i < v.search.length; i++) if (v.search[i].indexOf(view.phrase) >= 0) return true;
    return false;
  }

  function compare(a, b) {
    var x = a[view.sortKey], y = b[view.sortKey];
    if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;  // missing values last
    if (y === null || y === undefined) return -1;
    var order = x < y ? -1 : x > y ? 1 : 0;
    return view.sortDir === "asc" ? order : -order;
  }

  function videoRow(v) {
    var name = v.page ? el("a", {text: v.id, attrs: {href: v.page}}) : el("span", {text: v.id});
    var failures = v.reasons.length ? v.reasons.join(", ") : "";
    return el("tr", {className: v.status === "failed" ? "failed" : "", attrs: {"data-video-id": v.id}}, [
      el("td", {className: "id"}, [name, v.status === "failed" ? el("span", {className: "badge", text: "failed"}) : null]),
      el("td", {className: "num", text: PITE.fmtSeconds(v.duration)}),
      el("td", {className: "num", text: v.status === "failed" ? "" : v.events}),
      el("td", {className: "num", text: v.status === "failed" ? "" : v.phrases}),
      el("td", {className: "num", text: PITE.fmtPercent(v.visibility)}),
      el("td", {className: "caption", text: v.caption}),
      el("td", {text: failures}),
    ]);
  }

  function renderVideos() {
    var rows = data.videos.filter(matches).sort(compare);
    var pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    view.page = Math.min(view.page, pages - 1);
    var body = document.querySelector("#videos tbody");
    var fresh = el("tbody");
    rows.slice(view.page * PAGE_SIZE, (view.page + 1) * PAGE_SIZE).forEach(function (v) { fresh.appendChild(videoRow(v)); });
    body.parentNode.replaceChild(fresh, body);
    document.getElementById("video-count").textContent =
      rows.length + " of " + data.videos.length + " videos";
    PITE.pager(document.getElementById("video-pager"), pages, view.page, function (p) { view.page = p; renderVideos(); });
    document.querySelectorAll("#videos th[data-sort]").forEach(function (th) {
      th.className = (th.className.replace(/ ?sorted-(asc|desc)/, "")) +
        (th.getAttribute("data-sort") === view.sortKey ? " sorted-" + view.sortDir : "");
    });
  }

  function renderFailures() {
    var rows = data.failures.filter(function (f) { return !view.reason || f.reason === view.reason; });
    var pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    view.failurePage = Math.min(view.failurePage, pages - 1);
    var fresh = el("tbody");
    rows.slice(view.failurePage * PAGE_SIZE, (view.failurePage + 1) * PAGE_SIZE).forEach(function (f) {
      fresh.appendChild(el("tr", {}, [el("td", {text: f.video_id}), el("td", {className: "num", text: f.event}),
        el("td", {text: f.stage}), el("td", {text: f.reason}), el("td", {text: f.message})]));
    });
    if (!rows.length) fresh.appendChild(el("tr", {}, [el("td", {text: "no failures", attrs: {colspan: 5}})]));
    var body = document.querySelector("#failures tbody");
    body.parentNode.replaceChild(fresh, body);
    PITE.pager(document.getElementById("failure-pager"), pages, view.failurePage,
      function (p) { view.failurePage = p; renderFailures(); });
  }

  function setSort(value) {
    var parts = value.split(":");
    view.sortKey = parts[0];
    view.sortDir = parts[1] || "asc";
    view.page = 0;
    renderVideos();
  }

  var pending = null;
  document.getElementById("filter-phrase").addEventListener("input", function (event) {
    clearTimeout(pending);
    var value = event.target.value.trim().toLowerCase();
    pending = setTimeout(function () { view.phrase = value; view.page = 0; renderVideos(); }, 120);
  });
  document.getElementById("filter-reason").addEventListener("change", function (event) {
    view.reason = event.target.value;
    view.page = 0;
    view.failurePage = 0;
    renderVideos();
    renderFailures();
  });
  document.getElementById("sort").addEventListener("change", function (event) { setSort(event.target.value); });
  document.querySelectorAll("#videos th[data-sort]").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-sort");
      var dir = view.sortKey === key && view.sortDir === "desc" ? "asc" : "desc";
      if (view.sortKey !== key && key === "id") dir = "asc";
      document.getElementById("sort").value = key + ":" + dir;
      setSort(key + ":" + dir);
    });
  });

  renderTotals();
  renderReasonChart();
  renderSteps();
  renderReasonOptions();
  renderVideos();
  renderFailures();

  /** For tests and scripts: apply filters without typing, and see what is shown. */
  window.piteIndex = {
    renderedAt: performance.now(),
    filter: function (phrase, reason) {
      view.phrase = (phrase || "").toLowerCase();
      view.reason = reason || "";
      view.page = 0;
      document.getElementById("filter-phrase").value = phrase || "";
      document.getElementById("filter-reason").value = view.reason;
      renderVideos();
      renderFailures();
      return this.shownIds();
    },
    sort: function (value) { document.getElementById("sort").value = value; setSort(value); return this.shownIds(); },
    shownIds: function () {
      return Array.prototype.map.call(document.querySelectorAll("#videos tbody tr"),
        function (tr) { return tr.getAttribute("data-video-id"); });
    },
  };
  document.body.setAttribute("data-ready", "1");
})();
