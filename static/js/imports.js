// The import mapping: show a column's attribute key or consent proof only when the column is
// mapped to an attribute or to consent.
(function () {
  "use strict";
  function sync(select) {
    var row = select.closest("[data-mapping-row]");
    var kind = select.value.split(":")[0];
    row.querySelectorAll("[data-shows]").forEach(function (detail) {
      detail.hidden = detail.getAttribute("data-shows") !== kind;
    });
  }
  document.addEventListener("change", function (event) {
    if (event.target.matches("[data-mapping-choice]")) sync(event.target);
  });
})();
