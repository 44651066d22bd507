"use strict";
// The node page: summary, plots of the last hour (uPlot), desired vs reported, transfers, errors.
(() => {
  const root = document.getElementById("node");
  const nodeId = root.dataset.node;
  const metrics = [["tokens_per_second", "tokens/s"], ["temperature_c", "temperature °C"], ["queue_depth", "queue"],
    ["slots_busy", "slots busy"], ["rss_bytes", "RSS MiB"]];
  const past = EF.initial(root, "history");  // the orchestrator's minute buckets, when it keeps them
  const plots = {};
  const box = document.getElementById("plots");
  const series = (detail) => {
    const h = detail.history;
    const out = {};
    for (const [m] of metrics) {
      let xs = [], ys = [];
      if (past && past.series && past.series[m]) {
        for (const [t, v] of past.series[m]) if (!h.ts.length || t < h.ts[0]) { xs.push(t); ys.push(v); }
      }
      xs = xs.concat(h.ts); ys = ys.concat(h[m]);
      if (m === "rss_bytes") ys = ys.map((v) => v == null ? null : v / 1048576);
      out[m] = [xs, ys];
    }
    return out;
  };
  const draw = (detail) => {
    const data = series(detail);
    const width = Math.max(280, Math.min(440, box.clientWidth - 10));
    for (const [m, label] of metrics) {
      if (!plots[m]) {
        const holder = EF.el("div", { class: "plot", id: `plot-${m}` });
        box.append(holder);
        plots[m] = new uPlot({ width, height: 160, title: label, scales: { x: { time: true } },
          series: [{}, { label, stroke: "#2563eb", width: 1.5, spanGaps: true }] }, data[m], holder);
      } else plots[m].setData(data[m]);
    }
  };
  const table = (rows) => {
    const t = EF.el("table", { class: "data" }, EF.el("thead", {}, EF.el("tr", {}, EF.el("th", { text: "Name" }),
      EF.el("th", { text: "Desired" }), EF.el("th", { text: "Reported" }))));
    const b = EF.el("tbody");
    for (const r of rows) b.append(EF.el("tr", { class: r.differs ? "differs" : "same" }, EF.el("td", { text: r.name }),
      EF.el("td", { text: r.desired || "–" }), EF.el("td", { text: r.reported || "–" })));
    t.append(b);
    return t;
  };
  const render = (d, now) => {
    if (!d) return;
    const st = document.getElementById("node-state");
    st.className = `state ${d.state}`; st.textContent = `${d.state} ${EF.ago(d.since, now)}`;
    const l = d.load || {};
    const pairs = [["Address", d.address], ["Profile", d.profile], ["Model", d.model], ["Groups", d.groups.join(", ")],
      ["Slots", l.slots_total != null ? `${l.slots_busy}/${l.slots_total}` : "–"], ["Queue", l.queue ?? "–"],
      ["Tokens/s", l.tokens_per_second != null ? l.tokens_per_second.toFixed(1) : "–"],
      ["Temperature", l.temperature_c != null ? `${l.temperature_c.toFixed(1)} °C${l.throttled ? " (throttled)" : ""}${l.shedding ? " (shedding)" : ""}` : "–"],
      ["Memory", EF.mib(l.rss_bytes)], ["Sensor outbox", d.outbox ?? "–"],
      ["Desired", d.sync === "drifted" ? `drifted: ${d.drift.join("; ")}` : d.sync]];
    const dl = EF.el("dl", { class: "summary" });
    for (const [k, v] of pairs) dl.append(EF.el("dt", { text: k }), EF.el("dd", { text: v }));
    document.getElementById("node-summary").replaceChildren(dl);
    const cmp = document.getElementById("compare");
    cmp.replaceChildren(...["templates", "rules", "adapters", "knowledge"].flatMap((k) =>
      [EF.el("h3", { text: k }), d.compare[k].length ? table(d.compare[k]) : EF.el("p", { class: "hint", text: "none" })]));
    const tr = Object.entries(d.transfers).map(([k, t]) => EF.el("div", {}, `${k}@${t.version} · ${t.state}${t.error ? `: ${t.error}` : ""}`, EF.bar(t.have, t.total)));
    document.getElementById("transfers").replaceChildren(...(tr.length ? tr : [EF.el("p", { class: "hint", text: "none" })]));
    const errs = d.errors.map((e) => EF.el("li", { text: `${new Date(e.ts * 1000).toLocaleTimeString()} [${e.code}] ${e.message}` }));
    document.getElementById("errors").replaceChildren(...(errs.length ? errs : [EF.el("li", { class: "hint", text: "none" })]));
    draw(d);
  };
  render(EF.initial(root), Date.now() / 1000);
  EF.live(`/events/node/${encodeURIComponent(nodeId)}`, (m) => render(m.node, m.now));
})();
