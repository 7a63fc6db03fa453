/*
 * The journey canvas: a journey graph (journeys/graph.py's schema) drawn and edited with
 * @antv/x6, laid out with @dagrejs/dagre. Bundled by static/src/build.mjs into
 * static/build/journey-canvas.js (+ .css); the builder page and the live map both use it.
 *
 * API — keep it stable, the live map is built on it:
 *
 *   `element` is sized by the page (give it a CSS height); the canvas fills it and follows its size.
 *
 *   const canvas = window.JourneyCanvas.mount(element, {
 *     graph,        // {nodes: [{id, type, label, config, x, y}], edges: [{from, port, to}], settings}
 *     ports,        // {nodeId: ["yes", "no"]}: each node's output ports (journeys.graph.ports)
 *     nodeTypes,    // {type: {label, description}} (journeys.graph.NODE_TYPES), in palette order
 *     defaults,     // {type: {config, ports}}: what a node added from the palette starts with
 *     readOnly,     // true for the live map: no palette, no editing; nodes can still be selected
 *     palette,      // element the palette of node types is drawn in (editing only)
 *     minimap,      // element the minimap is drawn in (optional)
 *     onSelect,     // fn(nodeId | null), like canvas.on("select", fn)
 *     onChange,     // fn(graph), like canvas.on("change", fn); never called in read-only mode
 *   });
 *
 *   canvas.on(name, fn) / canvas.off(name, fn)
 *       "select"   node id, or null when nothing (or a connection) is selected
 *       "change"   the whole graph in our schema, positions included, after every edit
 *       "history"  {canUndo, canRedo}, after every edit, undo and redo
 *       "undo", "redo"  after an undo or a redo (the selected node's settings may have changed)
 *       "select-edge"   {from, port, to} when a connection is clicked
 *   canvas.getGraph()                      the graph in our schema
 *   canvas.commit()                        emit a pending "change" now (changes are batched per frame)
 *   canvas.portsOf(id)                     a node's output ports, in order
 *   canvas.select(nodeId | null)           select (and bring into view) a node, or nothing
 *   canvas.selected()                      {node: id | null, edge: {from, port, to} | null}
 *   canvas.updateNode(id, {label, ports, config})
 *                                          after the side panel saved a node: edges whose port
 *                                          still exists are kept, the others removed
 *   canvas.setSettings(settings)           the journey settings carried in getGraph()
 *   canvas.addNode(type)                   add a node of that type in the middle of the view
 *   canvas.removeSelected() / canvas.removeNode(id)
 *   canvas.undo() / canvas.redo() / canvas.canUndo() / canvas.canRedo()
 *   canvas.zoomIn() / canvas.zoomOut() / canvas.fit() / canvas.layout()   (layout: dagre, top to bottom)
 *   canvas.setCounts({nodes: {id: {now, entered}}, edges: {"from:port": n}, conversion: {"from:port": rate}})
 *                                          live figures: a badge with the customers at each node
 *                                          now (and how many entered), a label on each edge with
 *                                          how many passed it and its conversion rate (0..1);
 *                                          ids left out keep their last figures
 *   canvas.setProblems({id: count})        a warning dot on nodes with problems ({} clears)
 *   canvas.destroy()
 *
 * Node ids are stable (a publish maps old nodes to new ones by id), so the canvas never
 * renames a node; new nodes get "<type>_<random>".
 */

import dagre from "@dagrejs/dagre";
import { Dnd, Graph, History, Keyboard, MiniMap, Snapline } from "@antv/x6";

const NODE_WIDTH = 216;
const NODE_HEIGHT = 68;
const MIN_READABLE_SCALE = 0.75;
const PORT_SPACING = 68;
const IN_PORT = "in";
const OUT = "out:";
// Options that mark changes as decoration (counts, warnings): not edits, not undoable.
const DECOR = { decor: true };

const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
const TYPE_COLOURS = {
  trigger: "#15803d",
  send: "#2563eb",
  wait: "#b45309",
  condition: "#7c3aed",
  split: "#0f766e",
  nba: "#be185d",
  update: "#0e7490",
  webhook: "#475569",
  task: "#c2410c",
  exit: "#6b7280",
};

