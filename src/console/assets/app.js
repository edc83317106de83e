// The ringmaster operator console (src/console/mod.rs serves it; README.md, "Operator
// console"). No framework and nothing from another host: the page asks the console's JSON
// API and draws it, polling every second.
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const state = { session: { signedIn: false, csrf: null, writable: false }, data: null, raw: "", page: null };

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const k of kids) el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return el;
}
const enc = encodeURIComponent;
function ago(secs) {
  if (secs === null || secs === undefined) return "";
  if (secs < 60) return secs + "s";
  if (secs < 3600) return Math.floor(secs / 60) + "m";
  if (secs < 86400) return Math.floor(secs / 3600) + "h" + Math.floor((secs % 3600) / 60) + "m";
  return Math.floor(secs / 86400) + "d";
}
function when(t) {
  if (!t) return "";
  const d = new Date(t);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}
function pct(x) { return (Math.round(x * 1000) / 10) + "%"; }
function tone(name) { return /fail|error|bad/i.test(name) ? "bad" : /current|success|ok|healthy|applied|done/i.test(name) ? "good" : "other"; }

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin", cache: "no-store" }, opts || {}));
  const text = await r.text();
  let body = null;
  try { body = JSON.parse(text); } catch (_) { body = { error: text }; }
  return { ok: r.ok, status: r.status, body, text };
}

// ---- the bars: applied of targeted, each metric of applied -------------------------
function bars(ring) {
  const rows = [];
  const t = ring.targeted, a = ring.applied;
  rows.push({ label: "applied", n: a, of: t, cls: "applied" });
  for (const [m, c] of ring.metrics) rows.push({ label: m, n: c, of: a, cls: tone(m) });
  const W = 220, RH = 15;
  const svg = s("svg", { class: "bars", viewBox: `0 0 ${W} ${rows.length * RH}`, role: "img" });
  const desc = rows.map(r => `${r.label} ${r.n ?? "?"}/${r.of ?? "?"}`).join(", ");
  svg.append(s("title", {}, `${ring.name}: ${desc}`));
  rows.forEach((r, i) => {
    const y = i * RH;
    const frac = r.of ? Math.min(1, (r.n || 0) / r.of) : 0;
    svg.append(s("rect", { class: "track", x: 84, y: y + 3, width: W - 84, height: 9, rx: 2 }));
    svg.append(s("rect", { class: r.cls, x: 84, y: y + 3, width: ((W - 84) * frac).toFixed(1), height: 9, rx: 2 }));
    svg.append(s("text", { x: 0, y: y + 11 }, `${r.label} ${r.n ?? "–"}/${r.of ?? "–"}`));
  });
  return svg;
}

