// headct viewer: upload a study, scroll its axial slices in Niivue (vendored), with window presets,
// a Grad-CAM overlay per class, a per-slice probability strip per class and the study summary.
// Data comes from this server only: POST /v1/predict, then /v1/results/<id>/{volume.nii,cam/<n>.nii,prediction.json}.
// The strips are drawn on 2-D canvases (a chart, not an image): Niivue renders every image.
"use strict";

const WINDOWS = { brain: [40, 80], subdural: [80, 200], bone: [500, 2000] };  // centre, width (HU)
const NEGATIVE = new Set(["non-stroke"]);  // classes that mean "nothing found": no overlay

const $ = (id) => document.getElementById(id);
const view = {
  nv: null, id: null, result: null, slices: [], labels: [], thresholds: {},
  slice: 0, count: 0, camLabel: null, camLoads: 0,
  timings: {},  // read by the browser test: upload → JSON → first slice with overlay
};
window.headctViewer = view;

// --- Niivue ------------------------------------------------------------------

async function ensureNiivue() {
  if (view.nv) return view.nv;
  const nv = new niivue.Niivue({
    backColor: [0, 0, 0, 1], isColorbar: true, show3Dcrosshair: false, isOrientCube: false,
    crosshairWidth: 0, isRadiologicalConvention: true, isNearestInterpolation: false,
  });
  await nv.attachToCanvas($("gl"));
  nv.setSliceType(nv.sliceTypeAxial);
  nv.onLocationChange = (data) => {  // wheel scrolling and clicks inside Niivue
    if (data && data.vox) syncSlice(Math.round(data.vox[2]), false);
  };
  view.nv = nv;
  return nv;
}

function goToSlice(k) {
  if (!view.nv || !view.count) return;
  syncSlice(Math.max(0, Math.min(view.count - 1, k)), true);
}

function syncSlice(k, moveNiivue) {
  view.slice = k;
  if (moveNiivue) {
    const frac = view.nv.vox2frac([0, 0, k]);
    const pos = view.nv.scene.crosshairPos;
    view.nv.scene.crosshairPos = [pos[0], pos[1], frac[2]];
    view.nv.drawScene();
  }
  $("slice").value = String(k);
  const entry = view.slices[k];
  const found = entry && entry.positive.length ? `: ${entry.positive.join(", ")}` : "";
  $("slice-number").textContent = `slice ${k + 1} / ${view.count}${found}`;
  document.body.dataset.slice = String(k);
  drawStrips();
}

function setWindow(centre, width) {
  $("win-level").value = String(centre);
  $("win-width").value = String(width);
  const nv = view.nv;
  if (!nv || !nv.volumes.length) return;
  nv.volumes[0].cal_min = centre - width / 2;
  nv.volumes[0].cal_max = centre + width / 2;
  nv.updateGLVolume();
}

async function showCam(label) {
  // First the map of the slice in view (one slice: quick), then the whole series' maps in its place.
  const nv = view.nv;
  view.camLabel = label;
  const load = ++view.camLoads;
  while (nv.volumes.length > 1) nv.removeVolumeByIndex(1);
  if (!label) { nv.updateGLVolume(); return; }
  const url = `/v1/results/${view.id}/cam/${view.labels.indexOf(label)}.nii`;
  setStatus(`computing the Grad-CAM of ${label} on this slice…`);
  mark("overlay_asked_ms");
  if (!await placeCam(`${url}?only=${view.slice}`, load)) return;
  setStatus(`computing the Grad-CAM of ${label} on every slice…`);
  view.fullCam = placeCam(url, load).then((placed) => {
    if (placed) setStatus(`Grad-CAM of ${label}: where the model looked for it (0–1, drawn above 0.15).`);
  });
}

async function placeCam(url, load) {
  // The overlay from url, unless another class (or study) was chosen meanwhile; true when placed.
  const image = await niivue.NVImage.loadFromUrl({
    url, name: "gradcam.nii", colormap: "warm", opacity: Number($("cam-opacity").value),
    cal_min: 0.15, cal_max: 1.0, trustCalMinMax: true, colorbarVisible: true,
  });
  if (load !== view.camLoads) return false;
  if (view.timings.overlay_fetched_ms === undefined) mark("overlay_fetched_ms");
  const nv = view.nv;
  while (nv.volumes.length > 1) nv.removeVolumeByIndex(1);
  nv.addVolume(image);
  nv.updateGLVolume();
  return true;
}

// --- loading a result ----------------------------------------------------------