let registered = false;

function registerShapes() {
  if (registered) return;
  registered = true;
  Graph.registerNode(
    "journey-node",
    {
      // Not inherited from x6's "rect", whose attrs style every <rect> and <text> by tag name.
      width: NODE_WIDTH,
      height: NODE_HEIGHT,
      markup: [
        { tagName: "rect", selector: "body" },
        { tagName: "rect", selector: "accent" },
        { tagName: "text", selector: "kind" },
        { tagName: "text", selector: "label" },
        { tagName: "text", selector: "entered" },
        { tagName: "circle", selector: "flag" },
        {
          tagName: "g",
          selector: "badge",
          children: [
            { tagName: "rect", selector: "badgeBody" },
            { tagName: "text", selector: "badgeText" },
          ],
        },
      ],
      attrs: {
        body: {
          refWidth: "100%", refHeight: "100%", rx: 9, ry: 9,
          fill: "#ffffff", stroke: "#cfd4dc", strokeWidth: 1, class: "jc-body",
        },
        accent: { x: 0, y: 10, width: 4, refHeight: -20, rx: 2, fill: "#4338ca" },
        kind: {
          refX: 16, refY: 15, fontSize: 10.5, fontWeight: 650, fill: "#7a8494", fontFamily: FONT,
          textAnchor: "start", textVerticalAnchor: "middle", class: "jc-kind",
        },
        label: {
          refX: 16, refY: 34, fontSize: 13.5, fontWeight: 650, fill: "#18202c", fontFamily: FONT,
          textAnchor: "start", textVerticalAnchor: "middle", class: "jc-label",
          textWrap: { text: "", width: -30, height: 20, ellipsis: true },
        },
        entered: {
          refX: "100%", x: -12, refY: 15, fontSize: 11, fill: "#7a8494", fontFamily: FONT,
          textAnchor: "end", textVerticalAnchor: "middle", text: "",
        },
        flag: { refX: "100%", cx: -12, cy: 12, r: 4, fill: "#b42318", display: "none", class: "jc-flag" },
        badge: { refX: "100%", x: -6, y: -11, display: "none", class: "jc-badge" },
        badgeBody: { x: -46, width: 52, height: 22, rx: 11, ry: 11, fill: "#4338ca" },
        badgeText: {
          x: -20, y: 11, fontSize: 12, fontWeight: 700, fill: "#ffffff", fontFamily: FONT,
          textAnchor: "middle", textVerticalAnchor: "middle", text: "",
        },
      },
      ports: {
        groups: {
          in: {
            position: "top",
            attrs: {
              circle: { r: 6, magnet: "passive", fill: "#ffffff", stroke: "#98a2b3", strokeWidth: 1.5, class: "jc-port jc-port-in" },
            },
          },
          out: {
            position: "bottom",
            // Port names sit inside the node, above their port, clear of the connections below.
            label: { position: { name: "top", args: { y: -9 } } },
            attrs: {
              circle: { r: 6, magnet: true, fill: "#ffffff", stroke: "#4338ca", strokeWidth: 1.5, class: "jc-port jc-port-out" },
              text: { fontSize: 10.5, fontWeight: 600, fill: "#4a5566", fontFamily: FONT, class: "jc-port-label" },
            },
          },
        },
      },
    },
    true,
  );
  Graph.registerEdge(
    "journey-edge",
    {
      inherit: "edge",
      attrs: {
        line: {
          stroke: "#98a2b3", strokeWidth: 1.6, class: "jc-line",
          targetMarker: { name: "block", width: 8, height: 6 },
        },
      },
      connector: { name: "smooth", args: { direction: "V" } },
      zIndex: 0,
    },
    true,
  );
}

function short(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "";
  n = Number(n);
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1).replace(/\.0$/, "") + "M";
  if (Math.abs(n) >= 1e4) return Math.round(n / 1e3) + "k";
  return n.toLocaleString("en");
}