// ---- a ring's counts over time: step lines, inline SVG ----------------------------
function chart(g) {
  const pts = g.series;
  if (pts.length < 2) return null;
  const W = 640, H = 150, L = 34, R = 8, T = 8, B = 18;
  const ts = pts.map(p => Date.parse(p.t));
  const t0 = ts[0], t1 = Math.max(ts[ts.length - 1], t0 + 1);
  const names = [...new Set(pts.flatMap(p => Object.keys(p.metrics)))].sort();
  const lines = [{ key: "targeted", cls: "s-targeted", get: p => p.targeted },
    { key: "applied", cls: "s-applied", get: p => p.applied },
    ...names.map(m => ({ key: m, cls: `s-${tone(m)}`, get: p => p.metrics[m] }))];
  let ymax = 1;
  for (const p of pts) for (const l of lines) ymax = Math.max(ymax, l.get(p) || 0);
  const x = t => (L + (W - L - R) * (t - t0) / (t1 - t0)).toFixed(1);
  const y = v => (T + (H - T - B) * (1 - (v || 0) / ymax)).toFixed(1);
  const last = pts[pts.length - 1];
  const label = `${g.name} over time: ` + lines.map(l => `${l.key} ${l.get(last) ?? 0}`).join(", ");
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  svg.append(s("title", {}, label));
  svg.append(s("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(s("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  svg.append(s("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, ymax));
  svg.append(s("text", { x: L - 4, y: H - B, "text-anchor": "end" }, 0));
  const hm = t => new Date(t).toISOString().slice(11, 19);
  svg.append(s("text", { x: L, y: H - 4 }, hm(t0)));
  svg.append(s("text", { x: W - R, y: H - 4, "text-anchor": "end" }, hm(t1)));
  for (const l of lines) {
    const p = [];
    pts.forEach((pt, i) => {
      if (i > 0) p.push(`${x(ts[i])},${y(l.get(pts[i - 1]))}`);
      p.push(`${x(ts[i])},${y(l.get(pt))}`);
    });
    svg.append(s("polyline", { class: l.cls, points: p.join(" ") }));
  }
  const legend = h("div", { class: "legend" }, lines.map(l => h("span", { class: l.cls }, `${l.key} ${l.get(last) ?? 0}`)));
  return h("figure", { class: "chartbox" }, svg, legend);
}

function phaseBadge(p) { return h("span", { class: `badge ph-${p}` }, p); }

// ---- overview ----------------------------------------------------------------------
function drawOverview(o) {
  const main = [h("h1", {}, "Rollouts")];
  if (!o.rollouts.length) main.push(h("p", { class: "muted" }, "No DeviceRollout yet: add one to the source."));
  const list = h("div", { class: "list", id: "rollouts" });
  for (const r of o.rollouts) {
    const cls = r.rank === 0 ? "card problem" : r.rank === 1 ? "card person" : "card";
    const link = `/console/r/${enc(r.namespace)}/${enc(r.name)}`;
    list.append(h("article", { class: cls, "data-rollout": `${r.namespace}/${r.name}`, "data-phase": r.phase },
      h("div", { class: "row" },
        h("a", { class: "name", href: link, "data-key": `ro-${r.namespace}/${r.name}` }, `${r.namespace}/${r.name}`),
        phaseBadge(r.phase),
        r.ring ? h("span", {}, "ring ", h("b", {}, r.ring), r.ringState ? ` (${r.ringState})` : "") : null,
        r.revision ? h("span", { class: "mono" }, "rev ", r.revision) : null,
        r.ageSeconds !== null ? h("span", { class: "muted" }, "age ", ago(r.ageSeconds)) : null),
      r.problem ? h("p", { class: "problem-text" }, "Problem: ", r.problem) : null,
      h("p", { class: "waiting" }, h("span", { class: "muted" }, "Waiting for: "), r.waitingFor),
      h("div", { class: "rings" }, r.rings.map(g =>
        h("div", { class: `ring ${g.place}` },
          h("div", { class: "label" }, h("b", {}, g.name),
            g.verdict ? h("span", { class: `verdict-${g.verdict}` }, g.verdict) : h("span", { class: "muted" }, g.place)),
          bars(g))))));
  }
  main.push(list);
  return main;
}

// ---- one rollout -------------------------------------------------------------------
function drawRollout(p, ns, name) {
  const r = p.summary;
  const out = [
    h("p", {}, h("a", { href: "/console/" }, "← all rollouts")),
    h("h1", {}, `${r.namespace}/${r.name} `, phaseBadge(r.phase)),
    r.problem ? h("p", { class: "problem-text", id: "problem" }, "Problem: ", r.problem) : null,
    h("p", {}, h("a", { href: `/console/r/${enc(ns)}/${enc(name)}/fleet`, "data-key": "fleet" }, "Fleet composition within its target")),
    h("p", { class: "waiting", id: "waiting" }, h("span", { class: "muted" }, "Waiting for: "), r.waitingFor),
    h("dl", { class: "kv" },
      h("dt", {}, "revision"), h("dd", { class: "mono", id: "revision" }, r.revision || "–"),
      h("dt", {}, "ring"), h("dd", { id: "ring" }, r.ring ? `${r.ring} (${r.ringState})` : "–"),
      h("dt", {}, "stable / held"), h("dd", { class: "mono" }, `${p.stableRevision || "–"} / ${p.heldRevision || "–"}`),
      h("dt", {}, "configuration"), h("dd", { class: "mono" }, p.configurationId || "–"),
      h("dt", {}, "target"), h("dd", {}, h("code", {}, p.target)),
      h("dt", {}, "hub · priority · onFailure"), h("dd", {}, `${p.hub} · ${p.priority} · ${p.onFailure}`),
      h("dt", {}, "age"), h("dd", {}, ago(r.ageSeconds)),
      p.message ? [h("dt", {}, "message"), h("dd", {}, p.message)] : null),
  ];
  // Actions
  const acts = h("div", { class: "actions", role: "group", "aria-label": "Actions" });
  for (const a of p.actions) {
    const needs = !state.session.signedIn;
    acts.append(h("button", {
      type: "button", id: `act-${a.kind}`, "data-key": `act-${a.kind}`,
      disabled: !a.enabled || (needs && !state.session.writable),
      title: needs ? "sign in to act" : a.confirm,
      onclick: () => confirmAction(ns, name, a, r),
    }, a.kind));
  }
  out.push(h("h2", {}, "Actions"), acts, h("p", { id: "act-result", class: "muted", role: "status" }, state.actResult || ""));
  // Rings
  out.push(h("h2", {}, "Rings"));
  const rings = h("div", { class: "list" });
  for (const g of p.rings) {
    const rec = g.record || {};
    const numbers = g.numbers.length ? h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "metric"), h("th", {}, "count / applied"), h("th", {}, "share"), h("th", { class: "opt" }, "Wilson 95%"), h("th", {}, "devices"))),
      h("tbody", {}, g.numbers.map(m => h("tr", { "data-metric": m.name },
        h("td", {}, m.name), h("td", {}, `${m.count}/${m.of}`), h("td", {}, m.of ? pct(m.count / m.of) : "–"),
        h("td", { class: "opt" }, `${pct(m.lowerBound)} – ${pct(m.upperBound)}`),
        h("td", {}, h("a", { href: `/console/r/${enc(ns)}/${enc(name)}/metric/${enc(m.name)}`, "data-key": `dev-${g.index}-${m.name}` }, "list")))))))
      : h("p", { class: "muted" }, "No counts yet.");
    const checks = g.checks.map(c => h("div", { class: "check", "data-check": c.kind },
      h("b", {}, c.kind, ": "), h("code", {}, c.expression), " — ",
      c.holds === null ? h("span", { class: "muted" }, "not evaluated yet")
        : c.holds ? h("span", { class: c.kind === "failure" ? "yes" : "pass" }, "holds") : h("span", { class: "no" }, "does not hold"),
      c.numbers.length ? h("div", { class: "mono numbers" }, c.numbers.join("; ")) : null));
    rings.append(h("section", { class: `card ring-${g.place}`, "data-ring": g.name, "aria-label": `ring ${g.name}` },
      h("h3", {}, `${g.index + 1}. ${g.name} `, h("span", { class: "muted" }, g.state || g.place),
        g.approval ? h("span", { class: "badge ph-Paused" }, "approval") : null,
        rec.verdict ? h("span", { class: `verdict-${rec.verdict}` }, " ", rec.verdict) : null),
      h("dl", { class: "kv" },
        h("dt", {}, "ring target"), h("dd", {}, h("code", {}, g.target)),
        h("dt", {}, "configuration targets"), h("dd", {}, h("code", {}, g.composedTarget)),
        h("dt", {}, "gate"), h("dd", {}, `minApplied ${g.gate.minApplied}, bake ${g.gate.bake}, deadline ${g.gate.deadline}`),
        h("dt", {}, "counts"), h("dd", {}, rec.targeted !== undefined ? `applied ${rec.applied ?? "–"} of ${rec.targeted} targeted` + (rec.shielded ? `, ${rec.shielded} shielded` : "") : "–",
          g.place === "current" && p.configurationId ? [" · ", h("a", { href: `/console/r/${enc(ns)}/${enc(name)}/metric/notApplied`, "data-key": `notapplied-${g.index}` }, "targeted, not applied")] : null),
        h("dt", {}, "times"), h("dd", {}, [["started", rec.startedAt], ["applied", rec.appliedAt], ["approved", rec.approvedAt], ["passed", rec.passedAt]].filter(x => x[1]).map(x => `${x[0]} ${when(x[1])}`).join(" · ") || "–"),
        rec.message ? [h("dt", {}, "verdict"), h("dd", {}, rec.message)] : null),
      checks, numbers, chart(g)));
  }
  out.push(rings);
  if (p.metrics.length) {
    out.push(h("h2", {}, "Metrics and their queries"), h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "metric"), h("th", {}, "query"))),
      h("tbody", {}, p.metrics.map(m => h("tr", {}, h("td", {}, h("a", { href: `/console/r/${enc(ns)}/${enc(name)}/metric/${enc(m.name)}` }, m.name)), h("td", {}, h("code", {}, m.query))))))));
  }
  out.push(h("h2", {}, "Conditions"), h("div", { class: "scroll" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "type"), h("th", {}, "status"), h("th", {}, "reason"), h("th", { class: "opt" }, "since"), h("th", {}, "message"))),
    h("tbody", {}, p.conditions.map(c => h("tr", {}, h("td", {}, c.type), h("td", {}, c.status), h("td", {}, c.reason), h("td", { class: "opt" }, when(c.since)), h("td", {}, c.message)))))));
  out.push(h("h2", {}, "Timeline"), h("ol", { class: "timeline", id: "timeline", reversed: true },
    p.timeline.map(e => h("li", { "data-decision": e.decision },
      h("time", { datetime: e.time }, when(e.time)),
      h("div", {}, h("b", {}, e.decision), e.ring ? ` ring ${e.ring}` : "", e.revision ? h("span", { class: "mono muted" }, ` ${e.revision}`) : "",
        e.counts ? h("div", { class: "muted" }, e.counts) : null, e.message ? h("div", {}, e.message) : null)))));
  return out;
}

