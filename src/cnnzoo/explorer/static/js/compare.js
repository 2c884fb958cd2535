// Two models side by side on the same image: answer, Grad-CAM and time.
import { enc, getJSON } from "./api.js";
import { drawTopk, explain, predict, timingText } from "./answer.js";
import { el, latest, showError, track } from "./ui.js";

const newest = latest();

async function side(model, image) {
  const start = performance.now();
  const answer = await predict(model, image.blob);
  const roundTrip = performance.now() - start;
  const [seen, cam] = await Promise.all([
    getJSON(`/explorer/api/models/${enc(model)}/seen`, { image: image.id }),
    explain(model, image.id).catch((error) => ({ error })),
  ]);
  return { model, answer, roundTrip, seen, cam };
}

export async function drawCompare(container, models, image) {
  const isNewest = newest();
  showError("compare-error", null);
  if (!image || models.length < 2 || !models[1]) {
    container.replaceChildren(el("p", { class: "placeholder", text: image ? "Choose a second model." : "Choose an image first." }));
    return;
  }
  let sides;
  try {
    sides = await track("comparing", Promise.all(models.map((m) => side(m, image))));
  } catch (error) {
    if (isNewest()) showError("compare-error", error);
    return;
  }
  if (!isNewest()) return;
  container.replaceChildren(...sides.map((s) => {
    const list = el("ol", { class: "topk" });
    drawTopk(list, s.answer.topk, true);
    const overlay = s.cam.error
      ? el("p", { class: "note", text: `no heat map: ${s.cam.error.message}` })
      : null;
    return el("div", { class: "side", "data-model": s.model },
      el("h3", { text: s.model }),
      el("div", { class: "seen" },
        el("div", { class: "stack" },
          el("img", { src: s.seen.png, alt: `${s.model} input` }),
          s.cam.error ? null : el("img", { class: "overlay", src: s.cam.overlay, alt: "Grad-CAM", style: "opacity: .55" })),
        el("div", { class: "topk-box" }, list)),
      overlay,
      el("p", { class: "note", text: `${timingText(s.answer.timings, s.roundTrip)}${s.cam.error ? "" : ` · Grad-CAM at ${s.cam.layer} ${s.cam.cached ? "(cached)" : `${(s.cam.seconds * 1000).toFixed(0)} ms`}`}` }));
  }));
}
