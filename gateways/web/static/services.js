// The Services panel: the Services Directory's registrations with their live instances, and
// the admin's switch (service.enable / service.disable). Plain ES module, imported by app.js,
// which hands it its DOM and API helpers.

export const LIVENESS_MS = 3000; // heartbeats are not events: the panel asks again this often

const opened = new Set(); // services whose subjects the user expanded (kept across refreshes)
let disabling = null; // { name, reason, focus } while a disable form is open
let waitFor = 0; // the log position of the last command sent, for the next read

// A fresh Idempotency-Key (crypto.randomUUID needs a secure context; this does not).
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const isWebUrl = (url) => /^https?:\/\//i.test(url);

function age(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s ago`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s ago`;
}

export function servicesPanel({ h, api, stateTag, showError, ApiError, refresh }) {
  // One key per user action; a retry after a lost answer (no HTTP status) reuses it, so the
  // command still runs once.
  async function send(tag, body) {
    const headers = { "Idempotency-Key": newIdempotencyKey() };
    let out;
    try {
      out = await api("POST", `/v1/commands/${tag}`, body, headers);
    } catch (e) {
      if (e instanceof ApiError) throw e;
      out = await api("POST", `/v1/commands/${tag}`, body, headers);
    }
    waitFor = Math.max(waitFor, out.position || 0);
    return out;
  }

  async function run(fn, button) {
    if (button) button.disabled = true;
    try {
      showError(null);
      await fn();
      if (document.activeElement) document.activeElement.blur();
      refresh();
    } catch (e) { showError(e); }
    finally { if (button) button.disabled = false; }
  }

  function disableForm(s) {
    const input = h("input", { name: "reason", required: true, maxlength: "500",
                               placeholder: "why (shown to its users)", value: disabling.reason,
                               oninput: (ev) => { disabling.reason = ev.target.value; } });
    const form = h("form", { class: "disable-form", onsubmit: (ev) => {
      ev.preventDefault();
      const reason = input.value.trim();
      run(async () => {
        await send("service.disable", { name: s.name, reason });
        disabling = null;
      }, ev.submitter);
    } },
      h("label", {}, "Reason ", input),
      h("button", { type: "submit", "data-action": "confirm-disable" }, "Disable"),
      h("button", { type: "button", "data-action": "cancel-disable",
                    onclick: () => { disabling = null; refresh(); } }, "Cancel"));
    if (disabling.focus) { // once, when opened: later refreshes leave the focus alone
      disabling.focus = false;
      setTimeout(() => input.isConnected && input.focus());
    }
    return form;
  }

  function actions(s) {
    if (s.state === "Enabled") {
      if (disabling && disabling.name === s.name) return disableForm(s);
      return h("button", { type: "button", "data-action": "disable", onclick: () => {
        disabling = { name: s.name, reason: "", focus: true };
        refresh();
      } }, "Disable");
    }
    if (s.state === "Disabled") {
      return h("button", { type: "button", "data-action": "enable", onclick: (ev) =>
        run(() => send("service.enable", { name: s.name }), ev.target) }, "Enable");
    }
    return null; // deregistered: it registers itself anew when it starts again
  }

  function subjects(s) {
    const details = h("details", { class: "subjects", open: opened.has(s.name),
                                   ontoggle: (ev) => {
      if (ev.target.open) opened.add(s.name); else opened.delete(s.name);
    } },
      h("summary", {}, `${s.consumes.length} consumed · ${s.publishes.length} published`),
      h("div", { class: "muted" }, "consumes"),
      h("ul", { class: "consumes" }, s.consumes.map((x) => h("li", {}, h("code", {}, x)))),
      h("div", { class: "muted" }, "publishes"),
      h("ul", { class: "publishes" }, s.publishes.map((x) => h("li", {}, h("code", {}, x)))));
    return details;
  }

  function endpoints(s) {
    return h("ul", { class: "endpoints" }, Object.entries(s.endpoints).map(([name, url]) =>
      h("li", {}, `${name}: `, isWebUrl(url)
        ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, url)
        : h("code", {}, url))));
  }

  function instances(s) {
    if (!s.instances.length) return h("span", { class: "muted live-count" }, "none live");
    return [h("span", { class: "live-count" }, `${s.instances.length} live`),
      h("table", { class: "instances" },
        h("tr", {}, ["Instance", "Host", "PID", "Heartbeat"].map((t) => h("th", {}, t))),
        s.instances.map((i) => h("tr", { "data-instance": i.instance_id },
          h("td", {}, h("code", {}, i.instance_id)), h("td", {}, i.host), h("td", {}, i.pid),
          h("td", { class: "heartbeat" }, age(i.age)))))];
  }

  async function view() {
    const asked = waitFor;
    const out = await api("GET", `/v1/web/services${asked ? `?wait_for=${asked}` : ""}`);
    if (waitFor === asked) waitFor = 0;
    const rows = out.items.map((s) => h("tr", { "data-name": s.name, "data-id": s.id },
      h("td", {}, h("strong", {}, s.name), s.description && h("div", { class: "muted" }, s.description)),
      h("td", {}, s.version),
      h("td", {}, h("span", { class: "service-state" }, stateTag(s.state)),
        s.disabled_reason && h("div", { class: "reason" }, s.disabled_reason)),
      h("td", {}, endpoints(s)),
      h("td", {}, subjects(s)),
      h("td", { class: "live" }, instances(s)),
      h("td", { class: "actions" }, actions(s))));
    return [h("h1", {}, "Services"),
      out.liveness && h("p", { class: "error", id: "liveness-error" }, out.liveness),
      out.items.length
        ? h("table", { id: "services" }, h("tr", {},
            ["Service", "Version", "State", "Endpoints", "Subjects", "Instances", ""]
              .map((t) => h("th", {}, t))), rows)
        : h("p", { class: "muted" }, "No service has registered.")];
  }

  return { view };
}
