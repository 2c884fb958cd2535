// One layer for the current image: its facts, its activation maps strongest first (paged),
// and, for a clicked unit, its receptive field on the input and its arithmetic.
import { enc, getJSON } from "./api.js";
import { $, count, el, latest, num, shapeText, showError, track } from "./ui.js";

const PER_PAGE = 32;
let view = null; // { model, image, node, page, data, channel, y, x, seenUrl }
const newest = latest();

function facts(node, graph) {
  const rows = [
    ["Layer", el("code", { text: node.id })],
    ["Type", node.module ? `${node.type}${node.detail ? ` (${node.detail})` : ""}` : `${node.type} (a tensor function)`],
    ["Output", shapeText(node.shape)],
    ["Parameters", node.params ? node.params.toLocaleString("en") : node.module ? "0 (or shared with its first call)" : "0"],
    ["Multiply-adds", node.macs ? `${node.macs.toLocaleString("en")} (${count(node.macs)})` : "0"],
    ["Receptive field", node.rf ? `${node.rf[0]}×${node.rf[1]} px${node.rf_global ? ", and the whole image through a squeeze-excitation gate" : ""}` : "the whole image"],
    ["Jump", node.jump ? `${node.jump.map((j) => +j.toFixed(2)).join("×")} px between neighbouring units` : "–"],
  ];
  if (node.block) {
    const block = graph.blocks.find((b) => b.name === node.block);
    if (block) rows.push(["In block", `${block.name} (${block.type}, ${block.kind})`]);
  }
  if (node.inputs.length) rows.push(["Reads", node.inputs.join(", ")]);
  return el("dl", { class: "facts" }, rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

export function clearLayer() {
  view = null;
  $("#layer-empty").hidden = false;
  $("#layer-facts").replaceChildren();
  $("#maps").replaceChildren();
  $("#maps-head").hidden = true;
  $("#unit-view").hidden = true;
  showError("layer-error", null);
}

export async function showLayer(state, nodeId, page = 0) {
  const graph = state.graph;
  const node = graph.nodes.find((n) => n.id === nodeId);
  if (!node) return;
  $("#layer-empty").hidden = true;
  $("#layer-facts").replaceChildren(facts(node, graph));
  const sameLayer = view && view.node.id === nodeId && view.image === state.imageId && view.model === state.model;
  if (!sameLayer) $("#unit-view").hidden = true;
  view = { ...(sameLayer ? view : {}), model: state.model, image: state.imageId, node, page, seenUrl: state.seenUrl };
  if (!state.imageId) {
    $("#maps").replaceChildren(el("p", { class: "placeholder", text: "Choose an image to see this layer's activations." }));
    $("#maps-head").hidden = true;
    return;
  }
  const isNewest = newest();
  showError("layer-error", null);
  let data;
  try {
    data = await track(`${nodeId}: activations`,
      getJSON(`/explorer/api/models/${enc(state.model)}/maps`, { image: state.imageId, layer: nodeId, page, per_page: PER_PAGE }));
  } catch (error) {
    if (isNewest()) showError("layer-error", error);
    return;
  }
  if (!isNewest()) return;
  view.data = data;
  drawMaps(data);
}

function legend(data) {
  const colours = [0, 64, 128, 192, 255].map((i) => `#${data.palette.slice(6 * i, 6 * i + 6)}`);
  $("#legend-bar").style.background = `linear-gradient(90deg, ${colours.join(", ")})`;
  $("#legend-low").textContent = num(data.low, 3);
  $("#legend-high").textContent = num(data.high, 3);
}

// Colours a grey tile (levels 0..255 on the layer's scale) into `canvas`; `palette` holds the
// 256 colours as R, G, B bytes.
async function paint(canvas, url, palette) {
  const image = new Image();
  image.src = url;
  await image.decode();
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const at = data[i] * 3;
    data[i] = palette[at];
    data[i + 1] = palette[at + 1];
    data[i + 2] = palette[at + 2];
    data[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
}

function drawMaps(data) {
  const head = $("#maps-head");
  head.hidden = false;
  $(".legend").hidden = !data.palette;
  if (data.palette) legend(data);
  const first = data.page * data.per_page;
  const last = Math.min(first + data.per_page, data.channels);
  $("#page-text").textContent = `${data.kind === "maps" ? "channels" : "values"} ${first + 1}–${last} of ${data.channels}, strongest first · ${data.cached ? "cached" : `${(data.compute_seconds * 1000).toFixed(0)} ms`}`;
  $("#prev").disabled = data.page === 0;
  $("#next").disabled = data.page >= data.pages - 1;
  const maps = $("#maps");
  if (data.kind === "maps") {
    maps.className = "maps";
    const palette = Uint8ClampedArray.from({ length: 768 }, (_, i) => parseInt(data.palette.slice(2 * i, 2 * i + 2), 16));
    maps.replaceChildren(...data.tiles.map((tile) => {
      const image = el("canvas", {
        role: "img", "aria-label": `channel ${tile.channel}, mean ${num(tile.mean, 3)}`,
        title: `channel ${tile.channel} · mean ${num(tile.mean, 3)} · click a unit`,
        "data-testid": "activation-map", "data-channel": tile.channel, "data-mean": tile.mean, tabindex: 0,
      });
      image.addEventListener("click", (event) => {
        const [h, w] = data.shape.slice(1);
        const box = image.getBoundingClientRect();
        const y = Math.min(h - 1, Math.floor(((event.clientY - box.top) / box.height) * h));
        const x = Math.min(w - 1, Math.floor(((event.clientX - box.left) / box.width) * w));
        pickUnit(tile, Math.max(0, y), Math.max(0, x));
      });
      image.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          const [h, w] = data.shape.slice(1);
          pickUnit(tile, Math.floor(h / 2), Math.floor(w / 2));
        }
      });
      tile.canvas = image;
      tile.painted = paint(image, tile.png, palette);
      return el("figure", {}, image, el("figcaption", { text: `ch ${tile.channel}` }));
    }));
  } else {
    maps.className = "";
    const peak = Math.max(...data.values.map((v) => Math.abs(v.value)), 1e-12);
    maps.replaceChildren(el("ul", { class: "values" }, data.values.map((v) => el("li", {},
      el("button", {
        type: "button", "data-testid": "activation-value", "data-channel": v.channel,
        onclick: () => pickUnit({ channel: v.channel }, 0, 0),
      },
      el("span", { text: v.label ? `${v.channel} ${v.label}` : `unit ${v.channel}` }),
      el("span", { class: `vbar${v.value < 0 ? " neg" : ""}`, style: `width: ${(Math.abs(v.value) / peak) * 100}%` }),
      el("span", { class: "num", text: num(v.value, 4) }))))));
  }
}

