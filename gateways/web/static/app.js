// The cloudkernel admin page: plain ES module, no build step, no outside resources.
// It talks to the admin API (/v1) with a bearer token kept in sessionStorage, and follows
// the platform's events over Server-Sent Events (/v1/stream) to refresh what it shows.

import { LIVENESS_MS, servicesPanel } from "./services.js";

const TOKEN = "cloudkernel.token";
const $ = (sel) => document.querySelector(sel);
let source = null;
let refreshTimer = null;
let current = { name: "", arg: "" };

// ------------------------------------------------------------------ DOM and API helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(method, path, body, extraHeaders = {}) {
  const headers = { Accept: "application/json", ...extraHeaders };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers,
                                  body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    if (res.status === 401 && path !== "/v1/login") logout("session ended: log in again");
    throw new ApiError(res.status, data);
  }
  return data;
}

// The log position of the newest live event: a read waits until its read model has applied
// it, or a refresh an event asked for could show what the event already changed.
let seen = 0;
const list = async (model, query = "") =>
  (await api("GET", `/v1/${model}?limit=500${query}${seen ? `&wait_for=${seen}` : ""}`)).items ?? [];

function showError(e) {
  $("#error").textContent = e ? String(e.message || e) : "";
}

const stateTag = (s) => h("span", { class: `state state-${s}` }, s ?? "");
const short = (id) => (id ? String(id).slice(0, 8) : "");
const when = (t) => (t ? new Date(t).toLocaleTimeString() : "");

function bar(used, total, label) {
  const pct = total > 0 ? Math.min(100, Math.round((100 * used) / total)) : 0;
  const cls = pct >= 95 ? "bar full" : pct >= 75 ? "bar high" : "bar";
  return h("span", { title: `${label}: ${used} of ${total} (${pct}%)` },
           h("span", { class: cls }, h("span", { style: `width:${pct}%` })),
           ` ${used}/${total} ${label}`);
}

function actionButton(label, fn) {
  return h("button", { type: "button", "data-action": label, onclick: async (ev) => {
    ev.target.disabled = true;
    try { showError(null); await fn(); } catch (e) { showError(e); }
    finally { ev.target.disabled = false; }
  } }, label);
}

// ------------------------------------------------------------------ login and session

function logout(message) {
  sessionStorage.removeItem(TOKEN);
  if (source) { source.close(); source = null; }
  $("#login-error").textContent = message || "";
  render();
}

async function onLogin(ev) {
  ev.preventDefault();
  const form = ev.target;
  try {
    const out = await api("POST", "/v1/login", { username: form.username.value,
                                                 password: form.password.value });
    sessionStorage.setItem(TOKEN, out.token);
    form.reset();
    $("#login-error").textContent = "";
    render();
  } catch (e) {
    $("#login-error").textContent = `login refused: ${e.message}`;
  }
}

function onToken(ev) {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN, ev.target.token.value.trim());
  ev.target.reset();
  render();
}

// ------------------------------------------------------------------ live events

function connectStream() {
  const token = sessionStorage.getItem(TOKEN);
  if (!token || source) return;
  source = new EventSource(`/v1/stream?untyped=1&token=${encodeURIComponent(token)}`);
  source.onopen = () => { $("#live").textContent = "live"; };
  source.onerror = () => { $("#live").textContent = "reconnecting…"; };
  source.onmessage = (ev) => onEvent(JSON.parse(ev.data));
  source.addEventListener("overflow", () => scheduleRefresh());
}

const RELEVANT = {
  fleet: ["host", "zone", "pod", "cluster"],
  vms: ["vm", "operation"],
  volumes: ["volume", "operation"],
  networks: ["network", "operation"],
  operations: ["operation"],
  services: ["service_registration"],
};

function onEvent(e) {
  const kind = e.topic.split(".", 1)[0];
  if (e.position) seen = Math.max(seen, e.position);
  $("#live").textContent = `live · #${e.position ?? ""} ${e.topic}`;
  if (current.name === "operation" || current.name === "history") {
    if (e.originator_id === current.arg) scheduleRefresh();
  } else if ((RELEVANT[current.name] || []).includes(kind)) {
    scheduleRefresh();
  }
}

function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; show(false); }, 150);
}

// ------------------------------------------------------------------ views

