// The page of `cnnlab serve`, fitted to the model GET /model describes: a digit model gets a
// canvas to draw on (mouse, pen or touch); any other model gets upload and, where the browser
// allows it, the camera. Either way a photo can be uploaded, and the answer, the bars of the
// top classes and the image the model saw are shown.
"use strict";

const canvas = document.getElementById("canvas");
const context = canvas.getContext("2d");
const video = document.getElementById("camera");
const cameraButton = document.getElementById("camera-button");
const answer = document.getElementById("answer");
const source = document.getElementById("source");
const errorLine = document.getElementById("error");
const hint = document.getElementById("hint");
const seen = document.getElementById("seen");
const bars = document.getElementById("bars");
// A digit's strokes span more canvas pixels than this; a tap (a dot) does not, and is not sent.
const MIN_DRAWN = 28;
const NO_INK = "found no ink"; // the server's words for a blank image (cnnlab.preprocess.BlankImage)

let mode = "draw"; // "draw" for a digit model, "photo" for any other (set from GET /model)
let drawing = false;
let drawn = null; // the box the strokes' points cover on the canvas, null before any
let photoShown = false; // the canvas shows a photo: drawing starts on a clean canvas
let pictures = 0; // photos chosen so far: a photo decoded after a newer one was chosen is not drawn
let pending = null; // the latest request; an older answer arriving late is dropped
let stream = null; // the camera's, while it is on

function clearResult(what) {
  answer.textContent = "\u2013";
  source.textContent = what || "";
  errorLine.textContent = "";
  seen.removeAttribute("src");
  bars.replaceChildren();
}

function clearPicture() {
  context.save();
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.restore();
  drawn = null;
  photoShown = false;
}

function clearAll() {
  stopCamera();
  clearPicture();
  clearResult();
  pending = null;
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}

function cover(x, y) {
  if (x < 0 || y < 0 || x > canvas.width || y > canvas.height) return; // no ink lands off the canvas
  drawn = drawn ? {x0: Math.min(drawn.x0, x), y0: Math.min(drawn.y0, y), x1: Math.max(drawn.x1, x), y1: Math.max(drawn.y1, y)}
                : {x0: x, y0: y, x1: x, y1: y};
}

canvas.addEventListener("pointerdown", (event) => {
  if (mode !== "draw") return;
  if (photoShown) clearPicture();
  drawing = true;
  const [x, y] = point(event);
  cover(x, y);
  // a tap leaves a dot: a line of length zero is not painted by every browser, a filled circle is
  context.beginPath();
  context.arc(x, y, context.lineWidth / 2, 0, 2 * Math.PI);
  context.fill();
  context.beginPath();
  context.moveTo(x, y);
  canvas.setPointerCapture(event.pointerId); // the stroke goes on when the pointer leaves the canvas
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = point(event);
  cover(x, y);
  context.lineTo(x, y);
  context.stroke();
});
function endStroke() {
  if (!drawing) return;
  drawing = false;
  if (!drawn || Math.max(drawn.x1 - drawn.x0, drawn.y1 - drawn.y0) < MIN_DRAWN) {
    showError(drawn ? "That is a dot: draw the digit's strokes, larger." : "Nothing is drawn yet: draw a digit on the canvas.");
    return;
  }
  canvas.toBlob((blob) => predict(blob, "image/png", "your drawing"), "image/png");
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", clearAll);

document.getElementById("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  event.target.value = ""; // the same file can be chosen again
  stopCamera();
  showPhoto(file);
  const form = new FormData();
  form.append("files", file, file.name);
  predict(form, null, file.name);
});

// The photo, fitted on the canvas once the browser has decoded it. It never touches the answer:
// decoding a large photo can take longer than the server takes to answer.
function showPhoto(file) {
  clearPicture();
  photoShown = true;
  const chosen = ++pictures;
  const picture = new Image();
  const url = URL.createObjectURL(file);
  picture.onload = () => {
    if (chosen === pictures && photoShown) drawFitted(picture, picture.naturalWidth, picture.naturalHeight);
    URL.revokeObjectURL(url);
  };
  picture.onerror = () => URL.revokeObjectURL(url); // not an image the browser reads: the server says why
  picture.src = url;
}

