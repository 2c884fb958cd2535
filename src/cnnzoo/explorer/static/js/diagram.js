// The network as a diagram: one box per layer and the element-wise layers after it, frames
// around blocks (residual, Inception/ShuffleNet branches, squeeze-excitation), the tensor's
// shape on every arrow. Each layer is a focusable button (data-testid="layer").
import { el, shapeText } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const ROW = 20;
const WIDTH = 232;
const CHARS = 36; // characters that fit on one row at 11 px
const layouts = new Map(); // model name -> laid-out diagram, so switching back is instant

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function layout(request) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL("./layout-worker.js", import.meta.url), { type: "module" });
    worker.onmessage = (event) => {
      resolve(event.data);
      worker.terminate();
    };
    worker.onerror = (event) => {
      reject(new Error(`laying out the diagram failed: ${event.message}`));
      worker.terminate();
    };
    worker.postMessage(request);
  });
}

function shortName(node, room) {
  if (node.id === "input") return "input";
  const base = node.block && node.id.startsWith(`${node.block}.`) ? node.id.slice(node.block.length + 1) : node.id;
  return base.length > room ? `…${base.slice(-(room - 1))}` : base;
}

export function describe(node) {
  return `${node.id}: ${node.summary || node.type}, output ${shapeText(node.shape)}`;
}

function model(graph) {
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const boxes = new Map();
  for (const node of graph.nodes) {
    if (!boxes.has(node.box)) boxes.set(node.box, []);
    boxes.get(node.box).push(node);
  }
  const boxOf = (id) => `b${byId.get(id).box}`;
  const edges = [];
  for (const node of graph.nodes) {
    node.inputs.forEach((source, index) => {
      if (byId.get(source).box === node.box) return;
      const label = shapeText(byId.get(source).shape);
      edges.push({
        from: boxOf(source), to: `b${node.box}`, label, labelWidth: label.length * 6 + 6,
        skip: index > 0 && (node.op === "add" || node.op === "iadd"),
      });
    });
  }
  const blockIds = new Set(graph.blocks.map((b) => b.name));
  return {
    byId,
    boxes: [...boxes.entries()].map(([index, nodes]) => ({
      id: `b${index}`, nodes, width: WIDTH, height: nodes.length * ROW + 4,
      parent: nodes[0].block && blockIds.has(nodes[0].block) ? `k:${nodes[0].block}` : null,
    })),
    blocks: graph.blocks.map((b) => ({
      id: `k:${b.name}`, parent: b.parent ? `k:${b.parent}` : null, kind: b.kind,
      label: `${b.name} · ${b.type || b.kind} (${b.kind})`,
    })),
    edges,
  };
}

// Draws `graph` into `container`; `onPick(nodeId)` runs when a layer is chosen.
export async function drawDiagram(container, name, graph, onPick) {
  let laid = layouts.get(name);
  const parts = model(graph);
  if (!laid || laid.graph !== graph) {
    const request = {
      boxes: parts.boxes.map(({ id, width, height, parent }) => ({ id, width, height, parent })),
      blocks: parts.blocks.map(({ id, parent, label }) => ({ id, parent, label })),
      edges: parts.edges.map(({ from, to, label, labelWidth }) => ({ from, to, label, labelWidth })),
    };
    laid = { graph, positions: await layout(request) };
    layouts.set(name, laid);
  }
  const { positions } = laid;
  const root = svg("svg", {
    width: Math.ceil(positions.width) + 90, height: Math.ceil(positions.height),
    role: "group", "aria-label": `${graph.model}: ${graph.nodes.length} layers`,
  });
  root.append(svg("defs", {}, svg("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse",
  }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8f98aa" }))));

  const blocksLayer = svg("g");
  const sorted = [...parts.blocks].sort((a, b) => a.id.split(".").length - b.id.split(".").length);
  for (const block of sorted) {
    const p = positions.nodes[block.id];
    if (!p) continue;
    blocksLayer.append(svg("g", { class: `block ${block.kind}` },
      svg("rect", { x: p.x - p.width / 2, y: p.y - p.height / 2, width: p.width, height: p.height }),
      svg("text", { x: p.x - p.width / 2 + 6, y: p.y - p.height / 2 + 11 }, block.label)));
  }
  const edgesLayer = svg("g");
  positions.edges.forEach((e) => {
    const edge = parts.edges[Number(e.name.slice(1))];
    const d = e.points.map((pt, i) => `${i ? "L" : "M"} ${pt.x.toFixed(1)} ${pt.y.toFixed(1)}`).join(" ");
    const width = edge.labelWidth;
    edgesLayer.append(svg("g", { class: `edge${edge.skip ? " skip" : ""}` },
      svg("path", { d, "marker-end": "url(#arrow)" }),
      svg("rect", { class: "edge-label-bg", x: e.x - width / 2, y: e.y - 7, width, height: 13 }),
      svg("text", { x: e.x, y: e.y + 3, "text-anchor": "middle" }, edge.label)));
  });
  const boxesLayer = svg("g");
  for (const box of parts.boxes) {
    const p = positions.nodes[box.id];
    const x0 = p.x - box.width / 2;
    const y0 = p.y - box.height / 2;
    const first = box.nodes[0];
    const kind = first.id === "input" || first.id === graph.output ? " io" : first.module ? "" : " merge";
    const group = svg("g", { class: `box${kind}`, transform: `translate(${x0.toFixed(1)} ${y0.toFixed(1)})` },
      svg("rect", { width: box.width, height: box.height }));
    box.nodes.forEach((node, row) => {
      const y = row * ROW + 2;
      const kindText = node.id === "input" ? shapeText(node.shape) : node.summary || node.type;
      const item = svg("g", {
        class: "layer", "data-testid": "layer", "data-name": node.id, tabindex: 0, role: "button",
        "aria-label": describe(node),
      },
      svg("title", {}, describe(node)),
      svg("rect", { x: 2, y, width: box.width - 4, height: ROW - 1, rx: 3 }),
      svg("text", { x: 7, y: y + 14 }, shortName(node, Math.max(6, CHARS - kindText.length - 2))),
      svg("text", { class: "kind", x: box.width - 7, y: y + 14, "text-anchor": "end" }, kindText));
      item.addEventListener("click", () => onPick(node.id));
      item.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          onPick(node.id);
        }
      });
      group.append(item);
      if (node.stage !== null && node.stage !== undefined) {
        group.append(svg("g", { class: "stage" },
          svg("text", { x: box.width + 6, y: y + 14 }, `stage ${node.stage}`)));
      }
    });
    boxesLayer.append(group);
  }
  root.append(blocksLayer, edgesLayer, boxesLayer);
  container.replaceChildren(root);
}

export function markSelected(container, nodeId, scroll = true) {
  for (const item of container.querySelectorAll(".layer.selected")) {
    item.classList.remove("selected");
    item.removeAttribute("aria-pressed");
  }
  const item = container.querySelector(`.layer[data-name="${CSS.escape(nodeId)}"]`);
  if (!item) return;
  item.classList.add("selected");
  item.setAttribute("aria-pressed", "true");
  if (scroll) item.scrollIntoView({ block: "nearest", inline: "nearest" });
}

export function placeholder(container, text) {
  container.replaceChildren(el("p", { class: "placeholder", text }));
}
