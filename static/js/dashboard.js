// Live dashboards: htmx's websocket extension swaps the out-of-band fragments by id; this
// script applies chart updates (JSON frames) on the existing chart elements, and tells the
// user when the connection drops and comes back. A JSON frame carries whole figures
// ({"charts": {id: figure}}, drawn with Plotly.react) and/or the values that changed since
// the figure the socket sent before ({"points": {id: [[trace, index, y], ...]}}).
(function () {
  "use strict";

  var CONFIG = { displayModeBar: false, responsive: true };

  function setStatus(state, text) {
    document.querySelectorAll("[data-live-status]").forEach(function (element) {
      element.dataset.state = state;
      var label = element.querySelector("[data-live-text]");
      if (label) label.textContent = text;
    });
  }

  function applyCharts(charts) {
    if (!window.Plotly) return;
    Object.keys(charts).forEach(function (id) {
      var element = document.getElementById(id);
      if (!element) return;
      var figure = charts[id];
      window.Plotly.react(element, figure.data, figure.layout, CONFIG);
      element.dataset.updated = String(Date.now());
    });
  }

  function applyPoints(points) {
    if (!window.Plotly) return;
    Object.keys(points).forEach(function (id) {
      var element = document.getElementById(id);
      if (!element || !element.data) return;
      var changed = {};
      points[id].forEach(function (point) {
        var trace = point[0];
        // A new array, so that Plotly sees the trace changed.
        if (!changed[trace]) changed[trace] = Array.prototype.slice.call(element.data[trace].y);
        changed[trace][point[1]] = point[2];
      });
      var traces = Object.keys(changed).map(Number);
      window.Plotly.restyle(element, { y: traces.map(function (trace) { return changed[trace]; }) }, traces);
      element.dataset.updated = String(Date.now());
    });
  }

  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    var message = event.detail.message;
    if (typeof message === "string" && message.charAt(0) === "{") {
      event.preventDefault();
      var update = JSON.parse(message);
      applyCharts(update.charts || {});
      applyPoints(update.points || {});
    }
  });
  // Pushed fragments are rendered once for every viewer, so a form in one carries no CSRF
  // token of its own: it takes this page's (the one htmx sends in X-CSRFToken).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.method || form.method.toLowerCase() !== "post") return;
    var input = form.querySelector("input[name=csrfmiddlewaretoken]");
    if (input && input.value) return;
    var token = "";
    try {
      token = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (error) { return; /* the server answers 403 */ }
    if (!input) {
      input = document.createElement("input");
      input.type = "hidden";
      input.name = "csrfmiddlewaretoken";
      form.appendChild(input);
    }
    input.value = token;
  }, true);
  document.addEventListener("htmx:wsOpen", function () { setStatus("live", "Live"); });
  document.addEventListener("htmx:wsClose", function (event) {
    var code = event.detail && event.detail.event ? event.detail.event.code : 0;
    if (code === 4401 || code === 4403) {
      setStatus("off", "Live updates are not available: sign in again");
    } else {
      setStatus("down", "Connection lost, reconnecting…");
    }
  });
  document.addEventListener("htmx:wsError", function () { setStatus("down", "Connection lost, reconnecting…"); });
})();