export function pageBy(state, step) {
  if (!view || !view.data) return;
  const page = view.data.page + step;
  if (page < 0 || page >= view.data.pages) return;
  showLayer(state, view.node.id, page);
}

async function pickUnit(tile, y, x) {
  if (!view) return;
  for (const tileElement of document.querySelectorAll(".maps .selected")) tileElement.classList.remove("selected");
  const selected = document.querySelector(`.maps [data-channel="${tile.channel}"]`);
  if (selected) selected.classList.add("selected");
  Object.assign(view, { channel: tile.channel, y, x, tile });
  $("#unit-view").hidden = false;
  drawUnitMap();
  const isNewest = newest();
  showError("layer-error", null);
  let unit;
  try {
    unit = await track("unit", getJSON(`/explorer/api/models/${enc(view.model)}/unit`, {
      image: view.image, layer: view.node.id, channel: tile.channel, y, x,
    }));
  } catch (error) {
    if (isNewest()) showError("layer-error", error);
    return;
  }
  if (!isNewest()) return;
  drawField(unit);
  drawMath(unit);
}

function drawUnitMap() {
  const canvas = $("#unit-map");
  const spatial = view.data.kind === "maps";
  canvas.hidden = !spatial;
  const caption = $("#unit-map-caption");
  if (!spatial) {
    caption.textContent = `${view.node.id}, unit ${view.channel}`;
    return;
  }
  const [h, w] = view.data.shape.slice(1);
  const context = canvas.getContext("2d");
  view.tile.painted.then(() => {
    context.imageSmoothingEnabled = false;
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(view.tile.canvas, 0, 0, canvas.width, canvas.height);
    const cw = canvas.width / w;
    const ch = canvas.height / h;
    context.lineWidth = 2;
    context.strokeStyle = "#ff2d55";
    context.strokeRect(view.x * cw + 1, view.y * ch + 1, Math.max(cw - 2, 2), Math.max(ch - 2, 2));
  });
  caption.textContent = `${view.node.id}, channel ${view.channel}: unit at row ${view.y}, column ${view.x} (of ${h}×${w}). Click another unit or use the arrow keys.`;
}

