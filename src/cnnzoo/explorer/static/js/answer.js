// The answer: the API's own top-5 (POST /v1/models/NAME/predict) and a heat map of where the
// network found its evidence, over the image it saw.
import { enc, getJSON, postBody } from "./api.js";
import { el, num } from "./ui.js";

// The served prediction for one image: [{label, index, probability}], and the timings.
export async function predict(model, blob, k = 5) {
  const answer = await postBody(`/v1/models/${enc(model)}/predict?topk=${k}`, blob, blob.type || "application/octet-stream");
  return { topk: topkOf(answer), timings: answer.timings_ms || {} };
}

export function topkOf(answer) {
  const first = answer.predictions ? answer.predictions[0] : answer;
  return first.topk || first;
}

export function drawTopk(list, topk, compact = false) {
  list.replaceChildren(...topk.map((item) => el("li", {
    "data-label": item.label, "data-probability": String(item.probability), "data-index": item.index,
  },
  el("div", { class: "row" }, el("span", { class: "label", text: item.label, title: item.label }),
    el("span", { class: "prob", text: `${(item.probability * 100).toFixed(compact ? 1 : 2)} %` })),
  el("div", { class: "track", "aria-hidden": "true" },
    el("div", { class: "fill", style: `width: ${Math.max(0.5, item.probability * 100)}%` })))));
}

export function explain(model, image, { method = "gradcam", layer = "", target = "top" } = {}) {
  return getJSON(`/explorer/api/models/${enc(model)}/explain`, { image, method, layer, target });
}

// The server's own timings (timings_ms of /v1/.../predict) and the page's round trip.
export function timingText(timings, roundTrip) {
  const parts = [];
  if (timings.inference !== undefined) parts.push(`inference ${num(timings.inference, 1)} ms`);
  if (timings.queue !== undefined) parts.push(`queue ${num(timings.queue, 1)} ms`);
  if (roundTrip !== undefined) parts.push(`round trip ${roundTrip.toFixed(0)} ms`);
  return parts.join(" · ");
}
