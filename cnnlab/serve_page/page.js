// The draw-a-digit page: strokes on the canvas (mouse, pen or touch) or an uploaded photo
// go to POST /predict; the answer, the top-10 bars and the image the model saw are shown.
"use strict";

const canvas = document.getElementById("canvas");
const context = canvas.getContext("2d");
const answer = document.getElementById("answer");
const errorLine = document.getElementById("error");
const seen = document.getElementById("seen");
const bars = document.getElementById("bars");
let drawing = false;
let pending = null; // the latest request; an older answer arriving late is dropped

function clearCanvas() {
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  answer.textContent = "\u2013";
  errorLine.textContent = "";
  seen.removeAttribute("src");
  bars.replaceChildren();
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}

canvas.addEventListener("pointerdown", (event) => {
  drawing = true;
  const [x, y] = point(event);
  context.beginPath();
  context.moveTo(x, y);
  context.lineTo(x, y);
  context.stroke();
  canvas.setPointerCapture(event.pointerId); // the stroke goes on when the pointer leaves the canvas
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = point(event);
  context.lineTo(x, y);
  context.stroke();
});
function endStroke() {
  if (!drawing) return;
  drawing = false;
  canvas.toBlob((blob) => predict(blob, "image/png"), "image/png");
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", clearCanvas);

document.getElementById("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const picture = new Image();
  picture.onload = () => { // show the photo where one draws, fitted
    clearCanvas();
    const scale = Math.min(canvas.width / picture.width, canvas.height / picture.height);
    const width = picture.width * scale, height = picture.height * scale;
    context.drawImage(picture, (canvas.width - width) / 2, (canvas.height - height) / 2, width, height);
    URL.revokeObjectURL(picture.src);
  };
  picture.src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("files", file, file.name);
  predict(form, null);
  event.target.value = ""; // the same file can be chosen again
});

async function predict(body, type) {
  const request = fetch("/predict?top_k=10&seen=true", {
    method: "POST", body: body, headers: type ? {"Content-Type": type} : {},
  });
  pending = request;
  let reply, document_;
  try {
    reply = await request;
    document_ = await reply.json();
  } catch (failure) {
    if (pending === request) showError("the server did not answer (" + failure + ")");
    return;
  }
  if (pending !== request) return;
  if (!reply.ok) {
    showError(typeof document_.detail === "string" ? document_.detail : JSON.stringify(document_.detail));
    return;
  }
  show(document_.predictions[0]);
}

function showError(message) {
  errorLine.textContent = message;
  answer.textContent = "?";
  bars.replaceChildren();
}

function show(prediction) {
  errorLine.textContent = "";
  answer.textContent = prediction.name;
  seen.src = prediction.seen;
  bars.replaceChildren(...prediction.top_k.map((entry, rank) => {
    const row = document.createElement("li");
    row.className = rank === 0 ? "top" : "";
    row.dataset.name = entry.name;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = entry.name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = (100 * entry.probability).toFixed(1) + "%";
    track.append(fill);
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = (100 * entry.probability).toFixed(1) + "%";
    row.append(label, track, prob);
    return row;
  }));
}

context.lineWidth = 20;
context.lineCap = "round";
context.lineJoin = "round";
context.strokeStyle = "#000";
clearCanvas();

fetch("/model").then((reply) => reply.json()).then((model) => {
  const accuracy = model.test_accuracy == null ? "" : ", test accuracy " + (100 * model.test_accuracy).toFixed(1) + "%";
  document.getElementById("model-info").textContent =
    model.name + " \u2013 " + model.dataset + ", " + model.classes.length + " classes" + accuracy;
}).catch(() => {
  document.getElementById("model-info").textContent = "the server did not describe its model";
});