function percent(rate) {
  if (rate === null || rate === undefined || !Number.isFinite(Number(rate))) return "";
  const value = Number(rate) * 100;
  return (value >= 10 || value === 0 ? value.toFixed(0) : value.toFixed(1)) + "%";
}

function randomId(type) {
  const letters = "abcdefghijkmnopqrstuvwxyz23456789";
  let suffix = "";
  const bytes = new Uint8Array(5);
  crypto.getRandomValues(bytes);
  for (const byte of bytes) suffix += letters[byte % letters.length];
  return `${type}_${suffix}`;
}

function clone(value) {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
}

class Emitter {
  constructor() {
    this.handlers = {};
  }
  on(name, fn) {
    (this.handlers[name] = this.handlers[name] || []).push(fn);
  }
  off(name, fn) {
    this.handlers[name] = (this.handlers[name] || []).filter((h) => h !== fn);
  }
  emit(name, value) {
    for (const fn of this.handlers[name] || []) fn(value);
  }
}

class JourneyCanvasImpl extends Emitter {
  constructor(element, options) {
    super();
    registerShapes();
    this.element = element;
    this.options = options;
    this.readOnly = Boolean(options.readOnly);
    this.nodeTypes = options.nodeTypes || {};
    this.defaults = options.defaults || {};
    this.settings = clone((options.graph && options.graph.settings) || {});
    this.selectedNode = null;
    this.selectedEdge = null;
    this.loading = true;
    this.changeQueued = false;
    if (options.onSelect) this.on("select", options.onSelect);
    if (options.onChange) this.on("change", options.onChange);

    element.classList.add("jc-canvas");
    if (this.readOnly) element.classList.add("jc-readonly");
    // x6 pins its container to the size of the container's parent: drawing into a surface of
    // our own keeps that parent the page's element, sized by the page alone (no feedback loop).
    this.surface = document.createElement("div");
    this.surface.className = "jc-surface";
    Object.assign(this.surface.style, { position: "absolute", inset: "0", overflow: "hidden" });
    if (getComputedStyle(element).position === "static") element.style.position = "relative";
    element.append(this.surface);
    this.graph = new Graph({
      container: this.surface,
      autoResize: true,
      background: { color: "#f8f9fb" },
      grid: { size: 10, visible: true, type: "dot", args: { color: "#d5d9e0", thickness: 1 } },
      panning: { enabled: true, eventTypes: ["leftMouseDown", "mouseWheel"] },
      mousewheel: { enabled: true, modifiers: ["ctrl", "meta"], factor: 1.1, minScale: 0.25, maxScale: 2 },
      scaling: { min: 0.25, max: 2 },
      interacting: this.readOnly
        ? { nodeMovable: false, edgeMovable: false, magnetConnectable: false, arrowheadMovable: false, vertexMovable: false, vertexAddable: false, vertexDeletable: false, edgeLabelMovable: false }
        : { edgeLabelMovable: false, vertexAddable: false },
      highlighting: {
        magnetAvailable: { name: "className", args: { className: "jc-available" } },
        magnetAdsorbed: { name: "className", args: { className: "jc-adsorbed" } },
      },
      connecting: this.connectingOptions(),
    });

    if (!this.readOnly) {
      this.graph.use(new Snapline({ enabled: true, sharp: true }));
      this.graph.use(new Keyboard({ enabled: true, global: false }));
    }
    if (options.minimap) {
      this.graph.use(
        new MiniMap({ container: options.minimap, width: 160, height: 104, padding: 8, scalable: false }),
      );
    }

    this.load(options.graph || { nodes: [], edges: [] }, options.ports || {});

    if (!this.readOnly) {
      this.history = new History({
        enabled: true,
        stackSize: 200,
        beforeAddCommand: (event, args) => !(args && args.options && args.options.decor),
      });
      this.graph.use(this.history);
      this.history.on("change", () => this.emit("history", { canUndo: this.canUndo(), canRedo: this.canRedo() }));
      this.history.on("undo", () => this.emit("undo"));
      this.history.on("redo", () => this.emit("redo"));
      this.bindKeys();
      if (options.palette) this.drawPalette(options.palette);
    }
    this.listen();
    this.loading = false;
    requestAnimationFrame(() => this.initialView());
  }

