// A tenant's page of the End User API: log in, see your VMs, open a VM's console. A console
// opens in a new window through a single-use link (POST /v1/vms/{id}/console).
let token = sessionStorage.getItem("ck-enduser-token");
const $ = (s) => document.querySelector(s);

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers,
                                  body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error((data && data.error && data.error.message) || `${res.status}`);
  return data;
}

function button(label, fn) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.dataset.action = label;
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { $("#error").textContent = ""; await fn(); } catch (e) { $("#error").textContent = e.message; }
    finally { b.disabled = false; }
  });
  return b;
}

async function openConsole(vm, kind) {
  const win = window.open("about:blank", "_blank"); // inside the click: no popup blocker
  try {
    const grant = await api("POST", `/v1/vms/${vm.id}/console`, { kind });
    if (win) win.location = grant.url; else window.location.assign(grant.url);
  } catch (e) {
    if (win) win.close();
    throw e;
  }
}

async function refresh() {
  const body = $("#vms tbody");
  const { items } = await api("GET", "/v1/vms");
  body.replaceChildren(...items.filter((v) => v.state !== "Expunged").map((vm) => {
    const tr = document.createElement("tr");
    tr.dataset.id = vm.id;
    const actions = document.createElement("td");
    if (vm.state === "Running") {
      actions.append(button("console", () => openConsole(vm, "graphics")),
                     button("serial", () => openConsole(vm, "serial")));
    }
    for (const text of [vm.name, vm.state]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tr.append(actions);
    return tr;
  }));
  $("#vms").hidden = false;
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  try {
    const out = await api("POST", "/v1/login", { username: f.username.value,
                                                 password: f.password.value });
    token = out.token;
    sessionStorage.setItem("ck-enduser-token", token);
    f.reset();
    $("#who").textContent = `logged in as ${out.username || ""}`;
    await refresh();
  } catch (e) {
    $("#error").textContent = `login refused: ${e.message}`;
  }
});

if (token) refresh().catch((e) => { $("#error").textContent = e.message; });
