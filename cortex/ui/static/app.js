// helexa dashboard: plain JavaScript, no framework, nothing fetched from outside the gateway.
//
// Every figure comes from the gateway's API: /admin/fleet (nodes, devices, models),
// /v1/models (the merged catalogue), /admin/traffic (recent requests and rates),
// /admin/actors/stream (the live actor tree) and /admin/nodes/<name>/actors (a node's
// own tree). Actions are the admin routes (load, unload, pin, unpin, drain); the playground
// is /v1/chat/completions.
// The key the operator types is kept in this tab only (sessionStorage) and sent as
// `Authorization: Bearer`; refusals are shown with the API's own message.
"use strict";

const POLL_MS = 1000;
const state = {
  key: sessionStorage.getItem("helexa-key") || "",
  view: null,
  timer: null,
  abort: null, // the current view's streams and requests
  fleet: null,
  pending: new Map(), // "<model>" → {action, started}
  loadingSince: new Map(), // "<node>/<model>" → ms, first seen loading
  collapsed: new Set(), // actor paths the operator closed
  lastRender: new Map(), // view part → digest of what it drew
  catalogue: null, // the last /v1/models
  fleetError: null, // why /admin/fleet was refused, for the Models view
  chat: [],
  chatAbort: null,
};

// -- small helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function badge(word, cls) {
  return h("span", { class: `badge st-${cls || word}` }, word);
}

function seconds(value, digits = 2) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(digits)} s`;
}

function mb(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value)} MB`;
}

function table(headers, rows, numeric = []) {
  return h(
    "table", {},
    h("thead", {}, h("tr", {}, headers.map((t, i) =>
      h("th", { scope: "col", class: numeric.includes(i) ? "num" : null }, t)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) =>
      h("td", { class: numeric.includes(i) ? "num" : null }, c))))),
  );
}

/** Replace `target`'s content only when `digest` differs from what it last drew (keeps focus). */
function draw(target, digest, build) {
  const el = typeof target === "string" ? document.getElementById(target) : target;
  if (state.lastRender.get(el.id) === digest) return;
  state.lastRender.set(el.id, digest);
  el.replaceChildren(...[build()].flat());
}

/** Changes every second while something loads (its elapsed time is shown), else never. */
function ticking() {
  return state.pending.size || state.loadingSince.size ? Math.floor(Date.now() / 1000) : 0;
}

function notice(text, kind = "error") {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.className = kind === "info" ? "info" : "";
  el.hidden = !text;
}

// -- the API -------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
  }
}