function confirmAction(ns, name, a, seen) {
  if (!state.session.signedIn) { openSignIn(); return; }
  const d = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = `${a.kind} ${ns}/${name}?`;
  document.getElementById("confirm-text").textContent = a.confirm;
  const ok = document.getElementById("confirm-ok");
  ok.textContent = a.kind;
  const aimed = { revision: seen.revision, ring: seen.ring };
  ok.onclick = async () => {
    d.close();
    const r = await api(`/console/api/rollouts/${enc(ns)}/${enc(name)}/${a.kind}`, {
      method: "POST", headers: { "content-type": "application/json", "x-csrf-token": state.session.csrf || "" },
      body: JSON.stringify(aimed),
    });
    state.actResult = r.ok ? `Requested ${a.kind} (${r.body.operation.id}) for revision ${aimed.revision}, ring ${aimed.ring}.` : `Refused: ${r.body.error}`;
    if (r.status === 401) await loadSession();
    state.raw = ""; await tick();
  };
  d.showModal();
  document.getElementById("confirm-cancel").focus();
}

// ---- the devices behind a metric ---------------------------------------------------
function drawDevices(p, ns, name, metric) {
  const out = [h("p", {}, h("a", { href: `/console/r/${enc(ns)}/${enc(name)}` }, `← ${ns}/${name}`)),
    h("h1", {}, metric === "notApplied" ? "Devices targeted where the configuration is not applied" : `Devices counted by ${metric}`)];
  if (p.error) { out.push(h("p", { class: "error", role: "alert" }, p.error)); }
  else {
    out.push(h("dl", { class: "kv" }, h("dt", {}, "condition"), h("dd", {}, h("code", {}, p.condition)),
      h("dt", {}, "query"), h("dd", {}, h("code", { id: "query" }, p.query))));
    if (!p.items.length) out.push(h("p", { class: "muted" }, "No device on this page."));
    else out.push(h("div", { class: "scroll" }, h("table", { id: "devices" },
      h("thead", {}, h("tr", {}, h("th", {}, "device"), h("th", {}, "configuration"), h("th", {}, "reported"), h("th", { class: "opt" }, "tags"))),
      h("tbody", {}, p.items.map(d => h("tr", { "data-device": d.deviceId },
        h("td", { class: "mono" }, d.deviceId), h("td", {}, d.configuration ? d.configuration.status : "–"),
        h("td", {}, h("pre", {}, JSON.stringify(d.reported || {}, null, 1))),
        h("td", { class: "opt" }, h("pre", {}, JSON.stringify(d.tags || {}, null, 1)))))))));
  }
  const nav = h("div", { class: "actions" });
  nav.append(h("button", { type: "button", id: "page-first", disabled: !state.pages.length, onclick: () => { state.pages = []; loadDevices(); } }, "first page"));
  nav.append(h("button", { type: "button", id: "page-next", disabled: !p.continuation, onclick: () => { state.pages.push(p.continuation); loadDevices(); } }, "next page"));
  nav.append(h("button", { type: "button", id: "page-refresh", onclick: () => loadDevices() }, "refresh"));
  out.push(nav, h("p", { class: "muted" }, `Page ${state.pages.length + 1}, at most 20 devices; each page is one query within the hub's budget (not refreshed on its own).`));
  return out;
}

