/* Helpers shared by the index and video pages. Data is read from <script type="application/json">
   blocks and put on the page with textContent only, never parsed as HTML. */
"use strict";

var PITE = (function () {
  var NUM_FRAMES = 100;

  /** The parsed JSON of the <script type="application/json" id=...> block. */
  function readData(id) {
    return JSON.parse(document.getElementById(id).textContent);
  }

  /** A new element: el("td", {text: "1", className: "num", attrs: {title: "x"}, on: {click: f}}, [children]). */
  function el(tag, props, children) {
    var node = document.createElement(tag);
    props = props || {};
    if (props.className) node.className = props.className;
    if (props.text !== undefined && props.text !== null) node.textContent = String(props.text);
    if (props.attrs) {
      Object.keys(props.attrs).forEach(function (name) { node.setAttribute(name, String(props.attrs[name])); });
    }
    if (props.on) {
      Object.keys(props.on).forEach(function (name) { node.addEventListener(name, props.on[name]); });
    }
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined || !isFinite(s)) return "";
    return s < 60 ? s.toFixed(1) + " s" : Math.floor(s / 60) + ":" + ("0" + (s % 60).toFixed(1)).slice(-4);
  }

  function fmtPercent(v) {
    return v === null || v === undefined ? "" : Math.round(v * 100) + "%";
  }

  function pad2(i) {
    return (i < 10 ? "0" : "") + i;
  }

  /** Global timeline index of second t (pite.timeline.seconds_to_index: round half up, clamped to 0..99). */
  function frameIndex(t, duration) {
    var i = Math.floor(t / duration * NUM_FRAMES + 0.5 + 1e-9);
    return Math.min(NUM_FRAMES - 1, Math.max(0, i));
  }

  /** A pager under a table: calls render(page) and shows "prev / page i of n / next". */
  function pager(container, pageCount, page, onPage) {
    clear(container);
    if (pageCount <= 1) return;
    container.appendChild(el("button", {text: "previous", attrs: page > 0 ? {} : {disabled: ""},
      on: {click: function () { onPage(page - 1); }}}));
    container.appendChild(el("span", {text: " page " + (page + 1) + " of " + pageCount + " "}));
    container.appendChild(el("button", {text: "next", attrs: page < pageCount - 1 ? {} : {disabled: ""},
      on: {click: function () { onPage(page + 1); }}}));
  }

  return {NUM_FRAMES: NUM_FRAMES, readData: readData, el: el, clear: clear, fmtSeconds: fmtSeconds,
          fmtPercent: fmtPercent, pad2: pad2, frameIndex: frameIndex, pager: pager};
})();