function headers(json) {
  const out = {};
  if (state.key) out.Authorization = `Bearer ${state.key}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

function messageOf(status, text) {
  try {
    const data = JSON.parse(text);
    if (data && data.error && data.error.message) return data.error.message;
  } catch (_) { /* not JSON: say what came */ }
  return text.trim().slice(0, 300) || `HTTP ${status}`;
}

async function api(method, path, body, signal) {
  const response = await fetch(path, {
    method, headers: headers(body !== undefined), cache: "no-store", signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) {
    const failure = new ApiFailure(response.status, messageOf(response.status, text));
    if (response.status === 401) askForKey(failure.message);
    throw failure;
  }
  return text ? JSON.parse(text) : null;
}

/** POST/GET a server-sent-event stream; `onEvent(data)` for each `data:` payload. */
async function stream(method, path, body, signal, onEvent) {
  const response = await fetch(path, {
    method, headers: headers(body !== undefined), cache: "no-store", signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    const failure = new ApiFailure(response.status, messageOf(response.status, await response.text()));
    if (response.status === 401) askForKey(failure.message);
    throw failure;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) onEvent(data);
    }
  }
}

function aborted(error) {
  return error && error.name === "AbortError";
}

// -- auth ----------------------------------------------------------------------------------

function authStatus(text, problem = false) {
  const el = document.getElementById("auth-status");
  el.textContent = text;
  el.className = problem ? "problem" : "";
}

/** A 401: say why next to the key field; `focus` moves there (only when the key is checked,
 *  not on every refused poll, so the operator is not pulled away from what they do). */
function askForKey(message, focus = false) {
  authStatus(message, true);
  if (focus) document.getElementById("key-input").focus();
}

async function checkKey() {
  if (!state.key) {
    try {
      await api("GET", "/admin/fleet");
      authStatus("open gateway: no key needed");
    } catch (error) {
      if (error.status === 401) askForKey(error.message, true);
      else authStatus(error.message, true);
    }
    return;
  }
  try {
    await api("GET", "/v1/models");
  } catch (error) {
    if (error.status === 401) askForKey(error.message, true);
    else authStatus(error.message, true);
    return;
  }
  try {
    await api("GET", "/admin/fleet");
    authStatus("admin key");
  } catch (error) {
    authStatus(error.status === 403 ? `${error.message} (fleet, traffic and actions need an admin key)`
      : error.message, error.status !== 403);
  }
}

function setupKeyForm() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = input.value.trim();
    if (state.key) sessionStorage.setItem("helexa-key", state.key);
    else sessionStorage.removeItem("helexa-key");
    input.value = "";
    input.placeholder = state.key ? "key in use (this tab only)" : "not needed on an open gateway";
    state.lastRender.clear();
    notice("");
    checkKey().then(() => show(state.view));
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    state.key = "";
    sessionStorage.removeItem("helexa-key");
    input.placeholder = "not needed on an open gateway";
    state.lastRender.clear();
    checkKey().then(() => show(state.view));
  });
  if (state.key) input.placeholder = "key in use (this tab only)";
}

// -- views: switching and polling ----------------------------------------------------------

const VIEWS = {
  fleet: { poll: pollFleet },
  models: { poll: pollModels },
  traffic: { poll: pollTraffic },
  actors: { start: startActors },
  playground: { start: startPlayground },
};

function show(name) {
  if (!VIEWS[name]) name = "fleet";
  clearTimeout(state.timer);
  if (state.abort) state.abort.abort();
  state.abort = new AbortController();
  state.view = name;
  for (const view of Object.keys(VIEWS)) {
    document.getElementById(`view-${view}`).hidden = view !== name;
  }
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const view = VIEWS[name];
  if (view.start) view.start(state.abort.signal);
  if (view.poll) loop(view.poll, state.abort.signal);
}

async function loop(poll, signal) {
  try {
    await poll(signal);
  } catch (error) {
    if (aborted(error)) return;
    notice(error.message || String(error));
  }
  if (!signal.aborted) state.timer = setTimeout(() => loop(poll, signal), POLL_MS);
}

async function fetchFleet(signal) {
  state.fleet = await api("GET", "/admin/fleet", undefined, signal);
  const seen = new Set();
  for (const node of state.fleet.nodes) {
    for (const model of node.models) {
      const key = `${node.name}/${model.id}`;
      if (model.status === "loading" || model.status === "recovering") {
        seen.add(key);
        if (!state.loadingSince.has(key)) state.loadingSince.set(key, Date.now());
      }
    }
  }
  for (const key of [...state.loadingSince.keys()]) if (!seen.has(key)) state.loadingSince.delete(key);
  return state.fleet;
}

// -- Fleet ---------------------------------------------------------------------------------

async function pollFleet(signal) {
  const fleet = await fetchFleet(signal);
  notice("");
  let inFlight = 0;
  let queued = 0;
  for (const node of fleet.nodes) for (const m of node.models) { inFlight += m.in_flight; queued += m.queued; }
  const up = fleet.nodes.filter((n) => n.state === "up").length;
  document.getElementById("fleet-summary").textContent =
    `Fleet ${fleet.status}: ${up} of ${fleet.nodes.length} nodes up; ${inFlight} requests in flight, ${queued} queued.`;
  const digest = JSON.stringify(fleet.nodes.map((n) => ({ ...n, last_poll_age_s: null })))
    + [...state.loadingSince.keys()].join() + ticking();
  draw("fleet-body", digest, () => fleet.nodes.map(nodeCard));
}

function modelStatus(node, model) {
  const parts = [badge(model.status)];
  const since = state.loadingSince.get(`${node.name}/${model.id}`);
  if (since) {
    parts.push(h("progress", { "aria-label": `loading ${model.id}` }),
      ` ${((Date.now() - since) / 1000).toFixed(0)} s`);
  }
  if (model.pinned) parts.push(badge("pinned", "pinned"));
  if (model.error) parts.push(h("span", { class: "problem" }, ` ${model.error}`));
  return parts;
}

function nodeCard(node) {
  const state_ = node.draining ? [badge(node.state), badge("draining")] : [badge(node.state)];
  const devices = node.devices.map((d) => {
    const used = d.total_mb - d.free_mb;
    return [d.id || `#${d.index}`,
      h("span", {}, h("meter", { min: 0, max: d.total_mb, value: used, "aria-label": `memory used on ${d.id || d.index}` }),
        ` ${mb(used)} / ${mb(d.total_mb)}`),
      d.utilization_pct === null || d.utilization_pct === undefined ? "–" : `${d.utilization_pct} %`];
  });
  const models = node.models.map((m) => [
    h("span", { class: "mono" }, m.id), h("span", {}, modelStatus(node, m)),
    m.devices && m.devices.length ? m.devices.join(", ") : "–", mb(m.memory_mb),
    String(m.in_flight), String(m.queued)]);
  return h("article", { class: "card", "data-node": node.name, "aria-label": `node ${node.name}` },
    h("h3", {}, node.name, " ", state_),
    h("p", { class: "summary" }, h("span", { class: "mono" }, node.endpoint),
      node.last_poll_age_s === null ? " · never answered" : ` · polled ${seconds(node.last_poll_age_s, 1)} ago`),
    node.error ? h("p", { class: "problem" }, node.error) : null,
    devices.length ? table(["Device", "Memory used", "Utilisation"], devices, [2]) : null,
    models.length ? table(["Model", "Status", "Devices", "Memory", "In flight", "Queued"], models, [3, 4, 5])
      : h("p", { class: "summary" }, "No models on this node."));
}

