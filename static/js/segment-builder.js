// The visual rule editor of the segment builder.
//
// The JSON rule tree in <textarea name="rules"> is the state that is submitted and
// previewed; this editor reads it into a small model, draws groups and conditions from the
// model, and writes the model back as JSON after every edit, then fires "rules-changed" so
// htmx refreshes the live preview. Errors from the preview come back with their paths in
// the tree ("rules.all[1].count") and are shown beside the condition they belong to.
(function () {
  "use strict";

  var KINDS = [
    ["profile", "Profile field"],
    ["attribute", "Custom attribute"],
    ["event", "Event"],
    ["subscribed", "Subscription"],
    ["reachable", "Reachable"],
    ["segment", "In segment"],
  ];
  var VALUE_TYPES = [["text", "text"], ["number", "number"], ["bool", "true/false"], ["date", "date"]];
  var NO_VALUE = { exists: true, not_exists: true };
  var LIST_OPS = { "in": true, not_in: true };
  var DAY_OPS = { within_days: true, before_days: true };
  var ISO_DATE = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/;

  var data, textarea, root, model, form, uid = 0;

  function init() {
    root = document.getElementById("rule-builder");
    textarea = document.getElementById("rules-input");
    form = document.getElementById("segment-form");
    if (form) {
      form.addEventListener("change", function (event) {
        if (event.target.name === "kind") showKind();
      });
      showKind();
    }
    document.querySelectorAll("form[data-confirm]").forEach(function (confirmForm) {
      confirmForm.addEventListener("submit", function (event) {
        if (!window.confirm(confirmForm.dataset.confirm)) event.preventDefault();
      });
    });
    if (!root || !textarea) return;
    document.getElementById("rules-card").classList.add("is-enhanced");
    data = JSON.parse(document.getElementById("builder-data").textContent);
    document.querySelectorAll("[data-editor-mode]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () { setMode(button.dataset.editorMode); });
    });
    document.body.addEventListener("htmx:afterSwap", function (event) {
      if (event.detail.target && event.detail.target.id === "preview") showErrors(readErrors());
    });
    if (!load()) setMode("json", true);
    else setMode("visual", true);
  }

  function showKind() {
    var checked = form.querySelector("input[name=kind]:checked");
    if (!checked) return;
    document.querySelectorAll("[data-kind-panel]").forEach(function (panel) {
      panel.hidden = panel.dataset.kindPanel !== checked.value;
    });
  }

  // --- Mode: visual editor or JSON text ---------------------------------------------------

  var mode = "visual";

  function setMode(next, initial) {
    var jsonError = document.getElementById("json-error");
    if (next === "visual" && !initial) {
      if (!load()) {
        jsonError.hidden = false;
        return;
      }
    }
    jsonError.hidden = true;
    mode = next;
    root.hidden = next !== "visual";
    document.getElementById("json-editor").classList.toggle("is-open", next === "json");
    document.querySelectorAll("[data-editor-mode]").forEach(function (button) {
      var active = button.dataset.editorMode === next;
      button.classList.toggle("is-active", active);
      button.setAttribute("aria-pressed", active ? "true" : "false");
    });
    if (next === "json") {
      if (!initial) textarea.value = JSON.stringify(toJson(model), null, 2);
      textarea.focus();
    }
  }

  // Read the textarea into the model and draw it; false when it cannot be shown visually.
  function load() {
    var jsonError = document.getElementById("json-error");
    var text = textarea.value.trim();
    var parsed;
    try {
      parsed = text ? JSON.parse(text) : { all: [] };
    } catch (error) {
      jsonError.textContent = "This is not valid JSON, so the visual editor cannot show it: " + error.message;
      return false;
    }
    try {
      model = fromJson(parsed);
      if (model.type !== "group" || model.negate) model = { type: "group", mode: "all", negate: false, children: [model] };
    } catch (error) {
      jsonError.textContent = "The visual editor cannot show this rule: " + error.message + ". Edit it as JSON.";
      return false;
    }
    render();
    write(false);
    return true;
  }

  // --- JSON ⇄ model ---------------------------------------------------------------------------

  function valueType(value) {
    if (typeof value === "boolean") return "bool";
    if (typeof value === "number") return "number";
    if (Array.isArray(value)) return value.length && typeof value[0] === "number" ? "number" : "text";
    if (typeof value === "string" && ISO_DATE.test(value)) return "date";
    return "text";
  }

  function shownValue(value) {
    if (value === undefined || value === null) return "";
    if (Array.isArray(value)) return value.join(", ");
    return String(value);
  }

  function condition(source, subject) {
    // {op, value} of an attribute or event property, as the editor shows it.
    var op = source.op || "eq";
    var type = DAY_OPS[op] ? "date" : valueType(source.value);
    if (subject && subject.type) type = subject.type;
    return { op: op, value: shownValue(source.value), vtype: type };
  }

  function fromJson(node) {
    if (!node || typeof node !== "object" || Array.isArray(node)) throw new Error("a rule must be an object");
    var negate = false;
    while (Object.keys(node).length === 1 && "not" in node) {
      negate = !negate;
      node = node.not;
      if (!node || typeof node !== "object") throw new Error("“not” needs a rule");
    }
    var result;
    if ("all" in node || "any" in node) {
      var groupMode = "all" in node ? "all" : "any";
      if (!Array.isArray(node[groupMode])) throw new Error("“" + groupMode + "” needs a list");
      result = { type: "group", mode: groupMode, children: node[groupMode].map(fromJson) };
    } else if ("attr" in node) {
      var name = String(node.attr);
      if (name.indexOf("attributes.") === 0) {
        result = Object.assign({ type: "condition", kind: "attribute", key: name.slice(11) }, condition(node));
      } else {
        var field = fieldInfo(name);
        result = Object.assign({ type: "condition", kind: "profile", field: name }, condition(node, field));
      }
    } else if ("event" in node) {
      var count = node.count || { op: "gte", value: 1 };
      result = {
        type: "condition", kind: "event", name: String(node.event || ""),
        within: node.within_days === undefined || node.within_days === null ? "" : String(node.within_days),
        countOp: count.op || "gte", countValue: count.value === undefined ? "1" : String(count.value),
        where: (node.where || []).map(function (cond) {
          return Object.assign({ prop: cond.prop || "" }, condition(cond));
        }),
      };
    } else if ("subscribed" in node) {
      var spec = node.subscribed || {};
      result = { type: "condition", kind: "subscribed", topic: spec.topic || "", channel: spec.channel || "email" };
    } else if ("reachable" in node) {
      result = { type: "condition", kind: "reachable", channel: node.reachable };
    } else if ("segment" in node) {
      result = { type: "condition", kind: "segment", segment: node.segment === null ? "" : String(node.segment) };
    } else {
      throw new Error("unknown rule " + JSON.stringify(node).slice(0, 60));
    }
    result.negate = negate;
    result.id = ++uid;
    return result;
  }

  function fieldInfo(name) {
    for (var i = 0; i < data.fields.length; i++) if (data.fields[i].value === name) return data.fields[i];
    return { value: name, label: name, type: "text" };
  }

  function typedValue(text, type, op) {
    if (DAY_OPS[op]) return numberOrText(text);
    if (LIST_OPS[op]) {
      return text.split(",").map(function (part) { return part.trim(); }).filter(Boolean).map(function (part) {
        return type === "number" ? numberOrText(part) : part;
      });
    }
    if (type === "number") return numberOrText(text);
    if (type === "bool") return text === "true";
    return text;
  }

  function numberOrText(text) {
    var trimmed = String(text).trim();
    if (trimmed === "") return null;
    var number = Number(trimmed);
    return isNaN(number) ? trimmed : number;
  }

  function conditionJson(cond) {
    var out = { op: cond.op };
    if (!NO_VALUE[cond.op]) out.value = typedValue(cond.value, cond.vtype, cond.op);
    return out;
  }

  // The JSON tree; also records each node's path in the tree, for placing errors.
  function toJson(node, path) {
    path = path || "rules";
    node.path = path;
    var inner = node.negate ? path + ".not" : path;
    var out;
    if (node.type === "group") {
      out = {};
      out[node.mode] = node.children.map(function (child, index) {
        return toJson(child, inner + "." + node.mode + "[" + index + "]");
      });
    } else if (node.kind === "profile") {
      out = Object.assign({ attr: node.field }, conditionJson(node));
    } else if (node.kind === "attribute") {
      out = Object.assign({ attr: "attributes." + node.key.trim() }, conditionJson(node));
    } else if (node.kind === "event") {
      out = { event: node.name.trim() };
      if (node.where.length) {
        out.where = node.where.map(function (cond, index) {
          cond.path = inner + ".where[" + index + "]";
          return Object.assign({ prop: cond.prop.trim() }, conditionJson(cond));
        });
      }
      if (String(node.within).trim() !== "") out.within_days = numberOrText(node.within);
      var countValue = numberOrText(node.countValue);
      out.count = { op: node.countOp, value: countValue === null ? 0 : countValue };
    } else if (node.kind === "subscribed") {
      out = { subscribed: { topic: node.topic, channel: node.channel } };
    } else if (node.kind === "reachable") {
      out = { reachable: node.channel };
    } else if (node.kind === "segment") {
      out = { segment: node.segment === "" ? null : Number(node.segment) };
    }
    return node.negate ? { not: out } : out;
  }

  // Put the model into the textarea; ``notify`` asks htmx for a new preview.
  function write(notify) {
    textarea.value = JSON.stringify(toJson(model), null, 2);
    if (notify !== false) textarea.dispatchEvent(new CustomEvent("rules-changed", { bubbles: true }));
  }

  // --- New conditions -------------------------------------------------------------------------

  function blank(kind) {
    var node = { type: "condition", kind: kind, negate: false, id: ++uid };
    if (kind === "profile") Object.assign(node, { field: "lifecycle_stage", op: "eq", value: "", vtype: "text" });
    if (kind === "attribute") Object.assign(node, { key: data.attributeKeys[0] || "", op: "eq", value: "", vtype: "text" });
    if (kind === "event") Object.assign(node, { name: "", within: "", countOp: "gte", countValue: "1", where: [] });
    if (kind === "subscribed") Object.assign(node, { topic: data.topics.length ? data.topics[0].key : "", channel: "email" });
    if (kind === "reachable") Object.assign(node, { channel: "email" });
    if (kind === "segment") Object.assign(node, { segment: data.segments.length ? String(data.segments[0].id) : "" });
    return node;
  }

  function blankGroup() {
    return { type: "group", mode: "any", negate: false, id: ++uid, children: [blank("profile")] };
  }

  // --- Drawing --------------------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === undefined || value === null || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key.indexOf("on") === 0) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined || child === false) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function select(label, options, value, onchange, extra) {
    var found = false;
    var node = el("select", Object.assign({ "aria-label": label }, extra || {}),
      options.map(function (option) {
        var selected = String(option[0]) === String(value);
        found = found || selected;
        return el("option", { value: option[0], selected: selected, text: option[1] });
      }));
    if (!found && value !== undefined && value !== "") {
      node.insertBefore(el("option", { value: value, selected: true, text: value }), node.firstChild);
    }
    node.addEventListener("change", function () { onchange(node.value); });
    return node;
  }

  function input(label, value, oninput, extra) {
    var node = el("input", Object.assign({ type: "text", "aria-label": label, value: value, autocomplete: "off", spellcheck: "false" }, extra || {}));
    node.addEventListener("input", function () { oninput(node.value); write(); });
    return node;
  }

  function datalist(id, values) {
    var existing = document.getElementById(id);
    if (existing) existing.remove();
    return el("datalist", { id: id }, values.map(function (value) { return el("option", { value: value }); }));
  }

  function notToggle(node) {
    var box = el("input", { type: "checkbox", checked: node.negate });
    box.addEventListener("change", function () { node.negate = box.checked; render(); write(); });
    return el("label", { className: "rb-not", title: "Match when this is not true" }, [box, el("span", { text: "Not" })]);
  }

  function render() {
    root.innerHTML = "";
    root.appendChild(drawGroup(model, null, 0));
    root.appendChild(datalist("rb-events", data.events));
    root.appendChild(datalist("rb-attribute-keys", data.attributeKeys));
    root.appendChild(datalist("rb-stages", data.stages));
  }

  function drawGroup(group, parent, depth) {
    var box = el("div", { className: "rb-group" + (group.negate ? " is-negated" : "") + (parent ? "" : " rb-root"), "data-depth": depth, role: "group" });
    group.el = box;
    var modeSwitch = el("div", { className: "rb-mode", role: "radiogroup", "aria-label": "Match" }, [["all", "All"], ["any", "Any"]].map(function (choice) {
      return el("button", {
        type: "button", className: group.mode === choice[0] ? "is-active" : "", role: "radio",
        "aria-checked": group.mode === choice[0] ? "true" : "false", text: choice[1],
        onclick: function () { group.mode = choice[0]; render(); write(); },
      });
    }));
    var head = el("div", { className: "rb-group-head" }, [
      group.negate ? el("span", { className: "rb-not-badge", text: "NOT" }) : null,
      modeSwitch,
      el("span", { className: "rb-group-hint", text: group.mode === "all" ? "of these conditions must match" : "of these conditions may match" }),
      el("span", { className: "rb-spacer" }),
      parent ? notToggle(group) : null,
      parent ? el("button", { type: "button", className: "rb-remove", "aria-label": "Remove group", title: "Remove group", text: "×",
        onclick: function () { parent.children.splice(parent.children.indexOf(group), 1); render(); write(); } }) : null,
    ]);
    box.appendChild(head);
    var list = el("div", { className: "rb-children" });
    if (!group.children.length) {
      list.appendChild(el("p", { className: "rb-empty", text: "No conditions yet. Add one to start." }));
    }
    group.children.forEach(function (child, index) {
      if (index > 0) list.appendChild(el("div", { className: "rb-connector", "aria-hidden": "true", text: group.mode === "all" ? "and" : "or" }));
      list.appendChild(child.type === "group" ? drawGroup(child, group, depth + 1) : drawCondition(child, group));
    });
    box.appendChild(list);
    box.appendChild(el("p", { className: "rb-error", role: "alert", hidden: true }));
    box.appendChild(el("div", { className: "rb-group-actions" }, [
      el("button", { type: "button", className: "btn btn-small", "data-add": "condition", "aria-label": "Add condition",
        onclick: function () { group.children.push(blank("profile")); render(); write(); focusLast(group); } },
        [el("span", { "aria-hidden": "true", text: "+ " }), "Condition"]),
      depth < 4 ? el("button", { type: "button", className: "btn btn-small btn-ghost", "data-add": "group", "aria-label": "Add group",
        onclick: function () { group.children.push(blankGroup()); render(); write(); } },
        [el("span", { "aria-hidden": "true", text: "+ " }), "Group"]) : null,
    ]));
    return box;
  }

  function focusLast(group) {
    var last = group.children[group.children.length - 1];
    if (last && last.el) {
      var target = last.el.querySelector("input[type=text], input[type=number], input[type=date]");
      if (target) target.focus();
    }
  }

  function drawCondition(node, parent) {
    var row = el("div", { className: "rb-cond" + (node.negate ? " is-negated" : ""), "data-kind": node.kind });
    node.el = row;
    var kind = select("Condition type", KINDS, node.kind, function (value) {
      var fresh = blank(value);
      fresh.negate = node.negate;
      parent.children[parent.children.indexOf(node)] = fresh;
      render();
      write();
    }, { className: "rb-kind", "data-field": "kind" });
    var main = el("div", { className: "rb-cond-main" }, [node.negate ? el("span", { className: "rb-not-badge", text: "NOT" }) : null, kind]);
    var body = el("div", { className: "rb-cond-body" });
    ({ profile: drawProfile, attribute: drawAttribute, event: drawEvent, subscribed: drawSubscribed,
       reachable: drawReachable, segment: drawSegment })[node.kind](node, main, body);
    row.appendChild(el("div", { className: "rb-cond-line" }, [
      main,
      el("div", { className: "rb-cond-tools" }, [
        notToggle(node),
        el("button", { type: "button", className: "rb-remove", "aria-label": "Remove condition", title: "Remove condition", text: "×",
          onclick: function () { parent.children.splice(parent.children.indexOf(node), 1); render(); write(); } }),
      ]),
    ]));
    if (body.childNodes.length) row.appendChild(body);
    row.appendChild(el("p", { className: "rb-error", role: "alert", hidden: true }));
    return row;
  }

  function operators(type) {
    return data.operators[type] || data.operators.text;
  }

  // op + value controls for a condition whose value type is ``cond.vtype``.
  function valueControls(cond, container, opts) {
    var ops = operators(cond.vtype);
    if (!ops.some(function (op) { return op[0] === cond.op; })) cond.op = ops[0][0];
    container.appendChild(select("Operator", ops, cond.op, function (value) {
      var wasDays = !!DAY_OPS[cond.op];
      cond.op = value;
      if (wasDays !== !!DAY_OPS[value]) cond.value = "";
      render();
      write();
    }, { className: "rb-op", "data-field": "op" }));
    if (NO_VALUE[cond.op]) return;
    var attrs = { className: "rb-value", "data-field": "value" };
    if (DAY_OPS[cond.op]) {
      container.appendChild(input("Days", cond.value, function (v) { cond.value = v; },
        Object.assign(attrs, { type: "number", min: "0", step: "1", className: "rb-value rb-number" })));
      container.appendChild(el("span", { className: "rb-word", text: cond.op === "within_days" ? "days" : "days ago" }));
      return;
    }
    if (cond.vtype === "bool") {
      if (cond.value !== "true" && cond.value !== "false") cond.value = "true";
      container.appendChild(select("Value", [["true", "true"], ["false", "false"]], cond.value, function (v) { cond.value = v; write(); }, attrs));
      return;
    }
    if (cond.vtype === "date") {
      container.appendChild(input("Date", cond.value.slice(0, 10), function (v) { cond.value = v; }, Object.assign(attrs, { type: "date" })));
      return;
    }
    if (LIST_OPS[cond.op]) {
      container.appendChild(input("Values", cond.value, function (v) { cond.value = v; },
        Object.assign(attrs, { placeholder: cond.vtype === "number" ? "10, 20, 50" : "pro, team", className: "rb-value rb-wide" })));
      return;
    }
    if (cond.vtype === "number") {
      container.appendChild(input("Value", cond.value, function (v) { cond.value = v; },
        Object.assign(attrs, { type: "number", step: "any", className: "rb-value rb-number" })));
      return;
    }
    container.appendChild(input("Value", cond.value, function (v) { cond.value = v; },
      Object.assign(attrs, { placeholder: "value", list: opts && opts.list })));
  }

  function drawProfile(node, main) {
    main.appendChild(select("Field", data.fields.map(function (f) { return [f.value, f.label]; }), node.field, function (value) {
      var before = fieldInfo(node.field).type;
      node.field = value;
      node.vtype = fieldInfo(value).type;
      if (before !== node.vtype) { node.op = operators(node.vtype)[0][0]; node.value = ""; }
      render();
      write();
    }, { className: "rb-field", "data-field": "attr" }));
    node.vtype = fieldInfo(node.field).type;
    valueControls(node, main, { list: node.field === "lifecycle_stage" ? "rb-stages" : null });
  }

  function drawAttribute(node, main) {
    main.appendChild(input("Attribute", node.key, function (v) { node.key = v; },
      { className: "rb-key", placeholder: "attribute", list: "rb-attribute-keys", "data-field": "attr" }));
    main.appendChild(select("Value type", VALUE_TYPES, node.vtype, function (value) {
      node.vtype = value;
      node.value = value === "bool" ? "true" : "";
      render();
      write();
    }, { className: "rb-vtype" }));
    valueControls(node, main);
  }

  function drawEvent(node, main, body) {
    main.appendChild(input("Event", node.name, function (v) { node.name = v; },
      { className: "rb-event", placeholder: "event name", list: "rb-events", "data-field": "event" }));
    main.appendChild(el("span", { className: "rb-phrase" }, [
      el("span", { className: "rb-word", text: "happened" }),
      select("Count", data.countOperators, node.countOp, function (value) { node.countOp = value; write(); },
        { className: "rb-count-op", "data-field": "count" }),
      input("Times", node.countValue, function (v) { node.countValue = v; },
        { type: "number", min: "0", step: "1", className: "rb-number", "data-field": "count" }),
      el("span", { className: "rb-word", text: "times" }),
    ]));
    main.appendChild(el("span", { className: "rb-phrase" }, [
      el("span", { className: "rb-word", text: "in the last" }),
      input("Within days", node.within, function (v) { node.within = v; },
        { type: "number", min: "1", step: "1", placeholder: "any", className: "rb-number", "data-field": "within_days",
          title: "Leave empty to count every event, however old" }),
      el("span", { className: "rb-word", text: "days" }),
    ]));

    node.where.forEach(function (cond, index) {
      var line = el("div", { className: "rb-where" }, [el("span", { className: "rb-word rb-where-label", text: index ? "and" : "where" })]);
      cond.el = line;
      line.appendChild(input("Property", cond.prop, function (v) { cond.prop = v; }, { className: "rb-key", placeholder: "property", "data-field": "prop" }));
      line.appendChild(select("Value type", VALUE_TYPES, cond.vtype, function (value) {
        cond.vtype = value;
        cond.value = value === "bool" ? "true" : "";
        render();
        write();
      }, { className: "rb-vtype" }));
      valueControls(cond, line);
      line.appendChild(el("button", { type: "button", className: "rb-remove", "aria-label": "Remove property condition", text: "×",
        onclick: function () { node.where.splice(index, 1); render(); write(); } }));
      line.appendChild(el("p", { className: "rb-error", role: "alert", hidden: true }));
      body.appendChild(line);
    });
    body.appendChild(el("button", { type: "button", className: "rb-link", text: "+ where a property…",
      onclick: function () { node.where.push({ prop: "", op: "eq", value: "", vtype: "text" }); render(); write(); } }));
  }

  function drawSubscribed(node, main) {
    if (!data.topics.length) {
      main.appendChild(el("span", { className: "rb-word muted", text: "No topics yet: an administrator adds them first." }));
      return;
    }
    main.appendChild(el("span", { className: "rb-word", text: "subscribed to" }));
    main.appendChild(select("Topic", data.topics.map(function (t) { return [t.key, t.name]; }), node.topic,
      function (value) { node.topic = value; write(); }, { "data-field": "subscribed" }));
    main.appendChild(el("span", { className: "rb-word", text: "by" }));
    main.appendChild(select("Channel", data.channels.map(function (c) { return [c.value, c.label]; }), node.channel,
      function (value) { node.channel = value; write(); }, { "data-field": "subscribed" }));
  }

  function drawReachable(node, main) {
    main.appendChild(el("span", { className: "rb-word", text: "by" }));
    main.appendChild(select("Channel", data.channels.map(function (c) { return [c.value, c.label]; }), node.channel,
      function (value) { node.channel = value; write(); }, { "data-field": "reachable" }));
    main.appendChild(el("span", { className: "rb-word muted", text: "address on file, consent not revoked" }));
  }

  function drawSegment(node, main) {
    if (!data.segments.length) {
      main.appendChild(el("span", { className: "rb-word muted", text: "No other segments yet." }));
      return;
    }
    main.appendChild(select("Segment", data.segments.map(function (s) { return [s.id, s.name]; }), node.segment,
      function (value) { node.segment = value; write(); }, { "data-field": "segment" }));
  }

  // --- Errors beside their conditions -------------------------------------------------------------

  function readErrors() {
    var script = document.getElementById("preview-errors");
    if (!script) return [];
    try { return JSON.parse(script.textContent); } catch (error) { return []; }
  }

  function within(path, prefix) {
    if (path === prefix) return true;
    if (path.indexOf(prefix) !== 0) return false;
    var next = path.charAt(prefix.length);
    return next === "." || next === "[";
  }

  function targets(node, list) {
    list.push(node);
    if (node.type === "group") node.children.forEach(function (child) { targets(child, list); });
    if (node.kind === "event") node.where.forEach(function (cond) { list.push(cond); });
    return list;
  }

  function showErrors(errors) {
    if (!model || !root) return;
    root.querySelectorAll(".rb-error").forEach(function (p) { p.hidden = true; p.textContent = ""; });
    root.querySelectorAll(".has-error, .invalid").forEach(function (node) { node.classList.remove("has-error", "invalid"); });
    var all = targets(model, []);
    errors.forEach(function (error) {
      var best = null;
      all.forEach(function (node) {
        if (node.path && node.el && within(error.path, node.path) && (!best || node.path.length > best.path.length)) best = node;
      });
      if (!best) return;
      var box = best.el;
      box.classList.add("has-error");
      var message = box.querySelector(":scope > .rb-error");
      if (message) {
        message.hidden = false;
        message.textContent = (message.textContent ? message.textContent + " " : "") + capitalise(error.message) + ".";
      }
      var rest = error.path.slice(best.path.length).replace(/^(\.not)+/, "").replace(/^\./, "");
      var field = rest.split(/[.\[]/)[0];
      if (field) {
        box.querySelectorAll('[data-field="' + field + '"]').forEach(function (control) {
          if (control.closest(".rb-cond, .rb-where, .rb-group") === box) control.classList.add("invalid");
        });
      }
    });
  }

  function capitalise(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
