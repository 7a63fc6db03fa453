// Draws plotly figures rendered by the server: an element with data-plotly="<id>" gets the
// figure JSON from <script type="application/json" id="<id>">. Needs vendor/plotly.min.js.
(function () {
  "use strict";

  var CONFIG = { displayModeBar: false, responsive: true };

  function draw(scope) {
    if (!window.Plotly) return;
    (scope || document).querySelectorAll("[data-plotly]:not([data-drawn])").forEach(function (element) {
      var source = document.getElementById(element.dataset.plotly);
      if (!source) return;
      var figure = JSON.parse(source.textContent);
      element.dataset.drawn = "1";
      window.Plotly.newPlot(element, figure.data, figure.layout, CONFIG);
    });
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSettle", function (event) { draw(event.target); });
})();