  // The whole journey when it can be read at that size; otherwise readable, from the trigger down.
  initialView() {
    if (!this.graph.getNodes().length) return;
    this.fit();
    if (this.graph.zoom() >= MIN_READABLE_SCALE) return;
    this.graph.zoomTo(MIN_READABLE_SCALE);
    const box = this.graph.getContentBBox();
    this.graph.positionPoint({ x: box.x + box.width / 2, y: box.y }, "50%", 28);
  }

  // --- Loading and reading the graph -----------------------------------------------------

  typeLabel(type) {
    return (this.nodeTypes[type] && this.nodeTypes[type].label) || type || "Node";
  }

  nodeSpec(node, ports) {
    const type = node.type;
    const outs = (ports || []).map((port) => ({
      id: OUT + port,
      group: "out",
      attrs: { text: { text: port } },
    }));
    const items = (type === "trigger" ? [] : [{ id: IN_PORT, group: "in" }]).concat(outs);
    const label = node.label || this.typeLabel(type);
    return {
      id: node.id,
      shape: "journey-node",
      x: Number.isFinite(node.x) ? node.x : 0,
      y: Number.isFinite(node.y) ? node.y : 0,
      width: this.widthFor(ports || []),
      height: NODE_HEIGHT,
      data: { type, label: node.label || "", config: clone(node.config || {}) },
      attrs: {
        accent: { fill: TYPE_COLOURS[type] || "#4338ca" },
        kind: { text: this.typeLabel(type).toUpperCase() },
        label: { textWrap: { text: label } },
        body: { title: label },
      },
      ports: { items },
    };
  }

  // Ports share the bottom edge evenly: each needs room for its name (about 6.5 px a
  // character at 10.5 px), so long action keys widen the node instead of overlapping.
  widthFor(portNames) {
    const longest = portNames.reduce((most, name) => Math.max(most, String(name).length), 0);
    const slot = Math.max(PORT_SPACING, Math.ceil(longest * 6.5) + 16);
    return Math.max(NODE_WIDTH, portNames.length * slot);
  }

  load(data, ports) {
    const graph = this.graph;
    const nodes = Array.isArray(data.nodes) ? data.nodes : [];
    const missingPositions = nodes.some((n) => !Number.isFinite(n.x) || !Number.isFinite(n.y));
    graph.batchUpdate(() => {
      for (const node of nodes) {
        if (!node || typeof node.id !== "string") continue;
        graph.addNode(this.nodeSpec(node, ports[node.id] || []));
      }
      for (const edge of Array.isArray(data.edges) ? data.edges : []) {
        const source = graph.getCellById(edge.from);
        const target = graph.getCellById(edge.to);
        if (!source || !target || !source.hasPort(OUT + edge.port) || !target.hasPort(IN_PORT)) continue;
        graph.addEdge(this.edgeSpec(edge.from, edge.port, edge.to));
      }
    });
    if (missingPositions && nodes.length) this.arrange({ record: false });
  }

  edgeSpec(from, port, to) {
    return {
      shape: "journey-edge",
      source: { cell: from, port: OUT + port },
      target: { cell: to, port: IN_PORT },
    };
  }

  edgeKey(edge) {
    const source = edge.getSource();
    const target = edge.getTarget();
    if (!source || !target || !source.cell || !target.cell || !String(source.port || "").startsWith(OUT)) return null;
    return { from: source.cell, port: source.port.slice(OUT.length), to: target.cell };
  }

  getGraph() {
    const nodes = this.graph.getNodes().map((node) => {
      const data = node.getData() || {};
      const position = node.getPosition();
      return {
        id: node.id,
        type: data.type,
        label: data.label || "",
        config: clone(data.config || {}),
        x: Math.round(position.x),
        y: Math.round(position.y),
      };
    });
    const edges = [];
    for (const edge of this.graph.getEdges()) {
      const key = this.edgeKey(edge);
      if (key) edges.push(key);
    }
    return { nodes, edges, settings: clone(this.settings) };
  }

