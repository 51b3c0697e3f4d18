// anomalens inspection page: upload images, show overlays, boxes, verdicts and a history.
// Works offline: no external scripts. The threshold slider relabels verdicts in the page only.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  token: sessionStorage.getItem("anomalens-token") || "",
  modelThreshold: null,
  threshold: null,
  records: [],  // every scored image, newest first
};

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

function fmt(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  const a = Math.abs(x);
  return a !== 0 && (a < 0.01 || a >= 1e4) ? x.toExponential(2) : x.toFixed(3);
}

function verdictOf(score) {
  if (state.threshold === null) return "UNKNOWN";
  return score >= state.threshold ? "DEFECTIVE" : "OK";
}

async function loadModel() {
  const res = await fetch("/v1/model", { headers: headers() });
  if (res.status === 401) {
    $("#auth").hidden = false;
    $("#model-info").textContent = "access token required";
    if (state.token) $("#auth-message").textContent = "that token was refused";
    return false;
  }
  if (!res.ok) {
    $("#model-info").textContent = "model information unavailable (" + res.status + ")";
    return false;
  }
  $("#auth").hidden = true;
  const info = await res.json();
  const parts = [info.method, info.backbone, info.runtime + (info.precision ? " " + info.precision : "")];
  $("#model-info").textContent = "model: " + parts.filter(Boolean).join(" · ");
  state.modelThreshold = info.threshold;
  if (state.threshold === null) state.threshold = info.threshold;
  setupSlider();
  return true;
}

function setupSlider() {
  const slider = $("#slider");
  $("#model-threshold").textContent = fmt(state.modelThreshold);
  if (state.modelThreshold === null) {
    slider.disabled = true;
    $("#threshold-value").textContent = "none (model not calibrated)";
    return;
  }
  const scores = state.records.map((r) => r.score);
  const top = Math.max(2 * state.modelThreshold, ...scores.map((s) => 1.1 * s));
  slider.min = 0;
  slider.max = top;
  slider.step = top / 1000;
  slider.value = state.threshold;
  slider.disabled = false;
  $("#threshold-value").textContent = fmt(state.threshold);
}

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function explanationText(expl) {
  if (!expl) return "";
  if (typeof expl === "string") return expl;
  for (const key of ["text", "summary", "description", "message"]) {
    if (typeof expl[key] === "string" && expl[key]) return expl[key];
  }
  return Object.entries(expl)
    .filter(([, v]) => ["string", "number"].includes(typeof v))
    .map(([k, v]) => k + ": " + v).join("; ");
}

function renderCard(rec) {
  const card = el("article", { class: "card", "data-name": rec.name });
  card.appendChild(el("h3", {}, rec.name));
  const fig = el("div", { class: "figure" });
  const img = el("img", { alt: "anomaly heat map over " + rec.name, src: rec.overlay || rec.src });
  fig.appendChild(img);
  rec.boxes.forEach((b, i) => {
    const box = el("div", { class: "box", title: rec.findings[i] || "" });
    box.style.left = (100 * b.x0 / rec.width) + "%";
    box.style.top = (100 * b.y0 / rec.height) + "%";
    box.style.width = (100 * (b.x1 - b.x0) / rec.width) + "%";
    box.style.height = (100 * (b.y1 - b.y0) / rec.height) + "%";
    box.appendChild(el("span", {}, "region " + (i + 1)));
    fig.appendChild(box);
  });
  card.appendChild(fig);
  card.appendChild(el("div", { class: "verdict" }));
  const bar = el("div", { class: "scorebar", title: "score against the decision threshold" });
  bar.appendChild(el("div", { class: "fill" }));
  bar.appendChild(el("div", { class: "mark" }));
  card.appendChild(bar);
  card.appendChild(el("div", { class: "legend" }));
  const text = explanationText(rec.explanation);
  if (text) card.appendChild(el("div", { class: "explanation" }, text));
  if (rec.findings.length) {
    const list = el("ul", { class: "findings" });
    rec.findings.forEach((f, i) => list.appendChild(el("li", {}, "region " + (i + 1) + ": " + f)));
    card.appendChild(list);
  } else if (rec.pixel_threshold !== null) {
    card.appendChild(el("div", { class: "findings" }, "no region above the pixel threshold"));
  }
  rec.card = card;
  updateCard(rec);
  return card;
}

