// Ways to give the page an image: drag and drop, the file picker, paste, sample images, and a
// drawing canvas for 1-channel models (the answer follows the pen).
import { getJSON } from "./api.js";
import { $, el, showError } from "./ui.js";

export function initImageInputs(onImage) {
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) onImage(file, file.name);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("#file").click();
    }
  });
  $("#file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) onImage(file, file.name);
    event.target.value = "";
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.items || [])].find((i) => i.kind === "file");
    if (!item) return;
    event.preventDefault();
    const file = item.getAsFile();
    onImage(file, file.name || "pasted image");
  });
}

export async function loadSamples(onImage) {
  const box = $("#sample-groups");
  try {
    const { groups, samples } = await getJSON("/explorer/api/samples");
    box.replaceChildren(...Object.entries(groups).map(([group, title]) => {
      const mine = samples.filter((s) => s.group === group);
      if (!mine.length) return "";
      return el("div", { class: "sample-group", "data-group": group },
        el("h3", { text: title }),
        el("div", { class: "samples" }, mine.map((sample) => el("button", {
          type: "button", title: sample.title, "aria-label": `Sample: ${sample.title}`,
          "data-testid": "sample-image", "data-sample": sample.id, "data-group": group,
          onclick: async () => {
            const response = await fetch(sample.url);
            onImage(await response.blob(), sample.title);
          },
        }, el("img", { src: sample.url, alt: "", loading: "lazy" })))));
    }));
  } catch (error) {
    box.replaceChildren();
    showError("image-error", error);
  }
}

// Marks the sample group whose images the model was trained on.
export function markFittingSamples(classes) {
  const fashion = classes.includes("Ankle boot");
  const digits = classes.length === 10 && classes.every((c, i) => c === String(i));
  for (const group of document.querySelectorAll(".sample-group")) {
    const name = group.dataset.group;
    group.classList.toggle("fits", (name === "fashion_mnist" && fashion) || (name === "digits" && digits)
      || (name === "photos" && classes.length === 1000));
  }
}

export function initCanvas(onDraw) {
  const canvas = $("#canvas");
  const context = canvas.getContext("2d");
  const clear = () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, canvas.width, canvas.height);
  };
  clear();
  let drawing = false;
  let last = null;
  let inFlight = false;
  let pending = false;

  const send = (final) => {
    if (inFlight && !final) {
      pending = true;
      return;
    }
    inFlight = true;
    canvas.toBlob(async (blob) => {
      try {
        await onDraw(blob, final);
      } finally {
        inFlight = false;
        if (pending && !drawing) {
          pending = false;
          send(true);
        } else if (pending) {
          pending = false;
          send(false);
        }
      }
    }, "image/png");
  };
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [((event.clientX - box.left) / box.width) * canvas.width, ((event.clientY - box.top) / box.height) * canvas.height];
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const next = point(event);
    stroke(last, next);
    last = next;
    send(false);
  });
  const end = () => {
    if (!drawing) return;
    drawing = false;
    send(true);
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  function stroke(from, to) {
    context.strokeStyle = "#fff";
    context.lineWidth = canvas.width / 11;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(from[0], from[1]);
    context.lineTo(to[0], to[1]);
    context.stroke();
  }
  $("#clear").addEventListener("click", () => {
    clear();
    send(true);
  });
}
