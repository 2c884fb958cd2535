// Small page helpers: elements, errors shown inline, progress for slow work, number formats.

export const $ = (selector, root = document) => root.querySelector(selector);

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function showError(id, error) {
  const box = document.getElementById(id);
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent = error.message || String(error);
  box.hidden = false;
}

const tasks = new Map();
let taskId = 0;

function drawBusy() {
  const busy = document.getElementById("busy");
  busy.replaceChildren(
    ...[...tasks.values()].map((task) => {
      const seconds = (performance.now() - task.start) / 1000;
      return el("span", { text: seconds > 0.8 ? `${task.label} ${seconds.toFixed(1)} s` : task.label });
    }),
  );
}
setInterval(() => tasks.size && drawBusy(), 250);

// Shows `label` with a spinner and the elapsed time while `promise` runs.
export async function track(label, promise) {
  const id = ++taskId;
  tasks.set(id, { label, start: performance.now() });
  drawBusy();
  try {
    return await promise;
  } finally {
    tasks.delete(id);
    drawBusy();
  }
}

export function count(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} K`;
  return String(n);
}

export function num(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) return value.toExponential(2);
  return value.toFixed(digits);
}

export const shapeText = (shape) => shape.join("×");

// Runs `work` for the newest call only: an older call still in flight is ignored when it ends.
export function latest() {
  let generation = 0;
  return () => {
    const mine = ++generation;
    return () => mine === generation;
  };
}
