// The journey builder page: mounts the canvas (static/build/journey-canvas.js), saves the
// draft as it changes, and keeps the outline and the side panel in step with the selection.
// The side panel itself is server-rendered (htmx); this only loads it and passes what a save
// changed back to the canvas.
(function () {
  "use strict";

  var dataElement = document.getElementById("journey-data");
  var canvasElement = document.getElementById("journey-canvas");
  if (!dataElement || !canvasElement) return;
  var data = JSON.parse(dataElement.textContent);
  var urls = data.urls;
  var csrf = (JSON.parse(document.body.getAttribute("hx-headers") || "{}") || {})["X-CSRFToken"];
  var outline = document.getElementById("journey-outline");
  var panel = document.getElementById("journey-panel");
  var statusElement = document.getElementById("save-status");
  var SAVE_DELAY_MS = 700;
  var RETRY_MS = 5000;

  if (!window.JourneyCanvas) {
    statusElement.dataset.state = "error";
    statusElement.textContent = "The canvas did not load: run `make assets`, then reload.";
    return;
  }

  var canvas = window.JourneyCanvas.mount(canvasElement, {
    graph: data.graph,
    ports: data.ports,
    nodeTypes: data.nodeTypes,
    defaults: data.defaults,
    palette: document.getElementById("journey-palette"),
    minimap: document.getElementById("journey-minimap"),
  });
  window.journeyBuilder = { canvas: canvas };
  var problemCounts = data.problems || {};
  canvas.setProblems(problemCounts);

  // --- Saving the draft ---------------------------------------------------------------------

  var pending = false;
  var timer = null;
  var running = null;

  function clock(iso) {
    var date = iso ? new Date(iso) : new Date();
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  function setStatus(state, text) {
    statusElement.dataset.state = state;
    statusElement.textContent = text;
  }

  function changed() {
    pending = true;
    setStatus("pending", "Unsaved changes");
    clearTimeout(timer);
    timer = setTimeout(flush, SAVE_DELAY_MS);
  }

  // Save now if anything is waiting; resolves (true when saved) once the server has it all.
  function flush() {
    canvas.commit();
    clearTimeout(timer);
    timer = null;
    if (running) return running.then(flush);
    if (!pending) return Promise.resolve(true);
    pending = false;
    setStatus("saving", "Saving…");
    running = fetch(urls.draft, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: "application/json" },
      body: JSON.stringify(canvas.getGraph()),
    })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          return { ok: response.ok, status: response.status, body: body };
        });
      })
      .then(function (result) {
        running = null;
        if (!result.ok) {
          pending = true;
          var detail = (result.body.errors || []).map(function (e) { return e.field + ": " + e.message; }).join("; ");
          setStatus("error", "Not saved: " + (result.body.message || "the server answered " + result.status) +
            (detail ? " (" + detail + ")" : ""));
          if (result.status >= 500) timer = setTimeout(flush, RETRY_MS);
          return false;
        }
        showProblems(result.body.problems || []);
        if (pending) return flush();
        setStatus("saved", "Saved " + clock(result.body.saved_at));
        return true;
      }, function () {
        running = null;
        pending = true;
        setStatus("error", "Not saved: no connection to the server. Retrying…");
        timer = setTimeout(flush, RETRY_MS);
        return false;
      });
    return running;
  }

  window.addEventListener("beforeunload", function (event) {
    if (pending || running) {
      flush();
      event.preventDefault();
    }
  });

  function showProblems(problems) {
    problemCounts = {};
    problems.forEach(function (problem) {
      if (problem.node) problemCounts[problem.node] = (problemCounts[problem.node] || 0) + 1;
    });
    canvas.setProblems(problemCounts);
    drawOutline();
  }

  // --- The outline: the steps in graph order, usable from the keyboard ------------------------

  function graphOrder(graph) {
    var byId = {};
    var out = {};
    graph.nodes.forEach(function (node) { byId[node.id] = node; });
    graph.edges.forEach(function (edge) { out[edge.from + "\u0000" + edge.port] = edge.to; });
    var seen = {};
    var order = [];
    function visit(id, via) {
      if (seen[id] || !byId[id]) return;
      seen[id] = true;
      order.push({ node: byId[id], via: via });
      canvas.portsOf(id).forEach(function (port) {
        var next = out[id + "\u0000" + port];
        if (next) visit(next, { from: byId[id], port: port });
      });
    }
    graph.nodes.forEach(function (node) { if (node.type === "trigger") visit(node.id, null); });
    graph.nodes.forEach(function (node) { visit(node.id, null); });
    return order;
  }

  function typeLabel(type) {
    return (data.nodeTypes[type] && data.nodeTypes[type].label) || type;
  }

  function drawOutline() {
    var graph = canvas.getGraph();
    var focused = document.activeElement && document.activeElement.closest("#journey-outline [data-node]");
    var focusedId = focused ? focused.dataset.node : null;
    var selected = canvas.selected().node;
    outline.replaceChildren();
    graphOrder(graph).forEach(function (item) {
      var node = item.node;
      var li = document.createElement("li");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "jb-outline-item";
      button.dataset.node = node.id;
      if (node.id === selected) button.setAttribute("aria-current", "true");
      var swatch = document.createElement("span");
      swatch.className = "jc-swatch jc-t-" + node.type;
      swatch.setAttribute("aria-hidden", "true");
      var text = document.createElement("span");
      text.className = "jb-outline-text";
      var name = document.createElement("strong");
      name.textContent = node.label || typeLabel(node.type);
      var meta = document.createElement("small");
      meta.textContent = typeLabel(node.type) + (item.via ? " · after " + (item.via.from.label || typeLabel(item.via.from.type)) +
        " (" + item.via.port + ")" : node.type === "trigger" ? "" : " · not connected");
      text.append(name, meta);
      button.append(swatch, text);
      var count = problemCounts[node.id];
      if (count) {
        var badge = document.createElement("span");
        badge.className = "jb-outline-problems";
        badge.textContent = count;
        badge.title = count + (count === 1 ? " problem" : " problems");
        var hidden = document.createElement("span");
        hidden.className = "sr-only";
        hidden.textContent = ", " + badge.title;
        button.append(badge, hidden);
      }
      li.append(button);
      outline.append(li);
    });
    if (!outline.children.length) {
      var empty = document.createElement("li");
      empty.className = "empty-inline";
      empty.textContent = "No steps yet: add one from the palette.";
      outline.append(empty);
    }
    if (focusedId) {
      var again = outline.querySelector('[data-node="' + CSS.escape(focusedId) + '"]');
      if (again) again.focus();
    }
  }

  outline.addEventListener("click", function (event) {
    var item = event.target.closest("[data-node]");
    if (item) canvas.select(item.dataset.node);
  });
  outline.addEventListener("keydown", function (event) {
    var items = Array.prototype.slice.call(outline.querySelectorAll("[data-node]"));
    var index = items.indexOf(document.activeElement);
    if (index < 0) return;
    var next = null;
    if (event.key === "ArrowDown" || event.key === "ArrowRight") next = items[Math.min(index + 1, items.length - 1)];
    else if (event.key === "ArrowUp" || event.key === "ArrowLeft") next = items[Math.max(index - 1, 0)];
    else if (event.key === "Home") next = items[0];
    else if (event.key === "End") next = items[items.length - 1];
    if (next) {
      event.preventDefault();
      next.focus();
    }
  });

  // --- The side panel -------------------------------------------------------------------------

  var panelFor; // the node id the panel shows, null for the journey's settings
  var savedNode = null;

  function loadPanel(id, force) {
    if (!force && panelFor === id) return Promise.resolve();
    panelFor = id;
    return flush().then(function () {
      if (panelFor !== id) return;
      var url = id ? urls.node.replace("__node__", encodeURIComponent(id)) : urls.settings;
      return window.htmx.ajax("GET", url, { target: "#journey-panel", swap: "innerHTML" });
    });
  }

  function markSelection(id) {
    outline.querySelectorAll("[data-node]").forEach(function (item) {
      if (item.dataset.node === id) item.setAttribute("aria-current", "true");
      else item.removeAttribute("aria-current");
    });
  }

  // Inputs that belong to one kind of a node ("wait until an event") show only for that kind.
  function showKindFields(root) {
    root.querySelectorAll("form [data-when]").forEach(function (row) {
      var rule = row.dataset.when.split(":");
      var control = row.closest("form").elements[rule[0]];
      var value = control ? control.value : "";
      row.hidden = rule[1].split(",").indexOf(value) < 0;
    });
  }

  panel.addEventListener("change", function (event) {
    if (event.target.matches("select")) showKindFields(panel);
  });

  document.body.addEventListener("journeyNodeSaved", function (event) {
    savedNode = event.detail;
    problemCounts[savedNode.id] = (savedNode.problems || []).length;
    canvas.setProblems(problemCounts);
  });
  document.body.addEventListener("journeySettingsSaved", function (event) {
    canvas.setSettings(event.detail.settings);
  });
  document.body.addEventListener("htmx:afterSettle", function (event) {
    if (!panel.contains(event.detail.elt) && event.detail.elt !== panel) return;
    showKindFields(panel);
    if (savedNode) {
      var script = document.getElementById("journey-node-saved");
      var config = script ? JSON.parse(script.textContent).config : undefined;
      canvas.updateNode(savedNode.id, { label: savedNode.label, ports: savedNode.ports, config: config });
      savedNode = null;
    }
  });
  document.body.addEventListener("htmx:responseError", function (event) {
    if (event.detail.target === panel && event.detail.xhr.status === 404) {
      panel.replaceChildren();
      var note = document.createElement("p");
      note.className = "empty-inline";
      note.textContent = "This step is not in the saved draft yet; try again in a moment.";
      panel.append(note);
    }
  });
  // Whatever is posted (a panel form, "Validate") is about the saved draft: save first.
  document.body.addEventListener("htmx:confirm", function (event) {
    if (event.detail.verb !== "post") return;
    event.preventDefault();
    flush().then(function () { event.detail.issueRequest(true); });
  });
  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.elt && event.detail.elt.id === "journey-problems") {
      event.detail.elt.focus({ preventScroll: true });
      event.detail.elt.scrollIntoView({ block: "nearest", behavior: "smooth" });
    }
  });

  document.addEventListener("click", function (event) {
    var remove = event.target.closest("[data-delete-node]");
    if (remove) {
      canvas.removeNode(remove.dataset.deleteNode);
      return;
    }
    var problem = event.target.closest("[data-select-node]");
    if (problem) {
      var id = problem.dataset.selectNode || null;
      canvas.select(id);
      if (!id) loadPanel(null);
      canvasElement.scrollIntoView({ block: "nearest" });
    }
  });

  // --- The canvas and its toolbar -------------------------------------------------------------

  var toolbar = document.querySelector(".jb-toolbar");
  var actions = {
    undo: function () { canvas.undo(); },
    redo: function () { canvas.redo(); },
    "zoom-in": function () { canvas.zoomIn(); },
    "zoom-out": function () { canvas.zoomOut(); },
    fit: function () { canvas.fit(); },
    layout: function () { canvas.layout(); },
    delete: function () { canvas.removeSelected(); },
  };
  toolbar.addEventListener("click", function (event) {
    var button = event.target.closest("[data-canvas]");
    if (button && actions[button.dataset.canvas]) actions[button.dataset.canvas]();
  });

  function setDisabled(name, disabled) {
    var button = toolbar.querySelector('[data-canvas="' + name + '"]');
    if (button) button.disabled = disabled;
  }

  canvas.on("change", function () {
    changed();
    drawOutline();
  });
  canvas.on("history", function (state) {
    setDisabled("undo", !state.canUndo);
    setDisabled("redo", !state.canRedo);
  });
  function reloadSelected() {
    var selected = canvas.selected().node;
    if (selected) loadPanel(selected, true);
  }
  canvas.on("undo", reloadSelected);
  canvas.on("redo", reloadSelected);
  canvas.on("select", function (id) {
    markSelection(id);
    setDisabled("delete", !id);
    loadPanel(id);
  });
  canvas.on("select-edge", function () {
    setDisabled("delete", false);
  });

  // Undo and redo also work while the focus is on the page rather than in the canvas or a form.
  document.addEventListener("keydown", function (event) {
    if (!(event.ctrlKey || event.metaKey) || event.key.toLowerCase() !== "z" && event.key.toLowerCase() !== "y") return;
    if (event.target.closest("#journey-canvas, input, textarea, select, [contenteditable]")) return;
    event.preventDefault();
    if (event.key.toLowerCase() === "y" || event.shiftKey) canvas.redo();
    else canvas.undo();
  });

  if (statusElement.dataset.savedAt) setStatus("saved", "Saved " + clock(statusElement.dataset.savedAt));
  drawOutline();
  // A link from a problem elsewhere (publish, dry run, test) names the step: open it.
  var wanted = new URLSearchParams(window.location.search).get("node");
  if (wanted) canvas.select(wanted);
  else loadPanel(null);
})();