function updateCard(rec) {
  const verdict = verdictOf(rec.score);
  const card = rec.card;
  card.classList.toggle("defective", verdict === "DEFECTIVE");
  const badge = card.querySelector(".verdict");
  badge.className = "verdict " + verdict;
  badge.textContent = verdict;
  const scale = Number($("#slider").max) || Math.max(rec.score, 1e-9);
  card.querySelector(".fill").style.width = Math.min(100, Math.max(0, 100 * rec.score / scale)) + "%";
  const mark = card.querySelector(".mark");
  mark.hidden = state.threshold === null;
  if (state.threshold !== null) mark.style.left = Math.min(100, 100 * state.threshold / scale) + "%";
  const legend = card.querySelector(".legend");
  legend.replaceChildren(el("span", {}, "score " + fmt(rec.score)),
    el("span", {}, "threshold " + fmt(state.threshold)));
}

function renderHistory() {
  const tbody = $("#history tbody");
  const needle = $("#filter").value.trim().toLowerCase();
  const want = $("#verdict-filter").value;
  tbody.replaceChildren();
  for (const rec of visibleRecords(needle, want)) {
    const v = verdictOf(rec.score);
    const row = el("tr");
    row.appendChild(el("td", {}, rec.time));
    row.appendChild(el("td", {}, rec.name));
    row.appendChild(el("td", {}, fmt(rec.score)));
    row.appendChild(el("td", {}, fmt(state.threshold)));
    row.appendChild(el("td", { class: v }, v));
    row.appendChild(el("td", {}, String(rec.boxes.length)));
    tbody.appendChild(row);
  }
}

function visibleRecords(needle, want) {
  return state.records.filter((r) =>
    (!needle || r.name.toLowerCase().includes(needle)) && (!want || verdictOf(r.score) === want));
}

function downloadCsv() {
  const quote = (s) => '"' + String(s).replaceAll('"', '""') + '"';
  const rows = [["time", "image", "score", "threshold", "verdict", "regions"]];
  const recs = visibleRecords($("#filter").value.trim().toLowerCase(), $("#verdict-filter").value);
  for (const r of recs) rows.push([r.time, r.name, r.score, state.threshold ?? "", verdictOf(r.score), r.boxes.length]);
  const blob = new Blob([rows.map((r) => r.map(quote).join(",")).join("\n") + "\n"], { type: "text/csv" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "anomalens-history.csv" });
  document.body.appendChild(a);
  a.click();
  a.remove();
}

async function upload(files) {
  files = [...files].filter((f) => f.size > 0);
  if (!files.length) return;
  const form = new FormData();
  files.forEach((f) => form.append("files", f, f.name));
  $("#status").textContent = "scoring " + files.length + " image" + (files.length > 1 ? "s" : "") + "…";
  let res;
  try {
    res = await fetch("/v1/predict?overlay=1", { method: "POST", body: form, headers: headers() });
  } catch (err) {
    $("#status").textContent = "the service did not answer: " + err;
    return;
  }
  const body = await res.json().catch(() => ({ error: "unreadable answer" }));
  if (res.status === 401) {
    $("#status").textContent = "access token required";
    await loadModel();
    return;
  }
  if (!res.ok) {
    $("#status").textContent = "error " + res.status + ": " + (body.error || "unknown");
    return;
  }
  const time = new Date().toLocaleTimeString();
  for (const r of body.results) {
    const rec = { ...r, time };
    state.records.unshift(rec);
    $("#results").prepend(renderCard(rec));
  }
  setupSlider();
  state.records.forEach(updateCard);
  renderHistory();
  const ms = Math.max(...body.results.map((r) => r.timings.total_ms));
  const n = body.results.length;
  $("#status").textContent = "scored " + n + " image" + (n > 1 ? "s" : "") + " in " + Math.round(ms) + " ms";
}

function init() {
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload(e.dataTransfer.files);
  });
  $("#files").addEventListener("change", (e) => { upload(e.target.files); e.target.value = ""; });
  $("#slider").addEventListener("input", (e) => {
    state.threshold = Number(e.target.value);
    $("#threshold-value").textContent = fmt(state.threshold);
    state.records.forEach(updateCard);
    renderHistory();
  });
  $("#threshold-reset").addEventListener("click", () => {
    state.threshold = state.modelThreshold;
    setupSlider();
    state.records.forEach(updateCard);
    renderHistory();
  });
  $("#filter").addEventListener("input", renderHistory);
  $("#verdict-filter").addEventListener("change", renderHistory);
  $("#csv").addEventListener("click", downloadCsv);
  $("#token-save").addEventListener("click", () => {
    state.token = $("#token").value.trim();
    sessionStorage.setItem("anomalens-token", state.token);
    loadModel();
  });
  loadModel();
}

init();