  targetOf(id, port) {
    for (const edge of this.graph.getConnectedEdges(id, { outgoing: true })) {
      const key = this.edgeKey(edge);
      if (key && key.port === port) return key.to;
    }
    return null;
  }

  /** Every node, depth first from the trigger along the ports in order; unreachable ones last. */
  flowOrder() {
    const seen = new Set();
    const order = [];
    const visit = (node) => {
      if (!node || seen.has(node.id)) return;
      seen.add(node.id);
      order.push(node);
      for (const port of this.portsOf(node.id)) visit(this.graph.getCellById(this.targetOf(node.id, port)));
    };
    const nodes = this.graph.getNodes();
    nodes.filter((node) => (node.getData() || {}).type === "trigger").forEach(visit);
    nodes.forEach(visit);
    return order;
  }

  portsOf(id) {
    const node = this.graph.getCellById(id);
    if (!node || !node.isNode()) return [];
    return node.getPortsByGroup("out").map((port) => port.id.slice(OUT.length));
  }

  // --- Editing ------------------------------------------------------------------------------

  connectingOptions() {
    const canvas = this;
    return {
      router: "normal",
      connector: { name: "smooth", args: { direction: "V" } },
      anchor: "center",
      connectionPoint: "anchor",
      allowBlank: false,
      allowLoop: false,
      allowNode: true,
      allowEdge: false,
      allowPort: true,
      allowMulti: true,
      highlight: true,
      snap: { radius: 28 },
      createEdge() {
        return this.createEdge({ shape: "journey-edge" });
      },
      validateMagnet({ magnet }) {
        return !canvas.readOnly && magnet.getAttribute("port-group") === "out";
      },
      validateConnection({ sourceCell, targetCell, sourcePort, targetPort }) {
        if (canvas.readOnly || !sourceCell || !targetCell || sourceCell === targetCell) return false;
        if (!targetCell.isNode() || !String(sourcePort || "").startsWith(OUT)) return false;
        if ((targetCell.getData() || {}).type === "trigger") return false;
        return !targetPort || targetPort === IN_PORT;
      },
    };
  }

  listen() {
    const graph = this.graph;
    graph.on("node:click", ({ node }) => this.select(node.id, { scroll: false }));
    graph.on("edge:click", ({ edge }) => this.selectEdgeCell(edge));
    graph.on("blank:click", () => this.select(null));
    if (this.readOnly) return;

    // A connection dropped on a node's body goes to its input; an output port leads to one
    // node only, so a new connection replaces the port's old one (in the same undo step).
    graph.on("edge:connected", ({ edge }) => {
      const target = edge.getTarget();
      if (target.cell && target.port !== IN_PORT) edge.setTarget({ cell: target.cell, port: IN_PORT });
      const key = this.edgeKey(edge);
      if (!key) return;
      for (const other of graph.getConnectedEdges(key.from, { outgoing: true })) {
        if (other === edge) continue;
        const otherKey = this.edgeKey(other);
        if (otherKey && otherKey.port === key.port) other.remove();
      }
    });
    graph.on("node:added", ({ node, options }) => {
      if (options && options.stencil) {
        requestAnimationFrame(() => this.select(node.id, { scroll: false }));
      }
    });
    graph.on("cell:removed", ({ cell }) => {
      if (cell.isNode() && this.selectedNode === cell.id) this.select(null);
      if (cell.isEdge() && this.selectedEdge === cell) this.select(null);
    });
    const changed = ({ options }) => {
      if (!(options && options.decor)) this.queueChange();
    };
    graph.model.on("batch:stop", () => this.queueChange());
    graph.on("cell:added", changed);
    graph.on("cell:removed", changed);
    graph.on("cell:changed", changed);
    graph.on("node:change:position", changed);
  }

