"use strict";
// Shared helpers and the fleet, desired-state and sensor pages. No framework; one SSE stream per page.
const EF = (() => {
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const k of kids) if (k != null) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  };
  const ago = (ts, now) => {
    const s = Math.max(0, (now || Date.now() / 1000) - ts);
    return s < 120 ? `${s.toFixed(0)} s` : s < 7200 ? `${(s / 60).toFixed(0)} min` : `${(s / 3600).toFixed(1)} h`;
  };
  const mib = (b) => b == null ? "–" : `${(b / 1048576).toFixed(0)} MiB`;
  const bar = (have, total, label) => {
    const pct = total ? Math.min(100, (100 * have) / total) : 100;
    const b = el("div", { class: "bar", title: `${have}/${total}` }, el("span"), el("em", { text: label || `${have}/${total}` }));
    b.firstChild.style.width = `${pct}%`;
    return b;
  };
  const live = (url, onData) => {
    const mark = document.getElementById("live-mark");
    const es = new EventSource(url);
    es.onopen = () => { if (mark) mark.textContent = "live"; };
    es.onerror = () => { if (mark) mark.textContent = "reconnecting…"; };
    es.onmessage = (ev) => { onData(JSON.parse(ev.data)); if (mark) mark.textContent = `live · ${new Date().toLocaleTimeString()}`; };
    // Close the stream as the page goes: a stream left open holds one of the browser's six
    // connections to the console, and the seventh page would wait for one to time out.
    window.addEventListener("pagehide", () => es.close());
    return es;
  };
  const initial = (node, key = "initial") => JSON.parse(node.dataset[key] || "null");
  return { el, ago, mib, bar, live, initial };
})();

function fleetPage() {
  const table = document.getElementById("fleet-table");
  const body = table.querySelector("tbody");
  const group = document.getElementById("filter-group");
  const state = document.getElementById("filter-state");
  let rows = EF.initial(table) || [];
  let balena = null;  // {nodes: {node_id: {device, balena, flag}}, others: [...], error}: when a balena fleet is named
  let now = Date.now() / 1000;
  const balenaCell = (r) => {
    const b = balena && balena.nodes[r.node_id];
    const td = EF.el("td", { class: "balena", title: b ? `device ${b.device}, release ${b.release}` : "" }, b ? b.balena : "–");
    if (b && b.flag) td.append(EF.el("span", { class: "mark bad", text: b.flag }));
    return td;
  };
  const balenaOthers = () => {
    const p = document.getElementById("balena-others");
    if (!p || !balena) return;
    const parts = balena.others.map((o) => `${o.device} (${o.balena}, node ${o.node_id}: ${o.edgefleet})${o.flag ? " — " + o.flag : ""}`);
    p.textContent = balena.error ? `balena: ${balena.error}` : parts.length ? `balena devices without a node here: ${parts.join("; ")}` : "";
  };
  let sortKey = "node_id", asc = true;
  const key = (r) => {
    const l = r.load || {};
    return { node_id: r.node_id, state: r.state, profile: r.profile, model: r.model, groups: r.groups.join(","),
      slots: l.slots_busy ?? -1, queue: l.queue ?? -1, tps: l.tokens_per_second ?? -1, temp: l.temperature_c ?? -1,
      rss: l.rss_bytes ?? -1, outbox: r.outbox ?? -1, sync: r.sync }[sortKey];
  };
  const render = () => {
    const shown = rows.filter((r) => (!group.value || r.groups.includes(group.value)) && (!state.value || r.state === state.value));
    shown.sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
    body.replaceChildren(...shown.map((r) => {
      const l = r.load;
      const temp = EF.el("td", { class: "temp" }, l && l.temperature_c != null ? `${l.temperature_c.toFixed(1)} °C` : "–");
      if (l && l.throttled) temp.append(EF.el("span", { class: "mark", text: "throttled" }));
      if (l && l.shedding) temp.append(EF.el("span", { class: "mark bad", text: "shedding" }));
      const sync = EF.el("td", { class: "sync", title: r.drift.join("; ") }, r.sync === "drifted" ? `drifted: ${r.drift.join("; ")}` : r.sync);
      const errs = r.errors.length ? `${r.errors.length}: ${r.errors[0].message}` : "";
      return EF.el("tr", { "data-node": r.node_id, "data-state": r.state },
        EF.el("td", {}, EF.el("a", { href: `/node/${encodeURIComponent(r.node_id)}`, text: r.node_id })),
        EF.el("td", {}, EF.el("span", { class: `state ${r.state}`, text: r.state }), ` ${EF.ago(r.since, now)}`,
          r.insecure ? EF.el("span", { class: "mark bad insecure", text: "insecure", title: "runs without TLS or certificates" }) : null),
        EF.el("td", { text: r.profile }), EF.el("td", { text: r.model }), EF.el("td", { text: r.groups.join(", ") }),
        EF.el("td", { class: "slots", text: l ? `${l.slots_busy}/${l.slots_total}` : "–" }),
        EF.el("td", { class: "queue", text: l ? l.queue : "–" }),
        EF.el("td", { class: "tps", text: l ? l.tokens_per_second.toFixed(1) : "–" }), temp,
        EF.el("td", { class: "rss", text: EF.mib(l && l.rss_bytes) }),
        EF.el("td", { class: "outbox", text: r.outbox ?? "–" }), sync,
        EF.el("td", { class: "errors", title: errs, text: errs.slice(0, 60) }),
        ...(table.dataset.balena ? [balenaCell(r)] : []));
    }));
    balenaOthers();
  };
  table.querySelectorAll("th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    asc = sortKey === th.dataset.sort ? !asc : true; sortKey = th.dataset.sort;
    table.querySelectorAll("th").forEach((h) => h.classList.remove("sorted", "asc"));
    th.classList.add("sorted"); if (asc) th.classList.add("asc");
    render();
  }));
  group.addEventListener("change", render); state.addEventListener("change", render);
  render();
  EF.live("/events/fleet", (d) => {
    rows = d.rows; now = d.now; balena = d.balena || null;
    for (const g of new Set(rows.flatMap((r) => r.groups))) {
      if (![...group.options].some((o) => o.value === g)) group.append(EF.el("option", { text: g, value: g }));
    }
    render();
  });
}

