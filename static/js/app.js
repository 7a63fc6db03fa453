// Small behaviours the server-rendered pages need; everything else is htmx.
(function () {
  "use strict";

  function closeMenus(except) {
    document.querySelectorAll("details.cell-menu[open]").forEach(function (menu) {
      if (menu !== except) menu.removeAttribute("open");
    });
  }

  // One preference popover at a time; focus its reason field when it opens.
  document.addEventListener("toggle", function (event) {
    var menu = event.target;
    if (!(menu instanceof HTMLDetailsElement) || !menu.classList.contains("cell-menu") || !menu.open) return;
    closeMenus(menu);
    var reason = menu.querySelector("input[name=reason]");
    if (reason) reason.focus();
  }, true);

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target.closest("[data-close-details]")) {
      var menu = target.closest("details");
      if (menu) menu.removeAttribute("open");
      return;
    }
    if (!target.closest("details.cell-menu")) closeMenus(null);

    if (target.closest("[data-dismiss]")) {
      dismiss(target.closest(".flash"));
      return;
    }

    // Whole table rows open the customer, unless a link was clicked or text selected.
    var row = target.closest("tr[data-href]");
    if (row && !target.closest("a, button, input, select") && !String(window.getSelection())) {
      window.location.href = row.dataset.href;
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") closeMenus(null);
  });

  function dismiss(flash) {
    if (!flash || flash.classList.contains("leaving")) return;
    flash.classList.add("leaving");
    setTimeout(function () { flash.remove(); }, 260);
  }

  function scheduleFlashes(root) {
    (root || document).querySelectorAll(".flash:not([data-scheduled])").forEach(function (flash) {
      flash.dataset.scheduled = "1";
      setTimeout(function () { dismiss(flash); }, 6000);
    });
  }

  // Bars get their width from data-width (a percentage): the Content-Security-Policy refuses
  // style="" attributes in the markup, but not styles set from a script. New and changed
  // bars (htmx swaps, live dashboard pushes) are sized before the browser paints them.
  function setWidth(bar) {
    var percent = parseFloat(bar.getAttribute("data-width"));
    bar.style.width = (isFinite(percent) ? Math.min(100, Math.max(0, percent)) : 0) + "%";
  }

  function sizeBars(root) {
    if (root.nodeType !== 1 && root.nodeType !== 9) return;
    if (root.nodeType === 1 && root.hasAttribute("data-width")) setWidth(root);
    root.querySelectorAll("[data-width]").forEach(setWidth);
  }

  sizeBars(document);
  new MutationObserver(function (records) {
    records.forEach(function (record) {
      if (record.type === "attributes") setWidth(record.target);
      else record.addedNodes.forEach(sizeBars);
    });
  }).observe(document.documentElement, { childList: true, subtree: true, attributes: true, attributeFilter: ["data-width"] });

  // <time data-local-time datetime="…"> is written in the server's time zone; show it in the
  // viewer's own, with the zone's short name.
  var localFormat = window.Intl ? new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short",
  }) : null;

  function localTimes(root) {
    if (!localFormat) return;
    (root || document).querySelectorAll("time[data-local-time]:not([data-localised])").forEach(function (time) {
      var moment = new Date(time.getAttribute("datetime"));
      if (isNaN(moment.getTime())) return;
      time.dataset.localised = "1";
      time.title = time.textContent;
      time.textContent = localFormat.format(moment);
    });
  }

  document.addEventListener("DOMContentLoaded", function () { scheduleFlashes(document); localTimes(document); });
  document.addEventListener("htmx:afterSettle", function () { scheduleFlashes(document); localTimes(document); });
})();