  queueChange() {
    if (this.loading || this.changeQueued) return;
    this.changeQueued = true;
    requestAnimationFrame(() => this.commit());
  }

  /** Emit a queued "change" now rather than at the next frame (before saving, say). */
  commit() {
    if (!this.changeQueued) return;
    this.changeQueued = false;
    // Mid-gesture (a connection being drawn, a node being dragged) the graph is not what the
    // person will end with; the end of the gesture's batch queues the change again.
    if (this.graph.model.hasActiveBatch()) return;
    if (this.graph.getEdges().some((edge) => !edge.getTargetCellId())) return;
    this.emit("change", this.getGraph());
    this.refreshSelectionClass();
  }

  bindKeys() {
    const keyboard = this.graph.getPlugin("keyboard");
    keyboard.bindKey(["delete", "backspace"], (e) => {
      e.preventDefault();
      this.removeSelected();
    });
    keyboard.bindKey(["ctrl+z", "meta+z"], (e) => {
      e.preventDefault();
      this.undo();
    });
    keyboard.bindKey(["ctrl+shift+z", "meta+shift+z", "ctrl+y"], (e) => {
      e.preventDefault();
      this.redo();
    });
    keyboard.bindKey(["=", "+", "shift+="], () => this.zoomIn());
    keyboard.bindKey(["-"], () => this.zoomOut());
    keyboard.bindKey(["escape"], () => this.select(null));
  }

  drawPalette(container) {
    const canvas = this;
    this.dnd = new Dnd({
      target: this.graph,
      scaled: false,
      dndContainer: container,
      getDragNode: (node) => node.clone(),
      getDropNode: (node) => {
        const data = node.getData();
        return canvas.graph.createNode(canvas.newNodeSpec(data.type));
      },
    });
    container.classList.add("jc-palette");
    container.replaceChildren();
    for (const [type, info] of Object.entries(this.nodeTypes)) {
      const item = document.createElement("button");
      item.type = "button";
      item.className = `jc-palette-item jc-t-${type}`;
      item.dataset.type = type;
      item.title = `${info.description}. Drag onto the canvas, or press to add it in the middle.`;
      const swatch = document.createElement("span");
      swatch.className = "jc-swatch";
      swatch.setAttribute("aria-hidden", "true");
      const text = document.createElement("span");
      text.className = "jc-palette-text";
      const name = document.createElement("strong");
      name.textContent = info.label;
      const description = document.createElement("small");
      description.textContent = info.description;
      text.append(name, description);
      item.append(swatch, text);
      item.addEventListener("mousedown", (e) => {
        if (e.button !== 0) return;
        this.dnd.start(this.graph.createNode(this.newNodeSpec(type)), e);
      });
      item.addEventListener("click", () => this.addNode(type));
      container.append(item);
    }
  }

  newNodeSpec(type) {
    const preset = this.defaults[type] || {};
    return this.nodeSpec(
      { id: randomId(type), type, label: this.typeLabel(type), config: preset.config || {} },
      preset.ports || [],
    );
  }

  addNode(type, at) {
    if (this.readOnly || !this.nodeTypes[type]) return null;
    const spec = this.newNodeSpec(type);
    const area = this.graph.getGraphArea();
    const centre = at || { x: area.x + area.width / 2, y: area.y + area.height / 2 };
    // Step aside from nodes already in the middle, so a second press is visible.
    let x = Math.round(centre.x - spec.width / 2);
    let y = Math.round(centre.y - spec.height / 2);
    const taken = (px, py) =>
      this.graph.getNodes().some((n) => {
        const p = n.getPosition();
        return Math.abs(p.x - px) < 40 && Math.abs(p.y - py) < 40;
      });
    for (let tries = 0; tries < 20 && taken(x, y); tries += 1) {
      x += 30;
      y += 30;
    }
    const node = this.graph.addNode({ ...spec, x, y });
    this.select(node.id);
    return node.id;
  }

  removeNode(id) {
    if (this.readOnly) return;
    const cell = this.graph.getCellById(id);
    if (cell) this.graph.removeCell(cell);
  }

