// The explorer page: pick a model, give it an image, see its answer and what is inside.
import { ApiError, enc, getJSON, postBody, postJSON, setKey, whenUnauthorized } from "./api.js";
import { drawTopk, explain, predict, timingText } from "./answer.js";
import { initCatalogue, markServed } from "./catalogue.js";
import { drawCompare } from "./compare.js";
import { drawDiagram, markSelected, placeholder } from "./diagram.js";
import { initCanvas, initImageInputs, loadSamples, markFittingSamples } from "./image.js";
import { clearLayer, pageBy, showLayer, unitClick, unitKeys } from "./layer.js";
import { $, el, latest, showError, track } from "./ui.js";

const state = {
  model: null, graph: null, served: [], zoo: [],
  image: null, // { blob, name, id }
  imageId: null, seenUrl: null, layer: null,
};
const newestAnswer = latest();
const newestCam = latest();
const newestModel = latest();

// --- models ---------------------------------------------------------------------------------

async function loadServed() {
  const answer = await getJSON("/v1/models");
  state.served = (answer.models || answer).map((m) => m.name);
}

function fillModelSelects() {
  const select = $("#model");
  const served = el("optgroup", { label: "Served" }, state.served.map((name) => el("option", { value: name, text: name })));
  const others = state.zoo.filter((name) => !state.served.includes(name));
  const zoo = el("optgroup", { label: "Load from the zoo" }, others.map((name) => el("option", { value: name, text: `${name} (load)` })));
  select.replaceChildren(served, ...(others.length ? [zoo] : []));
  if (state.model) select.value = state.model;
  const compare = $("#compare-model");
  const previous = compare.value;
  compare.replaceChildren(el("option", { value: "", text: "— a second model —" }),
    ...state.served.filter((n) => n !== state.model).map((name) => el("option", { value: name, text: name })));
  if (previous && previous !== state.model) compare.value = previous;
  markServed(state.served);
}

// Loads zoo model `name` when the server does not serve it yet. Returns what the server said
// ("" when it was already served), or null when loading failed (the error is shown).
async function ensureServed(name) {
  if (state.served.includes(name)) return "";
  showError("top-error", null);
  $("#model-note").textContent = `Loading ${name} — with its weights when it has any…`;
  try {
    const answer = await track(`loading ${name}`, postJSON("/explorer/api/models", { model: name }));
    await loadServed();
    fillModelSelects();
    return answer.message;
  } catch (error) {
    showError("top-error", new Error(`Could not load ${name}: ${error.message}`));
    $("#model-note").textContent = "";
    fillModelSelects();
    return null;
  }
}

async function selectModel(name) {
  const isNewest = newestModel();
  const loadedNote = await ensureServed(name);
  if (loadedNote === null) {
    $("#model").value = state.model || "";
    return;
  }
  if (!isNewest()) return;
  state.model = name;
  fillModelSelects();
  state.graph = null;
  state.layer = null;
  clearLayer();
  placeholder($("#diagram"), `Drawing ${name}…`);
  let graph;
  try {
    graph = await track(`${name}: layers`, getJSON(`/explorer/api/models/${enc(name)}/graph`));
  } catch (error) {
    if (isNewest()) {
      placeholder($("#diagram"), "");
      showError("top-error", error);
    }
    return;
  }
  if (!isNewest()) return;
  state.graph = graph;
  $("#model-note").textContent = graph.description;
  $("#model-note").title = graph.description;
  $("#notice").textContent = loadedNote || "";
  $("#notice").hidden = !loadedNote;
  describeInput(graph);
  fillCamChoices(graph);
  $("#draw").hidden = graph.channels !== 1;
  markFittingSamples(graph.classes);
  const url = new URL(location);
  url.searchParams.set("model", name);
  history.replaceState(null, "", url);
  track(`${name}: diagram`, drawDiagram($("#diagram"), name, graph, pickLayer)).catch((error) => showError("top-error", error));
  if (state.image) await refresh();
}

function describeInput(graph) {
  const [c, h, w] = graph.input_size;
  $("#seen-caption").textContent = `What ${graph.name} saw: ${h}×${w} ${c === 1 ? "grey" : "RGB"}, after its preprocessing (resize, crop; shown before normalisation).`;
}

function fillCamChoices(graph) {
  const layers = $("#cam-layer");
  const { default: fallback, layers: options } = graph.cam_layers;
  layers.replaceChildren(...options.map((name) => el("option", { value: name, text: name === fallback ? `${name} (default)` : name })));
  if (fallback) layers.value = fallback;
  const target = $("#cam-target");
  target.replaceChildren(el("option", { value: "top", text: "the top class" }),
    ...graph.classes.map((name, index) => el("option", { value: String(index), text: `${index}: ${name}` })));
  syncCamLayer();
}

function syncCamLayer() {
  const method = $("#cam-method").value;
  $("#cam-layer").disabled = !(method === "gradcam" || method === "gradcam++");
}

// --- images ---------------------------------------------------------------------------------

async function upload(blob, name) {
  const query = new URLSearchParams({ name: name || "the image" });
  const answer = await postBody(`/explorer/api/images?${query}`, blob, blob.type || "application/octet-stream");
  return answer.id;
}

// Runs `work(imageId)`; when the server has forgotten the image, sends it again once.
async function withImage(work) {
  try {
    return await work(state.imageId);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404 && /image/.test(error.message)) || !state.image) throw error;
    state.imageId = state.image.id = await upload(state.image.blob, state.image.name);
    return work(state.imageId);
  }
}

