// The campaign compose form: channel and variant tabs, the live SMS counter, schedule and
// staged-test panels, inserting personalisation variables; and confirmations for the
// campaign page's irreversible buttons.
//
// Without this script every section of the form is simply shown; the server validates
// and renders everything either way.
(function () {
  "use strict";

  // The same rule as campaigns.sms.sms_length: GSM-7 unless a character is outside it,
  // then UCS-2 counted in UTF-16 code units (most emoji take two).
  var GSM7_BASIC = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?" +
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
  var GSM7_EXTENDED = "^{}\\[~]|€\f";

  function smsLength(text) {
    var gsm = true, units = 0;
    for (var ch of text) {
      if (GSM7_EXTENDED.indexOf(ch) !== -1) units += 2;
      else if (GSM7_BASIC.indexOf(ch) !== -1) units += 1;
      else { gsm = false; break; }
    }
    var single = 160, multi = 153, encoding = "GSM-7";
    if (!gsm) {
      units = text.length;
      single = 70; multi = 67; encoding = "UCS-2";
    }
    if (units <= single) return { encoding: encoding, characters: units, segments: units ? 1 : 0, perSegment: single };
    return { encoding: encoding, characters: units, segments: Math.ceil(units / multi), perSegment: multi };
  }
  window.switchboardSmsLength = smsLength;

  var form, card, activeVariant = "A", activeChannel = null, lastInput = null;

  function all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function checkedChannels() {
    return all("input[data-channel-toggle]", form).filter(function (box) { return box.checked; })
      .map(function (box) { return box.value; });
  }

  function variantCount() {
    var select = form.querySelector("select[name=variant_count]");
    return Math.max(1, parseInt(select ? select.value : "1", 10) || 1);
  }

  function variantKeys() {
    return all(".variant", card).map(function (el) { return el.dataset.variant; }).slice(0, variantCount());
  }

  function apply() {
    var keys = variantKeys(), channels = checkedChannels();
    if (keys.indexOf(activeVariant) === -1) activeVariant = keys[0];
    if (channels.indexOf(activeChannel) === -1) activeChannel = channels[0] || null;
    all(".variant", card).forEach(function (el) {
      el.classList.toggle("is-active", el.dataset.variant === activeVariant);
      el.toggleAttribute("data-unused", keys.indexOf(el.dataset.variant) === -1);
    });
    all(".content-panel", card).forEach(function (panel) {
      panel.classList.toggle("is-active", panel.dataset.channel === activeChannel);
    });
    all("[data-variant-settings]", card).forEach(function (row) { row.hidden = keys.length < 2; });
    var variantTabs = card.querySelector("[data-variant-tabs]");
    if (variantTabs) variantTabs.hidden = keys.length < 2;
    all("[data-variant-tab]", card).forEach(function (tab) {
      var on = tab.dataset.variantTab === activeVariant;
      tab.hidden = keys.indexOf(tab.dataset.variantTab) === -1;
      tab.classList.toggle("is-active", on);
      tab.setAttribute("aria-selected", on ? "true" : "false");
    });
    all("[data-channel-tab]", card).forEach(function (tab) {
      var channel = tab.dataset.channelTab, on = channel === activeChannel;
      tab.hidden = channels.indexOf(channel) === -1;
      tab.classList.toggle("is-active", on);
      tab.setAttribute("aria-selected", on ? "true" : "false");
      var broken = card.querySelector('.variant[data-variant="' + activeVariant + '"] .content-panel[data-channel="' + channel + '"][data-has-errors]');
      tab.classList.toggle("has-error", !!broken);
    });
    var hint = card.querySelector("[data-no-channel]");
    if (hint) hint.hidden = channels.length > 0;
    var previewVariant = form.querySelector("[data-preview-variant]");
    var previewChannel = form.querySelector("[data-preview-channel]");
    var changed = previewVariant.value !== activeVariant || previewChannel.value !== (activeChannel || "email");
    previewVariant.value = activeVariant;
    previewChannel.value = activeChannel || "email";
    if (changed) document.body.dispatchEvent(new CustomEvent("preview-changed"));
  }

  function updateCounter(textarea) {
    var counter = textarea.closest(".field").querySelector("[data-sms-counter]");
    if (!counter) return;
    var length = smsLength(textarea.value.replace(/\r\n/g, "\n"));
    counter.querySelector("[data-sms-encoding]").textContent = length.encoding;
    counter.querySelector("[data-sms-units]").textContent = length.characters;
    counter.querySelector("[data-sms-limit]").textContent = length.segments > 1 ? length.perSegment * length.segments : length.perSegment;
    counter.querySelector("[data-sms-segments]").textContent = length.segments + (length.segments === 1 ? " segment" : " segments");
    counter.classList.toggle("is-unicode", length.encoding === "UCS-2");
    counter.classList.toggle("is-long", length.segments > 1);
  }

  function showSchedule() {
    var checked = form.querySelector("input[name=schedule]:checked");
    var value = checked ? checked.value : "now";
    all("[data-schedule-panel]", form).forEach(function (panel) {
      panel.hidden = panel.dataset.schedulePanel !== value && !panel.classList.contains("has-error");
    });
  }

  function showStaged() {
    var toggle = form.querySelector("[data-staged-toggle]");
    var panel = form.querySelector("[data-staged-panel]");
    if (toggle && panel) panel.hidden = !toggle.checked && !panel.querySelector(".has-error");
  }

  // An error is about the value that was sent: once it is edited, the preview and the next
  // save judge it again.
  function settle(input) {
    var field = input.closest(".field.has-error");
    if (!field) return;
    field.classList.remove("has-error");
    all(".field-error", field).forEach(function (error) { error.hidden = true; });
    var panel = field.closest(".content-panel");
    if (panel && !panel.querySelector(".has-error, .section-error:not([hidden])")) {
      panel.removeAttribute("data-has-errors");
      apply();
    }
  }

  function insert(text) {
    var target = lastInput;
    if (!target || !target.offsetParent) {
      target = card.querySelector(".variant.is-active .content-panel.is-active [data-content-input]");
    }
    if (!target) return;
    var start = target.selectionStart == null ? target.value.length : target.selectionStart;
    var end = target.selectionEnd == null ? start : target.selectionEnd;
    target.value = target.value.slice(0, start) + text + target.value.slice(end);
    target.focus();
    target.setSelectionRange(start + text.length, start + text.length);
    target.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function initCompose() {
    form = document.getElementById("campaign-form");
    card = document.getElementById("content-card");
    if (!form || !card) return;
    card.classList.add("is-enhanced");

    var broken = card.querySelector(".content-panel[data-has-errors]");
    if (broken) {
      activeVariant = broken.dataset.variantKey;
      activeChannel = broken.dataset.channel;
    }
    apply();
    showSchedule();
    showStaged();
    all("textarea[data-sms-body]", form).forEach(updateCounter);

    form.addEventListener("change", function (event) {
      var target = event.target;
      if (target.matches("input[data-channel-toggle], select[name=variant_count]")) apply();
      if (target.name === "schedule") showSchedule();
      if (target.matches("[data-staged-toggle]")) showStaged();
    });
    form.addEventListener("input", function (event) {
      if (event.target.matches("textarea[data-sms-body]")) updateCounter(event.target);
      settle(event.target);
    });
    form.addEventListener("focusin", function (event) {
      if (event.target.matches("[data-content-input]")) lastInput = event.target;
    });
    form.addEventListener("click", function (event) {
      var variantTab = event.target.closest("[data-variant-tab]");
      var channelTab = event.target.closest("[data-channel-tab]");
      var variable = event.target.closest("[data-insert]");
      if (variantTab) { activeVariant = variantTab.dataset.variantTab; apply(); }
      if (channelTab) { activeChannel = channelTab.dataset.channelTab; apply(); }
      if (variable) insert(variable.dataset.insert);
    });
    var summary = document.getElementById("form-errors");
    if (summary) summary.scrollIntoView({ block: "center" });
  }

  function initConfirm() {
    all("form[data-confirm]").forEach(function (confirmForm) {
      confirmForm.addEventListener("submit", function (event) {
        if (!window.confirm(confirmForm.dataset.confirm)) event.preventDefault();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    initCompose();
    initConfirm();
  });
})();