  removeSelected() {
    if (this.readOnly) return;
    if (this.selectedEdge) {
      this.graph.removeCell(this.selectedEdge);
    } else if (this.selectedNode) {
      this.removeNode(this.selectedNode);
    }
  }

  updateNode(id, { label, ports, config } = {}) {
    const node = this.graph.getCellById(id);
    if (!node || !node.isNode()) return;
    const data = node.getData() || {};
    const graph = this.graph;
    graph.startBatch("update");
    const next = { ...data };
    if (label !== undefined) next.label = label || "";
    if (config !== undefined) next.config = clone(config);
    node.setData(next, { overwrite: true });
    const shown = next.label || this.typeLabel(data.type);
    node.attr("label/textWrap/text", shown);
    node.attr("body/title", shown);
    if (Array.isArray(ports)) {
      const wanted = ports.map((port) => OUT + port);
      const current = node.getPortsByGroup("out").map((port) => port.id);
      if (wanted.join("\u0000") !== current.join("\u0000")) {
        for (const edge of graph.getConnectedEdges(node, { outgoing: true })) {
          const key = this.edgeKey(edge);
          if (key && !ports.includes(key.port)) edge.remove();
        }
        const items = (data.type === "trigger" ? [] : [{ id: IN_PORT, group: "in" }]).concat(
          ports.map((port) => ({ id: OUT + port, group: "out", attrs: { text: { text: port } } })),
        );
        node.prop(["ports", "items"], items, { rewrite: true });
        node.resize(this.widthFor(ports), NODE_HEIGHT);
      }
    }
    graph.stopBatch("update");
  }

  setSettings(settings) {
    this.settings = clone(settings || {});
    this.queueChange();
  }

  // --- Selection ----------------------------------------------------------------------------

  select(id, { scroll = true } = {}) {
    const node = id ? this.graph.getCellById(id) : null;
    const nextId = node && node.isNode() ? node.id : null;
    const changed = nextId !== this.selectedNode || this.selectedEdge;
    this.selectedNode = nextId;
    this.selectedEdge = null;
    this.refreshSelectionClass();
    if (node && scroll) this.bringIntoView(node);
    if (changed) this.emit("select", nextId);
  }

  selectEdgeCell(edge) {
    const hadNode = this.selectedNode;
    this.selectedNode = null;
    this.selectedEdge = edge;
    this.refreshSelectionClass();
    if (hadNode) this.emit("select", null);
    this.emit("select-edge", this.edgeKey(edge));
  }

  selected() {
    return { node: this.selectedNode, edge: this.selectedEdge ? this.edgeKey(this.selectedEdge) : null };
  }

  refreshSelectionClass() {
    for (const cell of this.graph.getCells()) {
      const view = this.graph.findViewByCell(cell);
      if (!view) continue;
      const on = (cell.isNode() && cell.id === this.selectedNode) || cell === this.selectedEdge;
      if (on) view.addClass("jc-selected");
      else view.removeClass("jc-selected");
    }
  }

  bringIntoView(node) {
    const box = node.getBBox();
    const area = this.graph.getGraphArea();
    if (!area.containsRect(box)) this.graph.centerCell(node, { animation: false });
  }

  // --- View ---------------------------------------------------------------------------------

  undo() {
    if (this.history && this.history.canUndo()) this.history.undo();
  }

  redo() {
    if (this.history && this.history.canRedo()) this.history.redo();
  }

  canUndo() {
    return Boolean(this.history && this.history.canUndo());
  }

  canRedo() {
    return Boolean(this.history && this.history.canRedo());
  }

  zoomIn() {
    this.graph.zoom(0.2, { maxScale: 2 });
  }

  zoomOut() {
    this.graph.zoom(-0.2, { minScale: 0.25 });
  }

  fit() {
    if (!this.graph.getNodes().length) return;
    this.graph.zoomToFit({ padding: 36, maxScale: 1, minScale: 0.25 });
  }