function drawFitted(image, width, height) {
  const scale = Math.min(canvas.width / width, canvas.height / height);
  const w = width * scale, h = height * scale;
  context.drawImage(image, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
}

cameraButton.addEventListener("click", async () => {
  if (stream) {
    takePhoto();
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({video: {facingMode: "environment"}, audio: false});
  } catch (failure) {
    showError("The camera is not available (" + failure.message + ").");
    return;
  }
  video.srcObject = stream;
  video.hidden = false;
  canvas.hidden = true;
  cameraButton.textContent = "Take the photo";
  clearResult();
});

function takePhoto() {
  const width = video.videoWidth, height = video.videoHeight;
  if (!width || !height) return; // no frame yet
  const frame = document.createElement("canvas"); // the whole frame is sent, not the fitted view
  frame.width = width;
  frame.height = height;
  frame.getContext("2d").drawImage(video, 0, 0, width, height);
  clearPicture();
  photoShown = true;
  ++pictures;
  drawFitted(frame, width, height);
  stopCamera();
  frame.toBlob((blob) => predict(blob, "image/jpeg", "the camera's photo"), "image/jpeg", 0.92);
}

function stopCamera() {
  if (!stream) return;
  stream.getTracks().forEach((track) => track.stop());
  stream = null;
  video.srcObject = null;
  video.hidden = true;
  canvas.hidden = false;
  cameraButton.textContent = "Camera";
}

async function predict(body, type, what) {
  clearResult(what); // before the request is sent: nothing that happens later clears its answer
  answer.textContent = "\u2026";
  const request = fetch("/predict?top_k=10&seen=true", {
    method: "POST", body: body, headers: type ? {"Content-Type": type} : {},
  });
  pending = request;
  let reply, document_;
  try {
    reply = await request;
    document_ = await reply.json();
  } catch (failure) {
    if (pending === request) showError("The server did not answer (" + failure + ").");
    return;
  }
  if (pending !== request) return;
  if (!reply.ok) {
    const detail = typeof document_.detail === "string" ? document_.detail : JSON.stringify(document_.detail);
    // the API's advice for a blank image names a query option; a page user needs the page's
    showError(detail.includes(NO_INK) ? "Found no ink: " + what + " is blank; draw a digit, or upload a photo of one." : detail);
    return;
  }
  show(document_.predictions[0]);
}

function showError(message) {
  errorLine.textContent = message;
  answer.textContent = "?";
  seen.removeAttribute("src");
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
    label.title = entry.name; // a long name is cut short on screen
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = (100 * entry.probability).toFixed(1) + "%";
    track.append(fill);
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = (100 * entry.probability).toFixed(1) + "%";
    row.append(label, track, prob);
    return row;
  }));
}

function classList(classes) {
  return classes.length > 12 ? classes.slice(0, 10).join(", ") + " and " + (classes.length - 10) + " more"
                             : classes.join(", ");
}

function fitTo(model) {
  // the drawing canvas is for digits (what the mnist preprocessing reads); other models see photos
  mode = model.preprocess === "mnist" ? "draw" : "photo";
  document.body.dataset.mode = mode;
  document.title = "cnnlab: " + model.name;
  const camera = Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia); // secure pages only
  cameraButton.hidden = !camera;
  if (mode === "photo") {
    canvas.setAttribute("aria-label", "The photo sent to the model");
    hint.textContent = "Upload a photo" + (camera ? " or take one with the camera" : "") + ". Classes: " +
      classList(model.classes) + ".";
  } else {
    hint.textContent = "Draw a digit with the mouse, a pen or a finger, or upload a photo" +
      (camera ? " or take one with the camera" : "") + ".";
  }
}

context.lineWidth = 20;
context.lineCap = "round";
context.lineJoin = "round";
context.strokeStyle = "#000";
context.fillStyle = "#000";
clearAll();

fetch("/model").then((reply) => reply.json()).then((model) => {
  fitTo(model);
  const accuracy = model.test_accuracy == null ? "" : ", test accuracy " + (100 * model.test_accuracy).toFixed(1) + "%";
  document.getElementById("model-info").textContent =
    model.name + " \u2013 " + model.dataset + ", " + model.classes.length + " classes" + accuracy;
}).catch(() => {
  document.getElementById("model-info").textContent = "the server did not describe its model";
});