async function fleetView() {
  const [hosts, catalog] = await Promise.all([list("hosts"), api("GET", "/v1/web/catalog")]);
  const names = {};
  for (const kind of ["zones", "pods", "clusters"]) {
    for (const e of catalog[kind]) names[e.id] = e.name;
  }
  const tree = {};
  for (const host of hosts) {
    const z = (tree[host.zone_id] ??= {});
    const p = (z[host.pod_id] ??= {});
    (p[host.cluster_id] ??= []).push(host);
  }
  const sum = (rows, col) => rows.reduce((a, r) => a + (r[col] || 0), 0);
  const out = [h("h1", {}, "Fleet")];
  if (!hosts.length) out.push(h("p", { class: "muted" }, "No hosts registered."));
  for (const [zoneId, pods] of Object.entries(tree)) {
    const zoneHosts = Object.values(pods).flatMap((p) => Object.values(p).flat());
    out.push(h("h2", {}, `Zone ${names[zoneId] ?? short(zoneId)} `,
               bar(sum(zoneHosts, "used_cpu_cores"), sum(zoneHosts, "total_cpu_cores"), "cores")));
    const zoneEl = h("div", { class: "tree" });
    for (const [podId, clusters] of Object.entries(pods)) {
      zoneEl.append(h("h3", {}, `Pod ${names[podId] ?? short(podId)}`));
      const podEl = h("div", { class: "tree" });
      for (const [clusterId, rows] of Object.entries(clusters)) {
        podEl.append(h("h3", {}, `Cluster ${names[clusterId] ?? short(clusterId)}`));
        podEl.append(h("table", { class: "hosts" },
          h("tr", {}, ["Host", "Status", "State", "CPU", "Memory", "VMs", ""].map((t) => h("th", {}, t))),
          rows.map((r) => h("tr", { "data-id": r.id },
            h("td", {}, r.name), h("td", {}, stateTag(r.status)),
            h("td", {}, stateTag(r.resource_state)),
            h("td", {}, bar(r.used_cpu_cores, r.total_cpu_cores, "cores")),
            h("td", {}, bar(r.used_memory_mib, r.total_memory_mib, "MiB")),
            h("td", {}, r.claim_count),
            h("td", {}, h("a", { href: `#/history/${r.id}` }, "history"))))));
      }
      zoneEl.append(podEl);
    }
    out.push(zoneEl);
  }
  return out;
}

async function command(path, body = {}) {
  const out = await api("POST", path, body);
  if (out.operation_id) {
    lastOperation = out.operation_id;
    $("#error").textContent = "";
  }
  return out;
}

let lastOperation = null;

// A console opens in a new window through a single-use link the platform mints; the window
// is opened at once (inside the click, so no popup blocker stops it) and sent to the link.
async function openConsole(vm, kind) {
  const win = window.open("about:blank", "_blank");
  try {
    const out = await api("POST", `/v1/vms/${vm.id}/console`, { kind });
    const url = (out.result || out).url;
    if (win) win.location = url; else window.location.assign(url);
  } catch (e) {
    if (win) win.close();
    throw e;
  }
}

async function vmsView() {
  const [vms, catalog, templates, networks] = await Promise.all([
    list("vms"), api("GET", "/v1/web/catalog"), list("templates", "&state=Ready"),
    list("networks"),
  ]);
  const visible = vms.filter((v) => v.state !== "Expunged");
  const opt = (rows, label) => rows.map((r) => h("option", { value: r.id }, label(r)));
  const form = h("form", { class: "box", id: "deploy-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = { name: f.name.value, account: f.account.value, zone_id: f.zone_id.value,
                   service_offering_id: f.service_offering_id.value,
                   template_id: f.template_id.value };
    if (f.network_id.value) body.network_ids = [f.network_id.value];
    try {
      showError(null);
      const out = await command("/v1/vms", body);
      location.hash = `#/operations/${out.operation_id}`;
    } catch (e) { showError(e); }
  } },
    h("strong", {}, "Deploy a VM "),
    h("label", {}, "Name ", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9-]*" })),
    h("label", {}, "Account ", h("input", { name: "account", required: true, value: "admin" })),
    h("label", {}, "Zone ", h("select", { name: "zone_id", required: true }, opt(catalog.zones, (z) => z.name))),
    h("label", {}, "Offering ", h("select", { name: "service_offering_id", required: true },
      opt(catalog.service_offerings, (o) => `${o.name} (${o.cpu_cores} cores, ${o.memory_mib} MiB)`))),
    h("label", {}, "Template ", h("select", { name: "template_id", required: true }, opt(templates, (t) => t.name))),
    h("label", {}, "Network ", h("select", { name: "network_id" }, h("option", { value: "" }, "(none)"),
      opt(networks.filter((n) => n.state === "Implemented"), (n) => `${n.name} ${n.cidr}`))),
    h("button", { type: "submit" }, "Deploy"));
  const rows = visible.map((v) => h("tr", { "data-id": v.id, "data-name": v.name },
    h("td", {}, v.name), h("td", {}, v.account), h("td", { class: "vm-state" }, stateTag(v.state)),
    h("td", {}, short(v.host_id)), h("td", { class: "error" }, v.last_error),
    h("td", { class: "actions" },
      v.state === "Stopped" && actionButton("start", () => command(`/v1/vms/${v.id}/start`)),
      v.state === "Running" && actionButton("stop", () => command(`/v1/vms/${v.id}/stop`)),
      v.state === "Running" && actionButton("console", () => openConsole(v, "graphics")),
      v.state === "Running" && actionButton("serial", () => openConsole(v, "serial")),
      ["Running", "Stopped", "Error"].includes(v.state) &&
        actionButton("destroy", () => confirm(`destroy ${v.name}?`) && command(`/v1/vms/${v.id}/destroy`)),
      h("a", { href: `#/history/${v.id}` }, "history"))));
  return [h("h1", {}, "Virtual machines"), form,
          h("table", { id: "vms" }, h("tr", {}, ["Name", "Account", "State", "Host", "Last error", ""]
            .map((t) => h("th", {}, t))), rows),
          lastOperation && h("p", {}, "Last operation: ",
                              h("a", { href: `#/operations/${lastOperation}` }, short(lastOperation)))];
}