async function setImage(blob, name, { light = false } = {}) {
  showError("image-error", null);
  showError("answer-error", null);
  const image = { blob, name, id: null };
  let id;
  try {
    id = await track(light ? "drawing" : "sending the image", upload(blob, name));
  } catch (error) {
    showError("image-error", error); // the server's message names the file
    clearAnswer(); // what is shown must never look like the answer for the refused file
    return;
  }
  image.id = id;
  state.image = image;
  state.imageId = id;
  // On a phone the answer is below the image inputs: bring it into view.
  if (!light && window.matchMedia("(max-width: 900px)").matches) {
    $("#answer-panel").scrollIntoView({ behavior: "smooth", block: "start" });
  }
  await refresh({ light });
}

function clearAnswer() {
  state.image = null;
  state.imageId = null;
  $("#topk").replaceChildren();
  $("#timing").textContent = "";
  $("#seen").hidden = true;
  $("#cam").hidden = true;
  $("#cam-note").textContent = "";
  $("#seen-empty").hidden = false;
}

async function refresh({ light = false } = {}) {
  if (!state.image || !state.model) return;
  const isNewest = newestAnswer();
  const model = state.model;
  const start = performance.now();
  const answer = track(`${model}: answer`, predict(model, state.image.blob)).then((result) => {
    if (!isNewest()) return;
    drawTopk($("#topk"), result.topk);
    $("#timing").textContent = timingText(result.timings, performance.now() - start);
  });
  const seen = withImage((id) => getJSON(`/explorer/api/models/${enc(model)}/seen`, { image: id })).then((result) => {
    if (!isNewest()) return;
    state.seenUrl = result.png;
    $("#seen").src = result.png;
    $("#seen").hidden = false;
    $("#seen-empty").hidden = true;
  });
  try {
    // The answer first: the model's worker takes requests in turn, and the heat map and the
    // maps would otherwise hold the top-5 up.
    await Promise.all([answer, seen]);
    if (!light && isNewest()) {
      const more = [updateCam(), updateCompare()];
      if (state.layer) more.push(showLayer(state, state.layer));
      await Promise.all(more);
    }
  } catch (error) {
    if (isNewest()) showError("answer-error", error);
  }
}

async function updateCam() {
  if (!state.image || !state.model) return;
  const isNewest = newestCam();
  const method = $("#cam-method").value;
  const options = { method, layer: $("#cam-layer").disabled ? "" : $("#cam-layer").value, target: $("#cam-target").value };
  $("#cam-note").textContent = "";
  let result;
  try {
    result = await track(`${method}`, withImage((id) => explain(state.model, id, options)));
  } catch (error) {
    if (isNewest()) {
      $("#cam").hidden = true;
      showError("answer-error", error);
    }
    return;
  }
  if (!isNewest()) return;
  const cam = $("#cam");
  cam.src = result.overlay;
  cam.hidden = !$("#cam-show").checked;
  cam.style.opacity = String($("#cam-opacity").value / 100);
  const where = result.layer ? ` at ${result.layer}` : "";
  const empty = result.empty ? " — none of it is positive here: try another layer or method" : "";
  $("#cam-note").textContent = `${method}${where}: evidence for “${result.label}” (p = ${result.probability.toFixed(4)})${empty} · ${result.cached ? "cached" : `${(result.seconds * 1000).toFixed(0)} ms`}`;
}

function updateCompare() {
  const other = $("#compare-model").value;
  return drawCompare($("#compare"), [state.model, other], state.image);
}

// --- layers ---------------------------------------------------------------------------------

function pickLayer(nodeId) {
  state.layer = nodeId;
  markSelected($("#diagram"), nodeId, false);
  showLayer(state, nodeId);
}

// --- start ----------------------------------------------------------------------------------

function wire() {
  $("#model").addEventListener("change", (event) => selectModel(event.target.value));
  $("#compare-model").addEventListener("change", updateCompare);
  $("#cam-method").addEventListener("change", () => {
    syncCamLayer();
    updateCam();
  });
  $("#cam-layer").addEventListener("change", updateCam);
  $("#cam-target").addEventListener("change", updateCam);
  $("#cam-opacity").addEventListener("input", (event) => {
    $("#cam").style.opacity = String(event.target.value / 100);
  });
  $("#cam-show").addEventListener("change", (event) => {
    $("#cam").hidden = !event.target.checked || !$("#cam").getAttribute("src");
  });
  $("#prev").addEventListener("click", () => pageBy(state, -1));
  $("#next").addEventListener("click", () => pageBy(state, 1));
  $("#unit-map").addEventListener("click", unitClick);
  $("#unit-map").addEventListener("keydown", unitKeys);
  initImageInputs((blob, name) => setImage(blob, name));
  initCanvas((blob, final) => setImage(blob, "drawing", { light: !final }));
  initCatalogue(async (name) => {
    $("#model").value = name;
    await selectModel(name);
    $("#inside-panel").scrollIntoView({ behavior: "smooth" });
  });
  whenUnauthorized(() => {
    $("#key-box").hidden = false;
  });
  $("#key-save").addEventListener("click", () => {
    setKey($("#key").value.trim());
    location.reload();
  });
}

async function start() {
  wire();
  // The samples may arrive after the model: mark the ones that fit it then.
  loadSamples((blob, name) => setImage(blob, name)).then(() => {
    if (state.graph) markFittingSamples(state.graph.classes);
  });
  try {
    const [, zoo] = await Promise.all([loadServed(), getJSON("/explorer/api/zoo")]);
    state.zoo = zoo.models;
  } catch (error) {
    showError("top-error", error);
    return;
  }
  fillModelSelects();
  const wanted = new URL(location).searchParams.get("model");
  const first = wanted && (state.served.includes(wanted) || state.zoo.includes(wanted)) ? wanted : state.served[0];
  if (first) await selectModel(first);
  else placeholder($("#diagram"), "This server serves no model yet: pick one from the zoo.");
  document.body.dataset.ready = "true";
}

start();