  layout() {
    if (this.readOnly) return;
    this.arrange({ record: true });
    this.fit();
  }

  arrange({ record }) {
    const layout = new dagre.graphlib.Graph();
    layout.setGraph({ rankdir: "TB", nodesep: 40, ranksep: 56, marginx: 20, marginy: 20 });
    layout.setDefaultEdgeLabel(() => ({}));
    // Nodes and edges go in following each node's ports in order, from the trigger down, so
    // dagre's ordering tends to keep a node's branches in the order of its ports.
    const nodes = this.flowOrder();
    for (const node of nodes) {
      const size = node.getSize();
      layout.setNode(node.id, { width: size.width, height: size.height });
    }
    for (const node of nodes) {
      for (const port of this.portsOf(node.id)) {
        const target = this.targetOf(node.id, port);
        if (target) layout.setEdge(node.id, target);
      }
    }
    dagre.layout(layout);
    const move = () => {
      for (const node of nodes) {
        const placed = layout.node(node.id);
        const size = node.getSize();
        node.position(Math.round(placed.x - size.width / 2), Math.round(placed.y - size.height / 2));
      }
    };
    if (record) {
      this.graph.batchUpdate("layout", move);
    } else if (this.history) {
      this.history.disable();
      move();
      this.history.enable();
    } else {
      move();
    }
  }

  // --- Live figures -------------------------------------------------------------------------

  setCounts({ nodes = {}, edges = {}, conversion = {} } = {}) {
    this.graph.batchUpdate(() => {
      for (const [id, figures] of Object.entries(nodes)) {
        const node = this.graph.getCellById(id);
        if (!node || !node.isNode()) continue;
        const now = figures && figures.now;
        const text = short(now);
        const width = Math.max(30, 14 + 7.5 * text.length);
        node.setAttrs(
          {
            badge: { display: now === undefined || now === null ? "none" : "block", title: `${now} customers here now` },
            badgeBody: { x: -width + 6, width },
            badgeText: { text, x: -width / 2 + 6 },
            entered: {
              text: figures && figures.entered !== undefined ? `${short(figures.entered)} entered` : "",
              x: now === undefined || now === null ? -12 : -width - 10,
            },
          },
          DECOR,
        );
      }
      const keys = new Set([...Object.keys(edges), ...Object.keys(conversion)]);
      for (const edge of this.graph.getEdges()) {
        const key = this.edgeKey(edge);
        if (!key) continue;
        const name = `${key.from}:${key.port}`;
        if (!keys.has(name)) continue;
        const parts = [];
        if (edges[name] !== undefined) parts.push(short(edges[name]));
        if (conversion[name] !== undefined) parts.push(`${percent(conversion[name])} converted`);
        edge.setLabels(
          parts.length
            ? [{
                position: 0.5,
                attrs: {
                  label: { text: parts.join(" · "), fontSize: 11.5, fontWeight: 600, fill: "#18202c", fontFamily: FONT },
                  body: { fill: "#ffffff", stroke: "#cfd4dc", strokeWidth: 1, rx: 8, ry: 8, refWidth: 12, refHeight: 6, refX: -6, refY: -3 },
                },
              }]
            : [],
          DECOR,
        );
      }
    }, DECOR);
  }

  setProblems(counts) {
    counts = counts || {};
    for (const node of this.graph.getNodes()) {
      const n = counts[node.id] || 0;
      node.setAttrs({ flag: { display: n ? "block" : "none", title: n ? `${n} problem${n === 1 ? "" : "s"}` : "" } }, DECOR);
    }
  }

  destroy() {
    if (this.dnd) this.dnd.dispose();
    this.graph.dispose();
    this.surface.remove();
    this.element.classList.remove("jc-canvas", "jc-readonly");
    this.handlers = {};
  }
}

function mount(element, options = {}) {
  if (typeof element === "string") element = document.querySelector(element);
  if (!element) throw new Error("JourneyCanvas.mount: no element to draw in");
  return new JourneyCanvasImpl(element, options);
}

window.JourneyCanvas = { mount, version: 1 };