export function unitKeys(event) {
  if (!view || !view.tile || !view.data || view.data.kind !== "maps") return;
  const [h, w] = view.data.shape.slice(1);
  const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
  const move = moves[event.key];
  if (!move) return;
  event.preventDefault();
  const y = Math.min(h - 1, Math.max(0, view.y + move[0]));
  const x = Math.min(w - 1, Math.max(0, view.x + move[1]));
  pickUnit(view.tile, y, x);
}

export function unitClick(event) {
  if (!view || !view.tile || view.data.kind !== "maps") return;
  const canvas = event.currentTarget;
  const box = canvas.getBoundingClientRect();
  const [h, w] = view.data.shape.slice(1);
  const y = Math.min(h - 1, Math.floor(((event.clientY - box.top) / box.height) * h));
  const x = Math.min(w - 1, Math.floor(((event.clientX - box.left) / box.width) * w));
  pickUnit(view.tile, y, x);
}

function drawField(unit) {
  const image = $("#field-image");
  image.src = view.seenUrl || "";
  const box = $("#rf-box");
  const caption = $("#field-caption");
  const field = unit.field;
  if (!field) {
    box.hidden = true;
    box.removeAttribute("data-size");
    caption.textContent = "This unit sees the whole image (its layer comes after global pooling).";
    return;
  }
  const place = () => {
    const H = image.naturalHeight || 1;
    const W = image.naturalWidth || 1;
    const [top, left, bottom, right] = field.visible;
    Object.assign(box.style, {
      top: `${(top / H) * 100}%`, left: `${(left / W) * 100}%`,
      height: `${((bottom - top + 1) / H) * 100}%`, width: `${((right - left + 1) / W) * 100}%`,
    });
  };
  if (image.complete && image.naturalWidth) place();
  else image.onload = place;
  box.dataset.size = `${field.size[0]}x${field.size[1]}`;
  box.hidden = false;
  const clipped = field.top < 0 || field.left < 0 || field.bottom > (image.naturalHeight || 1e9) - 1 || field.right > (image.naturalWidth || 1e9) - 1;
  caption.textContent = `Receptive field: ${field.size[0]}×${field.size[1]} input pixels (rows ${fmt(field.top)}…${fmt(field.bottom)}, columns ${fmt(field.left)}…${fmt(field.right)}); neighbouring units are ${field.jump.map((j) => +j.toFixed(2)).join("×")} px apart.${clipped ? " The box stops at the image edge: the rest of the field is padding." : ""}${unit.field_global ? " It also sees the whole image through a squeeze-excitation gate." : ""}`;
}

const fmt = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));

function grid(values, inside, cls = "") {
  return el("table", { class: cls }, el("tbody", {}, values.map((row, i) => el("tr", {},
    row.map((v, j) => el("td", { class: inside && !inside[i][j] ? "pad" : null, text: v === null ? "pad" : num(v, 3) }))))));
}