// -- Models --------------------------------------------------------------------------------

async function pollModels(signal) {
  const catalogue = await api("GET", "/v1/models", undefined, signal);
  let fleetError = null;
  try {
    await fetchFleet(signal);
  } catch (error) {
    if (aborted(error)) throw error;
    fleetError = error.message;
    state.fleet = null;
  }
  state.catalogue = catalogue;
  state.fleetError = fleetError;
  drawModels();
}

/** The Models view from the last answers (drawn again at once when an action starts). */
function drawModels() {
  const { catalogue, fleetError } = state;
  if (!catalogue) return;
  const nodes = state.fleet ? state.fleet.nodes : [];
  nodeChoices(nodes.map((n) => n.name));
  const digest = JSON.stringify([catalogue.data.map((c) => [c.id, c.locations]),
    nodes.map((n) => [n.name, n.state, n.draining, n.models.map((m) => [m.id, m.status, m.pinned, m.error])]),
    state.fleet ? state.fleet.pins : null, [...state.pending.entries()], fleetError, ticking()]);
  draw("models-body", digest, () => modelsTable(catalogue.data, nodes));
  draw("nodes-body", digest, () => fleetError
    ? h("p", { class: "problem" }, fleetError)
    : table(["Node", "State", "Actions"], nodes.map((n) => [n.name,
      h("span", {}, badge(n.state), n.draining ? badge("draining") : null),
      h("div", { class: "actions" }, n.draining
        ? h("button", { type: "button", onclick: () => drain(n.name, false) }, `Undrain ${n.name}`)
        : h("button", { type: "button", class: "danger", onclick: () => drain(n.name, true) }, `Drain ${n.name}`))])));
}

/** The "Load on" choices: any node, or one by name (the choice survives refreshes). */
function nodeChoices(names) {
  const select = document.getElementById("load-node");
  const have = [...select.options].slice(1).map((o) => o.value);
  if (JSON.stringify(have) === JSON.stringify(names)) return;
  const chosen = select.value;
  select.replaceChildren(select.options[0], ...names.map((n) => h("option", { value: n }, n)));
  select.value = names.includes(chosen) ? chosen : "";
}

const DOING = { load: "loading", unload: "unloading", pin: "pinning", unpin: "unpinning" };