async function loadDevices() {
  const [ns, name, metric] = state.page.args;
  const c = state.pages[state.pages.length - 1];
  const r = await api(`/console/api/rollouts/${enc(ns)}/${enc(name)}/devices?metric=${enc(metric)}` + (c ? `&continuation=${enc(c)}` : ""));
  render(drawDevices(r.body, ns, name, metric));
}

// ---- fleet composition --------------------------------------------------------------
function drawFleet(p, ns, name) {
  const out = [h("p", {}, h("a", { href: `/console/r/${enc(ns)}/${enc(name)}` }, `← ${ns}/${name}`)),
    h("h1", {}, "Fleet composition")];
  if (p.error) { out.push(h("p", { class: "error", role: "alert" }, p.error)); return out; }
  out.push(h("p", {}, "Devices within the rollout's target ", h("code", {}, p.target), `, as the hub counted them at ${when(p.at)}.`));
  const u = p.uncovered;
  out.push(h("h2", {}, "Not covered by any configuration"),
    u.problem ? h("p", { class: "error" }, u.problem)
      : h("p", { id: "uncovered" }, h("b", {}, String(u.n)), ` device(s) of the target are targeted by none of the hub's ${u.configurations} configuration(s): widening onto them leaves nothing underneath.`),
    u.query ? h("p", {}, h("code", {}, u.query)) : null);
  for (const g of p.groups) {
    const total = g.rows.reduce((a, r) => a + r[1], 0) || 1;
    out.push(h("h2", {}, `By ${g.tag}`));
    if (g.problem) { out.push(h("p", { class: "error" }, g.problem)); continue; }
    out.push(h("div", { class: "scroll" }, h("table", { "data-group": g.tag },
      h("thead", {}, h("tr", {}, h("th", {}, g.tag), h("th", {}, "devices"), h("th", {}, "share"))),
      h("tbody", {}, g.rows.map(([v, n]) => {
        const bar = s("svg", { class: "bars", viewBox: "0 0 200 10", role: "img", "aria-label": `${pct(n / total)}` });
        bar.append(s("rect", { class: "track", x: 0, y: 1, width: 200, height: 8, rx: 2 }));
        bar.append(s("rect", { class: "applied", x: 0, y: 1, width: (200 * n / total).toFixed(1), height: 8, rx: 2 }));
        return h("tr", { "data-value": v }, h("td", {}, v), h("td", {}, n), h("td", { class: "share" }, bar));
      })))), h("p", {}, h("code", { class: "muted" }, g.query)));
  }
  out.push(h("div", { class: "actions" }, h("button", { type: "button", id: "fleet-refresh", onclick: loadFleet }, "refresh")),
    h("p", { class: "muted" }, "Four queries and one listing from the hub's budget; the answer is reused for a minute."));
  return out;
}