async function volumesView() {
  const [volumes, vms] = await Promise.all([list("volumes"), list("vms")]);
  const vmName = Object.fromEntries(vms.map((v) => [v.id, v.name]));
  const running = vms.filter((v) => ["Running", "Stopped"].includes(v.state));
  const rows = volumes.filter((v) => v.state !== "Expunged").map((v) => {
    const pick = h("select", {}, running.map((vm) => h("option", { value: vm.id }, vm.name)));
    return h("tr", { "data-id": v.id },
      h("td", {}, v.name), h("td", {}, v.account), h("td", {}, v.type), h("td", {}, stateTag(v.state)),
      h("td", {}, `${Math.round(v.size_bytes / 2 ** 20)} MiB`), h("td", {}, vmName[v.vm_id] ?? short(v.vm_id)),
      h("td", { class: "actions" },
        v.type === "DATADISK" && v.vm_id && actionButton("detach", () => command(`/v1/volumes/${v.id}/detach`)),
        v.type === "DATADISK" && !v.vm_id && v.state === "Ready" && running.length > 0 &&
          [pick, actionButton("attach", () => command(`/v1/volumes/${v.id}/attach`, { vm_id: pick.value }))],
        v.type === "DATADISK" && !v.vm_id &&
          actionButton("delete", () => confirm(`delete ${v.name}?`) && command(`/v1/volumes/${v.id}/delete`)),
        h("a", { href: `#/history/${v.id}` }, "history")));
  });
  return [h("h1", {}, "Volumes"), h("table", { id: "volumes" },
    h("tr", {}, ["Name", "Account", "Type", "State", "Size", "VM", ""].map((t) => h("th", {}, t))), rows)];
}

async function networksView() {
  const networks = await list("networks");
  const rows = networks.map((n) => h("tr", { "data-id": n.id },
    h("td", {}, n.name), h("td", {}, n.type), h("td", {}, stateTag(n.state)), h("td", {}, n.cidr),
    h("td", {}, n.vlan ?? ""), h("td", {}, bar(n.ip_used, n.ip_total, "addresses")),
    h("td", { class: "actions" },
      n.state === "Allocated" && actionButton("implement", () => command(`/v1/networks/${n.id}/implement`)),
      n.state === "Implemented" && actionButton("shutdown", () => command(`/v1/networks/${n.id}/shutdown`)),
      h("a", { href: `#/history/${n.id}` }, "history"))));
  return [h("h1", {}, "Networks"), h("table", { id: "networks" },
    h("tr", {}, ["Name", "Type", "State", "CIDR", "VLAN", "Addresses", ""].map((t) => h("th", {}, t))), rows)];
}

async function operationsView() {
  const ops = (await list("operations")).sort((a, b) => (a.accepted_at < b.accepted_at ? 1 : -1));
  const rows = ops.slice(0, 200).map((o) => h("tr", { "data-id": o.id },
    h("td", {}, h("a", { href: `#/operations/${o.id}` }, short(o.id))), h("td", {}, o.kind),
    h("td", {}, stateTag(o.state)),
    h("td", {}, bar(o.steps_succeeded, o.steps_total, "steps")), h("td", {}, when(o.accepted_at))));
  return [h("h1", {}, "Operations"), h("table", { id: "operations" },
    h("tr", {}, ["Operation", "Kind", "State", "Progress", "Accepted"].map((t) => h("th", {}, t))), rows)];
}