function transfersView(box, transfers) {
  const kind = box.dataset.kind;
  const items = [];
  for (const [node, ts] of Object.entries(transfers)) {
    for (const [k, t] of Object.entries(ts)) {
      if (kind && !k.startsWith(`${kind}/`)) continue;
      items.push(EF.el("div", { class: "transfer" }, `${node} · ${k}@${t.version} · ${t.state}${t.error ? `: ${t.error}` : ""}`,
        EF.bar(t.have, t.total)));
    }
  }
  box.replaceChildren(...(items.length ? items : [EF.el("p", { class: "hint", text: "no transfers" })]));
}

function entriesView(table, targets) {
  const kind = table.dataset.kind;
  const csrf = document.body.dataset.csrf;
  const rows = [];
  for (const [key, t] of Object.entries(targets)) {
    for (const [name, version] of Object.entries(t[kind])) {
      const actions = EF.el("td");
      if (table.dataset.canWrite === "1") {
        const form = EF.el("form", { method: "post", action: `/${kind}/remove`, "data-confirm": `Remove ${name} from ${key}?` },
          EF.el("input", { type: "hidden", name: "csrf_token", value: csrf }), EF.el("input", { type: "hidden", name: "target", value: key }),
          EF.el("input", { type: "hidden", name: "name", value: name }), EF.el("button", { type: "submit", class: "danger", text: "Remove" }));
        actions.append(form);
      }
      rows.push(EF.el("tr", { "data-target": key, "data-name": name }, EF.el("td", { text: key }), EF.el("td", { text: name }),
        EF.el("td", { text: version }), EF.el("td", { text: t.generation }), actions));
    }
  }
  table.tBodies[0].replaceChildren(...rows);
}

function desiredPage() {
  const box = document.getElementById("transfers");
  const table = document.getElementById("entries");
  if (box) transfersView(box, EF.initial(box) || {});
  EF.live("/events/desired", (d) => {
    entriesView(table, d.targets);
    if (box) transfersView(box, d.transfers);
  });
}

function sensorsPage() {
  const body = document.querySelector("#feed tbody");
  const outbox = document.getElementById("outbox");
  EF.live("/events/sensors", (d) => {
    body.replaceChildren(...d.feed.map((e) => EF.el("tr", { class: e.kind },
      EF.el("td", { text: new Date(e.ts * 1000).toLocaleTimeString() }), EF.el("td", { text: e.rule }),
      EF.el("td", { text: e.topic }),
      EF.el("td", { text: e.kind === "answer" ? `→ ${e.ok ? "" : `[${e.error_code}] `}${e.text}` : e.text }),
      EF.el("td", { text: e.node || "" }),
      EF.el("td", { text: e.latency_ms != null ? `${e.latency_ms} ms` : e.kind === "answer" ? "–" : "" }))));
    outbox.replaceChildren(...Object.entries(d.outbox).map(([n, v]) => EF.el("span", { class: "mark", text: `${n}: ${v ?? "–"}` })));
  });
}

document.addEventListener("submit", (ev) => {
  const msg = ev.target.dataset && ev.target.dataset.confirm;
  if (msg && !window.confirm(msg)) ev.preventDefault();
});

({ fleet: fleetPage, desired: desiredPage, sensors: sensorsPage })[document.body.dataset.page]?.();