async function loadFleet() {
  const [ns, name] = state.page.args;
  const r = await api(`/console/api/rollouts/${enc(ns)}/${enc(name)}/fleet`);
  render(drawFleet(r.body, ns, name));
}

// ---- session ------------------------------------------------------------------------
async function loadSession() {
  const r = await api("/console/api/session");
  if (r.ok) state.session = r.body;
  drawAuth();
}
function drawAuth() {
  const el = document.getElementById("auth");
  el.replaceChildren();
  if (state.session.signedIn) {
    el.append(h("span", { id: "signed-in" }, `signed in as ${state.session.who || "operator"}`), h("button", { type: "button", id: "signout", onclick: signOut }, "Sign out"));
  } else if (state.session.writable) {
    el.append(h("span", {}, "read-only view"), h("button", { type: "button", id: "signin-open", onclick: openSignIn }, "Sign in"));
  } else {
    el.append(h("span", { title: "start ringmaster run with --api-token-env or --api-token-file to allow actions" }, "read-only (no API token configured)"));
  }
}
function openSignIn() {
  document.getElementById("signin-error").textContent = "";
  document.getElementById("signin").showModal();
  document.getElementById("token").focus();
}
async function signIn(ev) {
  ev.preventDefault();
  const t = document.getElementById("token");
  const r = await api("/console/api/login", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: t.value }) });
  if (!r.ok) { document.getElementById("signin-error").textContent = r.body.error; return; }
  t.value = "";
  document.getElementById("signin").close();
  await loadSession();
  state.raw = ""; await tick();
}
async function signOut() {
  await api("/console/api/logout", { method: "POST", headers: { "x-csrf-token": state.session.csrf || "" } });
  await loadSession();
  state.raw = ""; await tick();
}