const FINISHED = ["Succeeded", "Failed", "RolledBack", "Cancelled"];

async function operationView(id) {
  const op = await api("GET", `/v1/operations/${id}`);
  // A compensation that never had to run is noise once the operation succeeded.
  const shown = op.steps.filter((s) => !(op.state === "Succeeded" && s.phase === "compensation"
                                         && s.status === "Pending"));
  const steps = shown.map((s) => h("tr", { "data-step": s.step_id, "data-phase": s.phase },
    h("td", {}, s.phase), h("td", {}, s.subsystem), h("td", {}, s.action),
    h("td", { class: "step-status" }, stateTag(s.status)), h("td", {}, s.attempts),
    h("td", { class: "error" }, s.last_error ? `${s.last_error_code}: ${s.last_error}` : "")));
  return [h("h1", {}, `Operation ${op.kind} `, h("span", { id: "op-state" }, stateTag(op.state))),
    h("p", { class: "muted" }, `${op.id} · accepted ${when(op.accepted_at)}`,
      op.finished_at ? ` · finished ${when(op.finished_at)}` : ""),
    op.failure && h("p", { class: "error" }, `${op.failure.error_code}: ${op.failure.message}`),
    h("p", {}, "Entities: ", op.entity_ids.map((e) => [h("a", { href: `#/history/${e}` }, short(e)), " "]),
      " · ", h("a", { href: `#/history/${op.id}` }, "history")),
    !FINISHED.includes(op.state) &&
      actionButton("cancel", () => command(`/v1/operations/${op.id}/cancel`, { reason: "cancelled from the web page" })),
    h("table", { id: "steps" }, h("tr", {}, ["Phase", "Subsystem", "Action", "Status", "Attempts", "Error"]
      .map((t) => h("th", {}, t))), steps)];
}

async function historyView(id) {
  const rows = await list("audit", `&originator_id=${encodeURIComponent(id)}`);
  return [h("h1", {}, `History of ${id}`),
    rows.length ? h("ol", { class: "timeline", id: "timeline" }, rows.map((r) => h("li", {},
      h("strong", {}, r.topic), ` v${r.originator_version} · ${new Date(r.timestamp).toLocaleString()}`,
      r.actor ? ` · by ${r.actor}` : "", h("span", { class: "muted" }, ` · #${r.position}`))))
      : h("p", { class: "muted" }, "No events (yet) for this entity.")];
}

const services = servicesPanel({ h, api, stateTag, showError, ApiError,
                                 refresh: () => show(false) });
const servicesView = () => services.view();

const VIEWS = { fleet: fleetView, vms: vmsView, volumes: volumesView, networks: networksView,
                services: servicesView, operations: operationsView, operation: operationView,
                history: historyView };

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  if (parts[0] === "operations" && parts[1]) return { name: "operation", arg: parts[1] };
  if (parts[0] === "history" && parts[1]) return { name: "history", arg: parts[1] };
  return { name: VIEWS[parts[0]] ? parts[0] : "fleet", arg: "" };
}

let generation = 0;

async function show(clearError = true) {
  current = route();
  const mine = ++generation;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === `#/${current.name}`);
  }
  if (clearError) showError(null);
  try {
    const content = await VIEWS[current.name](current.arg);
    if (mine !== generation) return; // a newer view was asked for meanwhile
    // Keep what the user is typing in a form across live refreshes.
    const active = document.activeElement;
    const typing = active && active.matches("input, select, textarea") &&
      active.closest("#deploy-form, .disable-form");
    if (typing && !clearError) return;
    $("#view").replaceChildren(...[content].flat().filter(Boolean));
  } catch (e) {
    if (mine === generation) showError(e);
  }
}

function render() {
  const loggedIn = Boolean(sessionStorage.getItem(TOKEN));
  $("#login").hidden = loggedIn;
  $("#view").hidden = !loggedIn;
  $("#nav").hidden = !loggedIn;
  $("#logout").hidden = !loggedIn;
  if (loggedIn) { connectStream(); show(); }
  else { $("#view").replaceChildren(); $("#live").textContent = ""; }
}

$("#login-form").addEventListener("submit", onLogin);
$("#token-form").addEventListener("submit", onToken);
$("#logout").addEventListener("click", () => logout(""));
window.addEventListener("hashchange", () => sessionStorage.getItem(TOKEN) && show());
// Heartbeats are not events: the Services panel asks again every few seconds.
setInterval(() => {
  if (current.name === "services" && sessionStorage.getItem(TOKEN) && !document.hidden) {
    scheduleRefresh();
  }
}, LIVENESS_MS);
render();
