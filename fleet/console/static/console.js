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
  // The console filters, sorts and pages on its side: this page holds one page of rows (`byId` in
  // `order`) and the summary, asks /fleet/rows when the query changes, and applies the stream's changes.
  const table = document.getElementById("fleet-table");
  const body = table.querySelector("tbody");
  const group = document.getElementById("filter-group");
  const state = document.getElementById("filter-state");
  const search = document.getElementById("search");
  const size = document.getElementById("page-size");
  const info = document.getElementById("page-info");
  const error = document.getElementById("fleet-error");
  const mark = document.getElementById("live-mark");
  let byId = new Map(), order = [], total = 0, offset = 0, summary = {}, balena = null, now = Date.now() / 1000;
  let sortKey = "node_id", desc = false, es = null, asked = 0, leaving = false;
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
  const rowOf = (r) => {
    const l = r.load;
    const temp = EF.el("td", { class: "temp" }, l && l.temperature_c != null ? `${l.temperature_c.toFixed(1)} °C` : "–");
    if (l && l.throttled) temp.append(EF.el("span", { class: "mark", text: "throttled" }));
    if (l && l.shedding) temp.append(EF.el("span", { class: "mark bad", text: "shedding" }));
    const sync = EF.el("td", { class: "sync", title: r.drift.join("; ") }, r.sync === "drifted" ? `drifted: ${r.drift.join("; ")}` : r.sync);
    const errs = r.errors ? `${r.errors}: ${r.error}` : "";
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
  };
  const render = () => {
    body.replaceChildren(...order.map((id) => byId.get(id)).filter(Boolean).map(rowOf));
    info.textContent = total ? `${offset + 1}–${offset + order.length} of ${total}` : "no node matches";
    document.getElementById("page-prev").disabled = offset === 0;
    document.getElementById("page-next").disabled = offset + order.length >= total;
    for (const b of document.querySelectorAll("#summary [data-sum]")) {
      const k = b.dataset.sum;
      b.textContent = k === "slots" ? `${summary.slots_busy ?? 0}/${summary.slots_total ?? 0}` : summary[k] ?? "–";
    }
    for (const c of document.querySelectorAll("#summary [data-state]")) c.classList.toggle("here", c.dataset.state === state.value);
    table.querySelectorAll("th[data-sort]").forEach((h) => {
      h.classList.toggle("sorted", h.dataset.sort === sortKey); h.classList.toggle("asc", h.dataset.sort === sortKey && !desc);
    });
    balenaOthers();
  };
  const apply = (d) => {  // a whole view (from the page or /fleet/rows) or a change from the stream
    if (d.now != null) now = d.now;
    if (d.order) { order = d.order; const keep = new Set(order); for (const k of [...byId.keys()]) if (!keep.has(k)) byId.delete(k); }
    for (const r of d.rows || []) byId.set(r.node_id, r);
    if (d.total != null) total = d.total;
    if (d.offset != null) offset = d.offset;
    if (d.summary) summary = d.summary;
    if ("balena" in d) balena = d.balena;
    for (const g of d.groups || []) if (![...group.options].some((o) => o.value === g)) group.append(EF.el("option", { text: g, value: g }));
    render();
  };
  const params = () => {
    const p = new URLSearchParams();
    for (const [k, v] of [["q", search.value.trim()], ["state", state.value], ["group", group.value], ["sort", sortKey === "node_id" ? "" : sortKey],
      ["desc", desc ? "1" : ""], ["offset", offset ? String(offset) : ""], ["limit", size.value === "50" ? "" : size.value]]) if (v) p.set(k, v);
    return p.toString();
  };
  const listen = (qs, have) => {  // one stream for the page's query; `have`: the digest of the rows it holds
    if (es) es.close();
    const mine = es = new EventSource(`/events/fleet?${qs}${qs ? "&" : ""}have=${encodeURIComponent(have)}`);
    mine.onopen = () => { if (mark) mark.textContent = "live"; };
    mine.onmessage = (ev) => { apply(JSON.parse(ev.data)); mark.textContent = `live · ${new Date().toLocaleTimeString()}`; };
    mine.onerror = () => {  // start again from a whole page: what the browser holds may be older than `have`
      mine.close(); if (leaving || es !== mine) return;
      mark.textContent = "reconnecting…"; setTimeout(() => { if (es === mine) listen(params(), ""); }, 1000);
    };
  };
  const narrow = () => {  // at once, before the console answers: drop the rows the new filter excludes
    const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    order = order.filter((id) => {
      const r = byId.get(id), text = [r.node_id, r.profile, r.model, r.address, r.reason, ...r.groups].join(" ").toLowerCase();
      return (!group.value || r.groups.includes(group.value)) && (!["online", "offline", "failed"].includes(state.value) || r.state === state.value)
        && words.every((w) => text.includes(w));
    });
    render();
  };
  const whole = (d) => { byId = new Map(); apply({ ...d, order: d.rows.map((r) => r.node_id) }); };
  const ask = async (first) => {
    if (first) { offset = 0; narrow(); }
    const mine = ++asked, qs = params();
    history.replaceState(null, "", qs ? `/?${qs}` : "/");
    try {
      const r = await fetch(`/fleet/rows?${qs}`, { headers: { Accept: "application/json" } });
      if (mine !== asked) return;
      if (!r.ok) { error.textContent = await r.text(); return; }
      const d = await r.json();
      if (mine !== asked) return;
      error.textContent = ""; whole(d); listen(qs, d.digest);
    } catch (e) { if (mine === asked) error.textContent = `the console did not answer: ${e}`; }
  };
  const start = JSON.parse(document.getElementById("fleet-view").textContent);
  const q = start.query;
  if (q.group && ![...group.options].some((o) => o.value === q.group)) group.append(EF.el("option", { text: q.group, value: q.group }));
  search.value = q.q || ""; state.value = q.state || ""; group.value = q.group || ""; size.value = String(start.limit);
  sortKey = q.sort || "node_id"; desc = q.desc === "1";
  whole(start);
  listen(params(), start.digest);
  window.addEventListener("pagehide", () => { leaving = true; if (es) es.close(); });
  table.querySelectorAll("th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    desc = sortKey === th.dataset.sort ? !desc : false; sortKey = th.dataset.sort; ask(true);
  }));
  let typing = 0;
  search.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => ask(true), 150); });
  group.addEventListener("change", () => ask(true)); state.addEventListener("change", () => ask(true));
  size.addEventListener("change", () => ask(true));
  for (const c of document.querySelectorAll("#summary [data-state]")) {
    c.addEventListener("click", () => { state.value = state.value === c.dataset.state ? "" : c.dataset.state; ask(true); });
  }
  document.getElementById("page-prev").addEventListener("click", () => { offset = Math.max(0, offset - Number(size.value)); ask(false); });
  document.getElementById("page-next").addEventListener("click", () => { offset += Number(size.value); ask(false); });
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