// ---- routing and the live loop ------------------------------------------------------
function route() {
  const parts = location.pathname.replace(/^\/console\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "r" && parts.length === 3) return { kind: "rollout", args: [parts[1], parts[2]], url: `/console/api/rollouts/${enc(parts[1])}/${enc(parts[2])}` };
  if (parts[0] === "r" && parts.length === 5 && parts[3] === "metric") return { kind: "devices", args: [parts[1], parts[2], parts[4]] };
  if (parts[0] === "r" && parts.length === 4 && parts[3] === "fleet") return { kind: "fleet", args: [parts[1], parts[2]] };
  return { kind: "overview", args: [], url: "/console/api/overview" };
}

function render(nodes) {
  const key = document.activeElement && document.activeElement.getAttribute("data-key");
  const main = document.getElementById("main");
  main.replaceChildren(...nodes.flat().filter(Boolean));
  if (key) { const el = main.querySelector(`[data-key="${CSS.escape(key)}"]`); if (el) el.focus(); }
}

async function tick() {
  const pg = state.page;
  if (!pg.url) return;
  let r;
  try { r = await api(pg.url); } catch (e) { document.getElementById("live").textContent = "offline: " + e; return; }
  document.getElementById("live").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  if (!r.ok) { render([h("h1", {}, "Not available"), h("p", { class: "error", role: "alert" }, r.body.error || r.text)]); return; }
  // Redraw only what changed (the time stamps of the views move every second).
  const cmp = r.text.replace(/"now":"[^"]*"/, "").replace(/"ageSeconds":\d+/g, "");
  if (cmp === state.raw && !state.forceAge) return;
  state.raw = cmp;
  document.body.setAttribute("data-loaded", "1");
  render(pg.kind === "overview" ? drawOverview(r.body) : drawRollout(r.body, ...pg.args));
}

async function start() {
  document.getElementById("signin-form").addEventListener("submit", signIn);
  document.getElementById("signin-cancel").addEventListener("click", () => document.getElementById("signin").close());
  document.getElementById("confirm-cancel").addEventListener("click", () => document.getElementById("confirm").close());
  state.page = route();
  state.pages = [];
  await loadSession();
  if (state.page.kind === "fleet") {
    document.title = `fleet · ${state.page.args[0]}/${state.page.args[1]} · ringmaster`;
    await loadFleet();
    document.body.setAttribute("data-loaded", "1");
    return;
  }
  if (state.page.kind === "devices") {
    document.title = `${state.page.args[2]} · ${state.page.args[0]}/${state.page.args[1]} · ringmaster`;
    await loadDevices();
    document.body.setAttribute("data-loaded", "1");
    return;
  }
  if (state.page.kind === "rollout") document.title = `${state.page.args[0]}/${state.page.args[1]} · ringmaster`;
  await tick();
  setInterval(tick, POLL_MS);
}
document.addEventListener("DOMContentLoaded", start);
