// The journey page's live map: the journey canvas (static/build/journey-canvas.js) read-only,
// with the figures the server rendered, kept current by the websocket /ws/journeys/<id>/,
// whose messages are JSON {"counts": {nodes, edges, conversion}} (the canvas's setCounts
// shape). Selecting a step on the canvas loads its panel with htmx; the table under the
// map shows the same figures and stays in step with them.
(function () {
  "use strict";

  var source = document.getElementById("journey-map-data");
  if (!source) return;
  var data = JSON.parse(source.textContent);
  var element = document.getElementById("journey-map");
  var canvas = null;
  var selecting = false;

  function formatNumber(n) {
    return Number(n || 0).toLocaleString("en");
  }

  function formatRate(rate) {
    if (rate === null || rate === undefined) return "—";
    var value = rate * 100;
    return (value > 0 && value < 10 ? value.toFixed(1) : value.toFixed(0)) + "%";
  }

  function openPanel(nodeId) {
    if (!nodeId || selecting || !window.htmx) return;
    window.htmx.ajax("GET", data.nodeUrl.replace("__node__", encodeURIComponent(nodeId)), {
      target: "#node-panel", swap: "innerHTML",
    });
  }

  if (element && window.JourneyCanvas) {
    canvas = window.JourneyCanvas.mount(element, {
      graph: data.graph, ports: data.ports, nodeTypes: data.nodeTypes, readOnly: true, onSelect: openPanel,
    });
    canvas.setCounts(data.counts);
    element.dataset.ready = "1";
    // Fit once the page has its final size, and again when the window changes size.
    window.requestAnimationFrame(function () { canvas.fit(); });
    var resizing = null;
    window.addEventListener("resize", function () {
      window.clearTimeout(resizing);
      resizing = window.setTimeout(function () { canvas.fit(); }, 150);
    });
  }

  document.querySelectorAll("[data-map]").forEach(function (button) {
    button.addEventListener("click", function () {
      if (!canvas) return;
      var action = button.dataset.map;
      if (action === "zoom-in") canvas.zoomIn();
      else if (action === "zoom-out") canvas.zoomOut();
      else canvas.fit();
    });
  });

  // Where the panel sits under the map (narrow screens), bring it into view once it loaded.
  document.addEventListener("htmx:afterSwap", function (event) {
    var panel = document.getElementById("node-panel");
    if (!panel || event.detail.target !== panel) return;
    var rect = panel.getBoundingClientRect();
    if (rect.top < 0 || rect.top > window.innerHeight * 0.6) panel.scrollIntoView({ block: "start", behavior: "smooth" });
  });

  // "Details" in the table selects the step on the canvas too (without loading the panel twice).
  document.addEventListener("click", function (event) {
    var link = event.target.closest("[data-select-node]");
    if (!link || !canvas) return;
    selecting = true;
    try { canvas.select(link.dataset.selectNode); } finally { selecting = false; }
  });

  function applyCounts(counts) {
    if (canvas) canvas.setCounts(counts);
    var nodes = counts.nodes || {};
    Object.keys(nodes).forEach(function (id) {
      document.querySelectorAll('[data-node-now="' + CSS.escape(id) + '"]').forEach(function (cell) {
        cell.textContent = formatNumber(nodes[id].now);
      });
      document.querySelectorAll('[data-node-entered="' + CSS.escape(id) + '"]').forEach(function (cell) {
        cell.textContent = formatNumber(nodes[id].entered);
      });
    });
    var edges = counts.edges || {};
    Object.keys(edges).forEach(function (key) {
      document.querySelectorAll('[data-edge="' + CSS.escape(key) + '"]').forEach(function (cell) {
        cell.textContent = formatNumber(edges[key]);
      });
    });
    var conversion = counts.conversion || {};
    document.querySelectorAll("[data-conversion]").forEach(function (cell) {
      cell.textContent = formatRate(conversion[cell.dataset.conversion]);
    });
    if (element) element.dataset.updated = String(Date.now());
  }

  // --- The websocket, reconnecting with backoff ---------------------------------------------

  function setStatus(state, text) {
    document.querySelectorAll("[data-live-status]").forEach(function (status) {
      status.dataset.state = state;
      var label = status.querySelector("[data-live-text]");
      if (label) label.textContent = text;
    });
  }

  var attempts = 0;

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + window.location.host + data.socket);
    socket.addEventListener("open", function () {
      attempts = 0;
      setStatus("live", "Live");
    });
    socket.addEventListener("message", function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (error) { return; }
      if (message && message.counts) applyCounts(message.counts);
    });
    socket.addEventListener("close", function (event) {
      if (event.code === 4401 || event.code === 4403) {
        setStatus("off", "Live updates are not available: sign in again");
        return;
      }
      setStatus("down", "Connection lost, reconnecting…");
      attempts += 1;
      // Full jitter, at most 1, 2, 4, 8 … 30 s, as htmx's websocket extension does.
      var ceiling = Math.min(30000, 1000 * Math.pow(2, attempts - 1));
      window.setTimeout(connect, Math.random() * ceiling);
    });
  }

  connect();
})();