function modelsTable(cards, nodes) {
  const pins = new Set(state.fleet ? state.fleet.pins || [] : []);
  const pinned = new Map();
  for (const node of nodes) for (const m of node.models) if (m.pinned) pinned.set(`${node.name}/${m.id}`, true);
  const rows = cards.map((card) => {
    const pending = state.pending.get(card.id);
    const where = card.locations.length ? card.locations.map((loc) => h("div", {},
      `${loc.node}: `, badge(loc.status),
      pinned.has(`${loc.node}/${card.id}`) ? badge("pinned", "pinned") : null,
      state.loadingSince.has(`${loc.node}/${card.id}`) ? h("progress", { "aria-label": `loading ${card.id}` }) : null))
      : h("span", { class: "summary" }, "not loaded");
    const actions = h("div", { class: "actions" },
      h("button", { type: "button", disabled: Boolean(pending), onclick: () => loadModel(card.id) },
        `Load ${card.id}`),
      card.locations.filter((loc) => loc.status !== "unloaded").map((loc) =>
        h("button", { type: "button", class: "danger", disabled: Boolean(pending),
          onclick: () => unloadModel(card.id, loc.node) }, `Unload ${card.id} from ${loc.node}`)),
      pins.has(card.id)
        ? h("button", { type: "button", disabled: Boolean(pending), onclick: () => pinModel(card.id, false) },
          `Unpin ${card.id}`)
        : h("button", { type: "button", disabled: Boolean(pending), onclick: () => pinModel(card.id, true) },
          `Pin ${card.id}`));
    const progress = pending ? h("span", { role: "status", class: "pending" },
      h("progress", { "aria-label": `${pending.action} ${card.id}` }),
      ` ${DOING[pending.action]}… ${((Date.now() - pending.started) / 1000).toFixed(0)} s`) : null;
    const name = h("span", { class: "mono" }, card.id);
    const marker = pins.has(card.id)
      ? h("span", { class: "badge st-pinned", "data-pin": card.id, title: "pinned by the gateway: never evicted" },
        "pinned") : null;
    return [h("span", {}, name, " ", marker), where,
      card.limit ? String(card.limit.context) : "–", h("div", {}, actions, progress)];
  });
  return table(["Model", "Where", "Context", "Actions"], rows);
}

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

async function act(id, action, text, path, body, done) {
  if (!(await confirmAction(text))) return;
  const started = Date.now();
  state.pending.set(id, { action, started });
  const doing = DOING[action];
  notice(`${doing[0].toUpperCase()}${doing.slice(1)} ${id}…`, "info");
  drawModels(); // the progress, now
  try {
    const answer = await api("POST", path, body);
    notice(done(answer, (Date.now() - started) / 1000), "info");
  } catch (error) {
    notice(error.message);
  } finally {
    state.pending.delete(id);
    drawModels();
  }
}

function loadModel(id) {
  const node = document.getElementById("load-node").value || null;
  const where = node ? `on ${node}` : "on a node with room, chosen by the gateway";
  return act(id, "load", `Load ${id} ${where}? It may evict another model.`,
    "/admin/models/load", { model: id, node },
    (answer, took) => `Loaded ${answer.model} on ${answer.node} in ${took.toFixed(1)} s.`);
}

function unloadModel(id, node) {
  return act(id, "unload", `Unload ${id} from ${node}? Requests for it will wait for a new load.`,
    "/admin/models/unload", { model: id, node },
    (answer) => `Unloaded ${answer.model} from ${answer.node}.`);
}

function pinModel(id, on) {
  const text = on
    ? `Pin ${id}? No node will evict it (nor unload it) until it is unpinned; the pin is kept until the gateway restarts.`
    : `Unpin ${id}? It may be evicted again to make room for other models.`;
  return act(id, on ? "pin" : "unpin", text, `/admin/models/${on ? "pin" : "unpin"}`, { model: id },
    (answer) => `${on ? "Pinned" : "Unpinned"} ${answer.model}${answer.changed ? "" : ` (it already was ${answer.status})`}.`);
}

async function drain(node, on) {
  const text = on ? `Drain ${node}? It takes no new placements; what it holds keeps serving.`
    : `Undrain ${node}? It takes placements again.`;
  if (!(await confirmAction(text))) return;
  try {
    const answer = await api("POST", `/admin/nodes/${encodeURIComponent(node)}/${on ? "drain" : "undrain"}`);
    notice(`${answer.node}: ${answer.state} (${answer.in_flight} in flight).`, "info");
  } catch (error) {
    notice(error.message);
  }
}

// -- Traffic -------------------------------------------------------------------------------