async function openResult(id) {
  const started = performance.now();
  const meta = await getJSON(`/v1/results/${id}`);
  const result = await getJSON(meta.prediction);
  view.id = id;
  view.result = result;
  view.labels = result.model.labels;
  view.thresholds = result.model.thresholds || {};
  view.slices = result.slices.filter((s) => s.series === meta.series);
  view.count = view.slices.length;
  renderSummary(result);
  const nv = await ensureNiivue();
  const [centre, width] = currentWindow();
  while (nv.volumes.length) nv.removeVolumeByIndex(0);
  await nv.loadVolumes([{ url: meta.volume, name: "series.nii", colormap: "gray",
                          cal_min: centre - width / 2, cal_max: centre + width / 2, trustCalMinMax: true,
                          colorbarVisible: false }]);
  nv.volumes[0].colorbarVisible = false;
  mark("series_drawn_ms");
  const slider = $("slice");
  slider.max = String(view.count - 1);
  fillCamChoices();
  const label = defaultCamLabel(result);
  $("cam-class").value = label || "";
  const peak = label ? peakSlice(label) : Math.floor(view.count / 2);
  goToSlice(peak);
  await showCam(label);
  mark("overlay_drawn_ms");
  view.timings.render_ms = performance.now() - started;
  markActiveStudy(id);
  document.body.dataset.state = "ready";
}

function mark(name) {  // ms since the upload started, for the latency benchmark
  if (view.t0 !== undefined) view.timings[name] = performance.now() - view.t0;
}

function defaultCamLabel(result) {
  const candidates = view.labels.filter((l) => !NEGATIVE.has(l));
  if (!candidates.length) return null;
  return candidates.reduce((a, b) => (result.study_probabilities[b] > result.study_probabilities[a] ? b : a));
}

function peakSlice(label) {
  let best = 0;
  view.slices.forEach((s, k) => { if (s.probabilities[label] > view.slices[best].probabilities[label]) best = k; });
  return best;
}

function fillCamChoices() {
  const select = $("cam-class");
  select.innerHTML = "";
  select.append(new Option("none", ""));
  for (const label of view.labels) if (!NEGATIVE.has(label)) select.append(new Option(label, label));
}

function currentWindow() {
  return [Number($("win-level").value), Math.max(1, Number($("win-width").value))];
}

// --- strips ------------------------------------------------------------------------

function drawStrips() {
  const box = $("strips");
  if (box.dataset.id !== view.id) {  // one row per class, built once per result
    box.innerHTML = "";
    box.dataset.id = view.id;
    for (const label of view.labels) {
      const row = document.createElement("div");
      row.className = "strip";
      const name = document.createElement("span");
      name.textContent = label;
      if ((view.result.study_positive || []).includes(label)) name.className = "positive";
      const canvas = document.createElement("canvas");
      canvas.dataset.label = label;
      canvas.dataset.peak = String(peakSlice(label));
      canvas.title = `${label}: per-slice probability; dashed line = threshold ${view.thresholds[label]}`;
      canvas.addEventListener("click", (e) => {
        const rect = canvas.getBoundingClientRect();
        goToSlice(Math.floor(((e.clientX - rect.left) / rect.width) * view.count));
      });
      row.append(name, canvas);
      box.append(row);
    }
  }
  for (const canvas of box.querySelectorAll("canvas")) drawStrip(canvas, canvas.dataset.label);
}

function drawStrip(canvas, label) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  const ctx = canvas.getContext("2d");
  const n = view.count;
  const cell = width / n;
  const y = (p) => height - 2 - p * (height - 4);
  ctx.clearRect(0, 0, width, height);
  view.slices.forEach((s, k) => {  // positive slices shaded
    if (s.positive.includes(label)) { ctx.fillStyle = "rgba(255,107,91,0.25)"; ctx.fillRect(k * cell, 0, cell, height); }
  });
  ctx.fillStyle = "rgba(74,163,255,0.35)";  // the current slice
  ctx.fillRect(view.slice * cell, 0, Math.max(cell, 2), height);
  const threshold = view.thresholds[label];
  if (threshold !== undefined) {
    ctx.strokeStyle = "#ff6b5b"; ctx.setLineDash([4 * ratio, 3 * ratio]); ctx.lineWidth = ratio;
    ctx.beginPath(); ctx.moveTo(0, y(threshold)); ctx.lineTo(width, y(threshold)); ctx.stroke();
    ctx.setLineDash([]);
  }
  ctx.strokeStyle = "#e6e9ee"; ctx.lineWidth = 1.5 * ratio;
  ctx.beginPath();
  view.slices.forEach((s, k) => {
    const px = (k + 0.5) * cell;
    const py = y(s.probabilities[label]);
    if (k === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
  });
  ctx.stroke();
}

// --- summary ---------------------------------------------------------------------

function renderSummary(result) {
  const rows = view.labels.map((label) => {
    const p = result.study_probabilities[label];
    const positive = result.study_positive.includes(label);
    return `<tr class="${positive ? "positive" : ""}"><td>${esc(label)}</td><td class="num">${p.toFixed(3)}</td>`
      + `<td class="num">${fmt(view.thresholds[label])}</td><td>${positive ? "positive" : "—"}</td></tr>`;
  }).join("");
  $("summary").innerHTML = `<table><tr><th>class</th><th>probability</th><th>threshold</th><th>decision</th></tr>${rows}</table>`
    + `<p class="note">Calibrated probabilities for the whole study; a class is positive at or above its threshold.</p>`;
  const warnings = $("warnings");
  warnings.innerHTML = "";
  for (const w of result.warnings.length ? result.warnings : ["none"]) {
    const li = document.createElement("li");
    li.textContent = w;
    warnings.append(li);
  }
  renderModelCard(result.model);
}

