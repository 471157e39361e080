"""The browsable page of an HTTP API's OpenAPI document (the admin API's, the end-user API's),
self-contained (no CDN).

The page fetches `/v1/openapi.json` and renders each path with its parameters, body and
answers; schemas expand on click. It works offline: no script or style comes from elsewhere.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>cloudkernel admin API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:12px 24px}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
input{width:100%;padding:6px 8px;font-size:14px;margin:8px 0 16px}
details{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:6px 0}
summary{cursor:pointer;padding:8px 12px;font-family:ui-monospace,monospace}
.m{display:inline-block;width:52px;font-weight:700}
.get{color:#0969da}.post{color:#1a7f37}
.body{padding:0 12px 12px}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #eee;
padding:3px 6px;text-align:left;vertical-align:top}
</style></head>
<body><header><b id="title">cloudkernel admin API</b> <span id="version"></span>
&middot; <a style="color:#9cf" href="/v1/openapi.json">openapi.json</a></header>
<main><p id="description"></p>
<input id="filter" placeholder="filter paths, e.g. vms or cancel">
<div id="paths">loading /v1/openapi.json ...</div>
<h2>Schemas</h2><div id="schemas"></div></main>
<script>
"use strict";
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
function schemaBlock(schema) { return el("pre", {}, JSON.stringify(schema, null, 2)); }
function render(doc) {
  document.getElementById("title").textContent = doc.info.title;
  document.getElementById("version").textContent = "v" + doc.info.version;
  document.getElementById("description").textContent = doc.info.description || "";
  const paths = document.getElementById("paths");
  paths.textContent = "";
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const body = el("div", {class: "body"}, el("p", {}, op.summary || ""));
      if (op.parameters && op.parameters.length) {
        const t = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"),
                                     el("th", {}, "schema"), el("th", {}, "description")));
        for (const p of op.parameters) {
          t.append(el("tr", {}, el("td", {}, p.name + (p.required ? " *" : "")),
                      el("td", {}, p.in), el("td", {}, JSON.stringify(p.schema)),
                      el("td", {}, p.description || "")));
        }
        body.append(t);
      }
      if (op.requestBody) {
        body.append(el("h4", {}, "body"),
                    schemaBlock(op.requestBody.content["application/json"].schema));
      }
      const r = el("ul", {});
      for (const [status, resp] of Object.entries(op.responses || {})) {
        r.append(el("li", {}, status + ": " + (resp.description || "")));
      }
      body.append(el("h4", {}, "responses"), r);
      const d = el("details", {"data-key": (method + " " + path).toLowerCase()},
                   el("summary", {}, el("span", {class: "m " + method}, method.toUpperCase()),
                      path), body);
      paths.append(d);
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    schemas.append(el("details", {"data-key": name.toLowerCase()},
                      el("summary", {}, name), el("div", {class: "body"}, schemaBlock(schema))));
  }
}
document.getElementById("filter").addEventListener("input", (ev) => {
  const q = ev.target.value.toLowerCase();
  for (const d of document.querySelectorAll("#paths details")) {
    d.style.display = d.dataset.key.includes(q) ? "" : "none";
  }
});
fetch("/v1/openapi.json").then((r) => r.json()).then(render).catch((e) => {
  document.getElementById("paths").textContent = "could not load the document: " + e;
});
</script></body></html>
"""
