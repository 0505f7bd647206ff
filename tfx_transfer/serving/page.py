"""The drop-an-image page that ``tfx-transfer serve`` answers at ``/`` (no internet assets)."""

from __future__ import annotations

import json


def page_html(model_name: str, version: int | None) -> str:
    """The page for ``model_name``: choose or drop an image, see the top classes as bars.

    A multi-label export's answer adds every label above its threshold (``"labels"``,
    :meth:`~tfx_transfer.serving.servable.Servable.add_labels`) to the top classes, marked.

    Example:
        >>> "<title>photos - tfx-transfer serve</title>" in page_html("photos", 1)
        True
    """
    name = json.dumps(model_name)
    return _PAGE.replace("__NAME_JSON__", name).replace(
        "__TITLE__", model_name.replace("&", "&amp;").replace("<", "&lt;")).replace(
        "__VERSION__", str(version) if version is not None else "none yet")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__ - tfx-transfer serve</title>
<style>
 body { font: 15px/1.4 system-ui, sans-serif; max-width: 760px; margin: 2em auto; padding: 0 1em;
        color: #222; }
 h1 { font-size: 1.4em; margin-bottom: .2em; } .muted { color: #777; font-size: .9em; }
 #drop { border: 2px dashed #99a; border-radius: 10px; padding: 1.5em; text-align: center;
         cursor: pointer; margin: 1em 0; background: #fafafe; }
 #drop.over { background: #eef; border-color: #44a; }
 #main { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }
 #preview { max-width: 260px; max-height: 260px; border-radius: 6px; display: none; }
 #results { flex: 1; min-width: 260px; }
 .row { margin: .35em 0; } .label { display: flex; justify-content: space-between; }
 .bar { height: 12px; background: #e4e4ee; border-radius: 6px; overflow: hidden; }
 .bar > div { height: 100%; background: #4a6fd8; }
 .row:first-child .bar > div { background: #2a9d5c; }
 #error { color: #b00020; white-space: pre-wrap; }
 .unknown { color: #b00020; font-weight: bold; margin-bottom: .5em; }
 .known { color: #555; margin-bottom: .5em; }
 code { background: #f2f2f5; padding: 0 .25em; border-radius: 3px; }
</style></head>
<body>
<h1>__TITLE__</h1>
<div class="muted">version <span id="version">__VERSION__</span> &middot; served by
 <code>tfx-transfer serve</code> &middot; the page posts to
 <code>/v1/models/__TITLE__:predict</code>, as a TF Serving client would</div>
<label id="drop">Drop an image here, or click to choose one (JPEG, PNG, GIF, BMP, WebP)
 <input id="file" type="file" accept="image/*" hidden></label>
<div id="main"><img id="preview" alt="the image sent">
 <div id="results"></div></div>
<div id="error"></div>
<script>
const NAME = __NAME_JSON__;
const drop = document.getElementById("drop"), input = document.getElementById("file");
const results = document.getElementById("results"), error = document.getElementById("error");
const preview = document.getElementById("preview");
function show(prediction) {
  results.innerHTML = "";
  if (prediction.unknown !== undefined) {
    const verdict = document.createElement("div"); verdict.id = "unknown";
    verdict.className = prediction.unknown ? "unknown" : "known";
    verdict.textContent = (prediction.unknown ? "None of these: unlike every known class" :
      "Looks like a known class") + " (unknown score " + prediction.unknown_score.toFixed(3) + ")";
    results.append(verdict);
  }
  // multi-label: "labels" (every label above its threshold, best first) joins the top k
  const multi = Array.isArray(prediction.labels);
  const rows = prediction.class_names.map((name, i) => [name, prediction.scores[i]]);
  const on = new Set();
  if (multi) {
    const head = document.createElement("div"); head.className = "labels";
    head.textContent = "labels: " + (prediction.labels.length ?
      prediction.labels.map(l => l.class).join(", ") : "none above its threshold");
    results.append(head);
    prediction.labels.forEach(l => {
      on.add(l.class);
      if (!prediction.class_names.includes(l.class)) rows.push([l.class, l.score]);
    });
  }
  rows.forEach(([name, score]) => {
    const row = document.createElement("div"); row.className = "row";
    const label = document.createElement("div"); label.className = "label";
    const n = document.createElement("span"); n.className = "class";
    n.textContent = on.has(name) ? name + " \u2713" : name;
    const s = document.createElement("span"); s.className = "score";
    s.textContent = (100 * score).toFixed(1) + " %";
    label.append(n, s);
    const bar = document.createElement("div"); bar.className = "bar";
    const fill = document.createElement("div"); fill.style.width = (100 * score).toFixed(1) + "%";
    bar.append(fill); row.append(label, bar); results.append(row);
  });
}
function predict(file) {
  error.textContent = ""; results.textContent = "...";
  preview.src = URL.createObjectURL(file); preview.style.display = "block";
  const reader = new FileReader();
  reader.onload = async () => {
    const b64 = reader.result.slice(reader.result.indexOf(",") + 1);
    try {
      const response = await fetch("/v1/models/" + encodeURIComponent(NAME) + ":predict", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({instances: [{b64: b64}]})});
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || response.statusText);
      show(data.predictions[0]);
    } catch (err) { results.textContent = ""; error.textContent = String(err.message || err); }
  };
  reader.readAsDataURL(file);
}
input.addEventListener("change", () => { if (input.files.length) predict(input.files[0]); });
["dragenter", "dragover"].forEach(t => drop.addEventListener(t, e => {
  e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach(t => drop.addEventListener(t, e => {
  e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", e => { if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]); });
</script>
</body></html>
"""