function drawMath(unit) {
  const box = $("#unit-math");
  box.dataset.value = String(unit.value);
  box.dataset.kind = unit.kind;
  if (unit.total !== undefined) box.dataset.total = String(unit.total);
  else box.removeAttribute("data-total");
  if (unit.bias !== undefined) box.dataset.bias = String(unit.bias);
  else box.removeAttribute("data-bias");
  const where = unit.y !== undefined && view.data.kind === "maps" ? `channel ${unit.channel}, row ${unit.y}, column ${unit.x}` : `unit ${unit.channel}`;
  const head = el("p", {}, `${unit.layer}, ${where}: `, el("strong", { class: "value", text: num(unit.value, 5) }));
  const parts = [head];
  if (unit.formula) parts.push(el("p", { class: "note", text: `How: ${unit.formula}.` }));
  if (unit.kind === "conv") parts.push(...convMath(unit));
  else if (unit.kind === "linear") parts.push(...linearMath(unit));
  else if (unit.kind === "batchnorm") {
    parts.push(el("p", { class: "sum-line", text: `(${num(unit.input, 4)} − ${num(unit.mean, 4)}) / √(${num(unit.var, 4)} + ${unit.eps}) × ${num(unit.gamma, 4)} + ${num(unit.beta, 4)} = ${num(unit.total, 5)}` }));
  } else if (unit.kind === "maxpool" || unit.kind === "avgpool") {
    parts.push(grid(unit.window, null), el("p", { class: "sum-line", text: `${unit.kind === "maxpool" ? "max" : "mean"} = ${num(unit.total, 5)}` }));
  } else if (unit.kind === "add" || unit.kind === "mul") {
    parts.push(el("p", { class: "sum-line", text: `${unit.terms.map((t) => num(t, 4)).join(unit.kind === "add" ? " + " : " × ")} = ${num(unit.total, 5)}` }));
  } else if (unit.kind === "elementwise") {
    parts.push(el("p", { class: "sum-line", text: `${unit.formula.replace("(input)", "")}(${num(unit.input, 5)}) = ${num(unit.total, 5)}` }));
  } else if (unit.kind === "globalpool") {
    parts.push(el("p", { class: "sum-line", text: `= ${num(unit.total, 5)}` }));
  } else {
    parts.push(el("p", { class: "note", text: "This layer has no arithmetic to show here; its value is above." }));
  }
  box.replaceChildren(...parts);
}

function convMath(unit) {
  const order = unit.channels.map((c, i) => i).sort((a, b) => Math.abs(unit.channels[b].sum) - Math.abs(unit.channels[a].sum));
  const shown = order.slice(0, 6);
  const card = (c) => el("div", { class: "channel term", "data-sum": String(c.sum), "data-channel": c.index },
    el("h4", { text: `input channel ${c.index}` }),
    el("div", { class: "eq" }, grid(c.patch, unit.inside), "×", grid(c.kernel, null), "=", el("span", { text: num(c.sum, 4) })));
  const parts = [el("div", { class: "channels" }, shown.map((i) => card(unit.channels[i])))];
  const rest = order.slice(6);
  if (rest.length) {
    const restSum = rest.reduce((s, i) => s + unit.channels[i].sum, 0);
    parts.push(el("details", {}, el("summary", { text: `${rest.length} more input channels, together ${num(restSum, 4)}` }),
      el("ul", {}, rest.map((i) => el("li", { class: "term", "data-sum": String(unit.channels[i].sum), "data-channel": unit.channels[i].index, text: `channel ${unit.channels[i].index}: ${num(unit.channels[i].sum, 5)}` })))));
  }
  const sum = unit.channels.reduce((s, c) => s + c.sum, 0);
  parts.push(el("p", { class: "sum-line" },
    `Σ ${unit.channels.length} channel${unit.channels.length > 1 ? "s" : ""} ${num(sum, 5)} + bias ${num(unit.bias, 5)} = `,
    el("span", { class: "total", text: num(unit.total, 5) }),
    ` (the layer's output: ${num(unit.value, 5)})`));
  if (unit.inside.some((row) => row.some((v) => !v))) parts.push(el("p", { class: "note", text: "Grey cells are padding (zeros) outside the input." }));
  return parts;
}

function linearMath(unit) {
  const rows = unit.terms.map((t) => el("li", { class: "term", "data-sum": String(t.product),
    text: `input ${t.index}: ${num(t.input, 4)} × ${num(t.weight, 4)} = ${num(t.product, 4)}` }));
  if (unit.rest.count) rows.push(el("li", { class: "term", "data-sum": String(unit.rest.sum), text: `the other ${unit.rest.count} products: ${num(unit.rest.sum, 4)}` }));
  return [el("ul", {}, rows), el("p", { class: "sum-line" }, `Σ + bias ${num(unit.bias, 5)} = `, el("span", { class: "total", text: num(unit.total, 5) }))];
}
