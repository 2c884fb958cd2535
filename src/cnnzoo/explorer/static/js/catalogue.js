// The zoo catalogue: `cnnzoo models`' table (family, year, parameters, multiply-adds, published
// top-1) with the latency the server measured, sortable, filterable, with the course notes'
// selection guide as presets. Counted in chunks, so the table fills while it counts.
import { getJSON } from "./api.js";
import { $, count, el, showError, track } from "./ui.js";

const COLUMNS = [
  { key: "name", label: "model", text: true },
  { key: "family", label: "family", text: true },
  { key: "year", label: "year" },
  { key: "params", label: "parameters", format: count },
  { key: "macs", label: "multiply-adds", format: count },
  { key: "input_side", label: "input" },
  { key: "imagenet_top1", label: "top-1 (%)", format: (v) => v.toFixed(2) },
  { key: "latency_ms", label: "latency (ms)", format: (v) => v.toFixed(1) },
  { key: "weights", label: "weights", text: true, format: (v) => v.join(", ") },
];
const CHUNK = 8;
let rows = [];
let presets = {};
let sort = { key: "year", direction: 1 };
let preset = null;
let started = false;
let onExplore = () => {};

export function initCatalogue(explore) {
  onExplore = explore;
  const head = $("#catalogue thead tr");
  head.replaceChildren(...COLUMNS.map((c) => el("th", { class: c.text ? "text" : null, scope: "col", "data-key": c.key },
    el("button", { type: "button", text: c.label, onclick: () => sortBy(c.key) }))), el("th", { scope: "col", text: "" }));
  $("#filter").addEventListener("input", draw);
  $("#catalogue-details").addEventListener("toggle", (event) => {
    if (event.target.open) load();
  });
}

function sortBy(key) {
  sort = { key, direction: sort.key === key ? -sort.direction : 1 };
  draw();
}

export async function load() {
  if (started) return;
  started = true;
  showError("catalogue-error", null);
  try {
    let offset = 0;
    let total = 1;
    while (offset < total) {
      const part = await track("counting the zoo", getJSON("/explorer/api/catalogue", { offset, limit: CHUNK }));
      total = part.total;
      presets = part.presets;
      rows.push(...part.rows);
      offset += part.rows.length;
      const progress = $("#catalogue-progress");
      if (offset < total) {
        progress.dataset.counting = "true";
        progress.textContent = `Counted ${offset} of ${total} models (first time only; the counts are then cached)…`;
      } else {
        delete progress.dataset.counting;
      }
      drawPresets();
      draw();
    }
  } catch (error) {
    started = false;
    showError("catalogue-error", error);
  }
}

export function markServed(names) {
  for (const row of rows) row.served = names.includes(row.name);
  draw();
}

function drawPresets() {
  const box = $("#presets");
  if (box.childElementCount === Object.keys(presets).length) return;
  box.replaceChildren(...Object.keys(presets).map((name) => el("button", {
    type: "button", "aria-pressed": String(preset === name), "data-preset": name, text: name,
    onclick: () => {
      preset = preset === name ? null : name;
      for (const b of box.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.preset === preset));
      draw();
    },
  })));
}

function draw() {
  const filter = $("#filter").value.trim().toLowerCase();
  const picked = preset ? new Set(presets[preset]) : null;
  const shown = rows.filter((r) => (!picked || picked.has(r.name))
    && (!filter || r.name.includes(filter) || r.family.toLowerCase().includes(filter)));
  const { key, direction } = sort;
  shown.sort((a, b) => {
    const x = a[key];
    const y = b[key];
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    const order = typeof x === "string" || Array.isArray(x) ? String(x).localeCompare(String(y)) : x - y;
    return order * direction || a.name.localeCompare(b.name);
  });
  for (const th of document.querySelectorAll("#catalogue th[data-key]")) {
    if (th.dataset.key === key) th.setAttribute("aria-sort", direction > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
  const progress = $("#catalogue-progress");
  if (!progress.dataset.counting) {
    progress.textContent = preset
      ? `${shown.length} of ${rows.length} models: the notes' pick for “${preset}”.`
      : `${shown.length} of ${rows.length} models. Click a column to sort.`;
  }
  $("#catalogue tbody").replaceChildren(...shown.map((row) => el("tr", { class: row.served ? "served" : null, "data-name": row.name },
    COLUMNS.map((c) => {
      const value = row[c.key];
      const text = value === null || value === undefined || (Array.isArray(value) && !value.length) ? "–" : c.format ? c.format(value) : String(value);
      return el("td", { class: c.text ? "text" : null, title: c.key === "name" ? row.paper : null, text });
    }),
    el("td", {}, el("button", { type: "button", text: row.served ? "Explore" : "Load", onclick: () => onExplore(row.name) })))));
}