async function pollTraffic(signal) {
  const [traffic, fleet] = await Promise.all([
    api("GET", "/admin/traffic", undefined, signal), fetchFleet(signal)]);
  notice("");
  let inFlight = 0;
  let queued = 0;
  for (const node of fleet.nodes) for (const m of node.models) { inFlight += m.in_flight; queued += m.queued; }
  const last = traffic.series[traffic.series.length - 1];
  document.getElementById("traffic-summary").textContent =
    `${inFlight} requests in flight, ${queued} queued (as the nodes last reported); ` +
    `${traffic.recent.length} recent requests kept; this ${traffic.bucket_s} s: ${last.requests} requests, ` +
    `${last.tokens_per_s} tokens/s.`;
  const digest = JSON.stringify([traffic.series, traffic.recent.length && traffic.recent[0]]);
  draw("chart-tps", digest, () => chart(traffic.series, "tokens_per_s", "tokens/s", traffic.bucket_s));
  draw("chart-ttft", digest, () => chart(traffic.series, "ttft_avg_s", "s", traffic.bucket_s));
  draw("traffic-body", digest, () => traffic.recent.length ? table(
    ["When", "Route", "Model", "Node", "Outcome", "Tokens in/out", "TTFT", "Duration"],
    traffic.recent.map((r) => [new Date(r.at * 1000).toLocaleTimeString(), r.route, r.model || "–",
      r.node || "–", badge(r.outcome, r.outcome === "ok" ? "ok" : "error"),
      `${r.prompt_tokens} / ${r.completion_tokens}`, seconds(r.ttft_s, 3), seconds(r.duration_s, 3)]),
    [5, 6, 7]) : h("p", { class: "summary" }, "No requests since the gateway started."));
}

function chart(series, field, unit, bucket) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 600;
  const height = 110;
  const values = series.map((p) => p[field] || 0);
  const top = Math.max(...values, 1e-9);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const latest = values[values.length - 1];
  svg.setAttribute("aria-label", `${field}: latest ${latest.toFixed(3)} ${unit}, peak ${Math.max(...values).toFixed(3)} ${unit}, ${bucket} s buckets`);
  const step = width / values.length;
  values.forEach((v, i) => {
    if (!v) return;
    const bar = document.createElementNS(ns, "rect");
    const barHeight = Math.max(1, (v / top) * (height - 16));
    bar.setAttribute("x", (i * step + 1).toFixed(1));
    bar.setAttribute("y", (height - barHeight).toFixed(1));
    bar.setAttribute("width", Math.max(1, step - 2).toFixed(1));
    bar.setAttribute("height", barHeight.toFixed(1));
    bar.setAttribute("class", "bar");
    const title = document.createElementNS(ns, "title");
    title.textContent = `${new Date(series[i].at * 1000).toLocaleTimeString()}: ${v} ${unit}`;
    bar.append(title);
    svg.append(bar);
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "11");
  label.textContent = `max ${Math.max(...values).toFixed(3)} ${unit}`;
  svg.append(label);
  return svg;
}

// -- Actors --------------------------------------------------------------------------------

function startActors(signal) {
  const summary = document.getElementById("actors-summary");
  let latest = null;
  let drawn = 0;
  const render = () => {
    if (!latest || signal.aborted) return;
    drawn = Date.now();
    summary.textContent = `Gateway actor tree, version ${latest.version} (live).`;
    draw("actors-body", String(latest.version), () => actorNode(latest.root, 0, "gateway"));
  };
  stream("GET", "/admin/actors/stream", undefined, signal, (data) => {
    latest = JSON.parse(data);
    if (Date.now() - drawn > 250) render();
    else setTimeout(render, 260);
  }).then(() => {
    if (!signal.aborted) setTimeout(() => show("actors"), POLL_MS); // the stream ended: reopen
  }).catch((error) => {
    if (!aborted(error)) summary.textContent = error.message;
  });
  loop(pollNodeActors, signal);
}

async function pollNodeActors(signal) {
  const fleet = await fetchFleet(signal);
  const trees = await Promise.all(fleet.nodes.map((n) =>
    api("GET", `/admin/nodes/${encodeURIComponent(n.name)}/actors`, undefined, signal)
      .then((tree) => [n.name, tree], (error) => {
        if (aborted(error)) throw error;
        return [n.name, { error: error.message }];
      })));
  const digest = JSON.stringify(trees.map(([name, t]) => [name, t.version, t.error]));
  draw("node-actors", digest, () => trees.map(([name, tree]) => h("div", { class: "tree" },
    h("h3", {}, `Node ${name}`),
    tree.error ? h("p", { class: "problem" }, tree.error) : actorNode(tree.root, 0, `node:${name}`))));
}