function renderModelCard(model) {
  const provenance = model.provenance;
  const synthetic = provenance && /phantom|synthetic/i.test(JSON.stringify(provenance));
  const items = [["name", model.name], ["version", model.version],
                 ["training data", provenance ? describe(provenance) : "not recorded in this checkpoint"],
                 ["intended use", model.intended_use ? describe(model.intended_use) : "not recorded in this checkpoint"]];
  $("model-card").innerHTML = (synthetic ? `<div class="banner">Trained on synthetic phantom data: not for clinical use.</div>` : "")
    + `<dl>${items.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(String(v))}</dd>`).join("")}</dl>`;
}

function describe(value) {
  if (value === null || typeof value !== "object") return String(value);
  return Object.entries(value).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join("; ");
}

// --- uploading ------------------------------------------------------------------------

async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, "upload");  // names stay on this computer
  setStatus(`uploading ${files.length} file(s)…`);
  document.body.dataset.state = "uploading";
  view.timings = {};
  const started = performance.now();
  view.t0 = started;
  try {
    const answer = await fetch("/v1/predict", { method: "POST", body: form });
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.detail || `HTTP ${answer.status}`);
    view.timings.predict_ms = performance.now() - started;
    const id = answer.headers.get("Location").split("/").pop();
    await refreshStudies();
    await openResult(id);
    view.timings.total_ms = performance.now() - started;
  } catch (err) {
    document.body.dataset.state = "error";
    setStatus(`could not use the upload: ${err.message}`, true);
  }
}

async function filesFromDrop(dataTransfer) {
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) return [...dataTransfer.files];
  const files = [];
  const walk = async (entry) => {
    if (entry.isFile) files.push(await new Promise((ok, fail) => entry.file(ok, fail)));
    else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  for (const entry of entries) await walk(entry);
  return files.filter((f) => !f.name.startsWith("."));
}

// --- studies kept by the server ---------------------------------------------------------

async function refreshStudies() {
  const list = await getJSON("/v1/results");
  const ul = $("studies");
  ul.innerHTML = "";
  for (const item of list) {
    const li = document.createElement("li");
    li.dataset.id = item.id;
    const when = new Date(item.created * 1000).toLocaleTimeString();
    const found = item.study_positive.length ? item.study_positive.join(", ") : "nothing above threshold";
    li.textContent = `${when} · ${item.slices} slices · ${found}`;
    li.addEventListener("click", () => openResult(item.id).catch((e) => setStatus(e.message, true)));
    ul.append(li);
  }
  if (view.id) markActiveStudy(view.id);
}

function markActiveStudy(id) {
  for (const li of $("studies").children) li.classList.toggle("active", li.dataset.id === id);
}

// --- helpers ---------------------------------------------------------------------------

async function getJSON(url) {
  const answer = await fetch(url);
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.detail || `HTTP ${answer.status}`);
  return body;
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const fmt = (x) => (x === undefined ? "—" : Number(x).toFixed(2));

// --- wiring -------------------------------------------------------------------------------

function wire() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(await filesFromDrop(e.dataTransfer));
  });
  $("pick-files").addEventListener("change", (e) => upload([...e.target.files]));
  $("pick-folder").addEventListener("change", (e) => upload([...e.target.files]));
  $("slice").addEventListener("input", (e) => goToSlice(Number(e.target.value)));
  for (const button of document.querySelectorAll("[data-window]")) {
    button.addEventListener("click", () => {
      for (const b of document.querySelectorAll("[data-window]")) b.classList.toggle("active", b === button);
      setWindow(...WINDOWS[button.dataset.window]);
    });
  }
  for (const id of ["win-level", "win-width"]) {
    $(id).addEventListener("change", () => {
      for (const b of document.querySelectorAll("[data-window]")) b.classList.remove("active");
      setWindow(...currentWindow());
    });
  }
  $("cam-class").addEventListener("change", (e) => showCam(e.target.value).catch((err) => setStatus(err.message, true)));
  $("cam-opacity").addEventListener("input", (e) => {
    if (view.nv && view.nv.volumes.length > 1) view.nv.setOpacity(1, Number(e.target.value));
  });
  window.addEventListener("keydown", (e) => {  // capture: Niivue's own keys would move a second time
    if (!view.count || e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    const step = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 5, PageDown: -5 }[e.key];
    if (step === undefined) return;
    e.preventDefault();
    e.stopPropagation();
    goToSlice(view.slice + step);
  }, true);
  window.addEventListener("resize", () => view.count && drawStrips());
  refreshStudies().catch((e) => setStatus(e.message, true));
}

wire();
