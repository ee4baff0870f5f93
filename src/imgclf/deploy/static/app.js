// imgclf web page: upload images to POST /predict?k=5&heatmap=true and show the results.
"use strict";
const drop = document.getElementById("drop");
const input = document.getElementById("file-input");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

fetch("/model").then(r => r.json()).then(m => {
  const acc = m.metrics && m.metrics.val ? `, validation accuracy ${(100 * m.metrics.val.accuracy).toFixed(1)}%` : "";
  document.getElementById("model-line").textContent =
    `${m.name} (${m.runtime}), ${m.classes.length} classes, ${m.input_size}x${m.input_size} input${acc}`;
  document.getElementById("heatmap-note").textContent = `Heatmap: ${m.heatmap}.`;
}).catch(() => { document.getElementById("model-line").textContent = "model info unavailable"; });

async function classify(file) {
  const card = el("div", {class: "card", "data-file": file.name});
  const original = el("img", {alt: file.name, src: URL.createObjectURL(file)});
  card.append(el("figure", {}, original, el("figcaption", {}, file.name)));
  const bars = el("div", {class: "bars"}, el("h3", {}, "classifying\u2026"));
  card.append(bars);
  results.prepend(card);
  const body = new FormData();
  body.append("files", file, file.name);
  try {
    const response = await fetch("/predict?k=5&heatmap=true", {method: "POST", body});
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    const pred = data.predictions[0];
    bars.replaceChildren(el("h3", {class: "predicted"}, pred.top[0].class));
    for (const t of pred.top) {
      const pct = 100 * t.probability;
      const fill = el("div", {class: "fill", style: `width:${pct.toFixed(1)}%`});
      bars.append(el("div", {class: "bar"}, el("span", {class: "name"}, t.class),
                     el("div", {class: "track"}, fill), el("span", {class: "pct"}, pct.toFixed(1) + "%")));
    }
    if (pred.heatmap) {
      const label = pred.heatmap.method === "grad-cam" ? `Grad-CAM (${pred.heatmap.layer})` : "occlusion map";
      const heat = el("img", {class: "heatmap", alt: label, title: pred.heatmap.description, src: pred.heatmap.png});
      card.insertBefore(el("figure", {}, heat, el("figcaption", {}, label)), bars);
    }
  } catch (err) {
    bars.replaceChildren(el("h3", {class: "error"}, "error: " + err.message));
  }
}

async function handle(files) {
  const list = Array.from(files);
  statusLine.textContent = `classifying ${list.length} image(s)\u2026`;
  await Promise.all(list.map(classify));
  statusLine.textContent = `done: ${list.length} image(s)`;
}

input.addEventListener("change", () => handle(input.files));
["dragenter", "dragover"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", e => handle(e.dataTransfer.files));
