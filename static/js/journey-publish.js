// The publish page: choosing a step in a "Move to" list chooses "Move to" for that row.
(function () {
  "use strict";

  document.addEventListener("change", function (event) {
    var select = event.target;
    if (!(select instanceof HTMLSelectElement) || !select.name.startsWith("target-")) return;
    var node = select.name.slice("target-".length);
    var move = document.querySelector('input[type="radio"][name="choice-' + CSS.escape(node) + '"][value="move"]');
    if (move && select.value) move.checked = true;
  });
})();