function actorNode(actor, depth, scope) {
  const id = `${scope}:${actor.path}`;
  const fields = Object.entries(actor.status || {})
    .filter(([, v]) => v !== null && v !== "" && typeof v !== "object")
    .map(([k, v]) => `${k}=${v}`).join(" ");
  const head = [h("strong", {}, actor.name), " ", actor.kind ? h("span", { class: "summary" }, `${actor.kind} `) : null,
    badge(actor.state), actor.restarts ? `restarts=${actor.restarts} ` : null,
    fields ? h("span", { class: "fields mono" }, fields) : null,
    actor.last_error ? h("span", { class: "problem" }, ` ${actor.last_error}`) : null];
  if (!actor.children || !actor.children.length) return h("div", { class: "leaf" }, head);
  const open = !state.collapsed.has(id);
  const details = h("details", { open, "data-path": actor.path }, h("summary", {}, head),
    actor.children.map((child) => actorNode(child, depth + 1, scope)));
  details.addEventListener("toggle", () => {
    if (details.open) state.collapsed.delete(id);
    else state.collapsed.add(id);
  });
  return details;
}

// -- Playground ----------------------------------------------------------------------------

function startPlayground(signal) {
  const select = document.getElementById("chat-model");
  api("GET", "/v1/models", undefined, signal).then((models) => {
    const chosen = select.value;
    select.replaceChildren(...models.data.map((m) =>
      h("option", { value: m.id }, m.loaded ? `${m.id} (loaded)` : m.id)));
    const loaded = models.data.find((m) => m.loaded);
    if (chosen && models.data.some((m) => m.id === chosen)) select.value = chosen;
    else if (loaded) select.value = loaded.id;
  }).catch((error) => { if (!aborted(error)) notice(error.message); });
}

function renderTranscript() {
  document.getElementById("transcript").replaceChildren(...state.chat.map((turn) =>
    h("div", { class: `turn ${turn.role}` }, h("div", { class: "who" }, turn.role), h("pre", {}, turn.content))));
}

async function sendChat(event) {
  event.preventDefault();
  const input = document.getElementById("chat-input");
  const model = document.getElementById("chat-model").value;
  const stats = document.getElementById("chat-stats");
  if (!input.value.trim() || !model) return;
  state.chat.push({ role: "user", content: input.value });
  const reply = { role: "assistant", content: "" };
  const messages = state.chat.map(({ role, content }) => ({ role, content }));
  state.chat.push(reply);
  renderTranscript();
  const target = document.querySelector("#transcript .turn:last-child pre");
  const controller = new AbortController();
  state.chatAbort = controller;
  document.getElementById("chat-send").disabled = true;
  document.getElementById("chat-stop").disabled = false;
  const started = performance.now();
  let first = null;
  let chunks = 0;
  let usage = null;
  stats.textContent = "waiting…";
  stats.className = "";
  try {
    await stream("POST", "/v1/chat/completions", {
      model, messages, stream: true, stream_options: { include_usage: true },
      max_tokens: Number(document.getElementById("chat-max").value) || 32,
    }, controller.signal, (data) => {
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) throw new ApiFailure("stream", event.error.message);
      if (event.usage) usage = event.usage;
      const delta = event.choices && event.choices[0] && event.choices[0].delta;
      if (delta && delta.content) {
        if (first === null) first = (performance.now() - started) / 1000;
        chunks += 1;
        reply.content += delta.content;
        target.textContent = reply.content;
        stats.textContent = `streaming: ${chunks} chunks`;
      }
    });
    const took = (performance.now() - started) / 1000;
    stats.textContent = `done: ${chunks} chunks, first token ${seconds(first, 2)}, ` +
      `${usage ? usage.completion_tokens : "?"} tokens in ${took.toFixed(2)} s`;
  } catch (error) {
    stats.textContent = aborted(error) ? `stopped after ${chunks} chunks` : error.message;
    if (!aborted(error)) stats.className = "problem";
  } finally {
    document.getElementById("chat-send").disabled = false;
    document.getElementById("chat-stop").disabled = true;
    state.chatAbort = null;
  }
}

function setupPlayground() {
  document.getElementById("chat-form").addEventListener("submit", sendChat);
  document.getElementById("chat-stop").addEventListener("click", () => state.chatAbort && state.chatAbort.abort());
  document.getElementById("chat-clear").addEventListener("click", () => {
    state.chat = [];
    renderTranscript();
    document.getElementById("chat-stats").textContent = "";
  });
}

// -- start ---------------------------------------------------------------------------------

window.addEventListener("hashchange", () => {
  notice("");
  show(location.hash.slice(1));
});
setupKeyForm();
setupPlayground();
checkKey();
show(location.hash.slice(1));
