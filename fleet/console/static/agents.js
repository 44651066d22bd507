"use strict";
// The agents page (runs, live and paged; the approval queue with Approve / Deny) and a run's page (its steps).
// Live data comes from one server-sent event stream per page. Queue rows are kept by key and updated in
// place, so a reason being typed, or a refusal shown under it, survives every update.
(() => {
  const clock = { skew: 0 };  // the console's clock minus this one: countdowns use the console's time
  const nowS = () => Date.now() / 1000 + clock.skew;
  const when = (ts) => ts ? new Date(ts * 1000).toLocaleTimeString() : "–";
  const left = (ts) => {
    const s = Math.max(0, ts - nowS());
    return s < 120 ? `${s.toFixed(0)} s` : s < 7200 ? `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s` : `${(s / 3600).toFixed(1)} h`;
  };
  const stateMark = (state) => EF.el("span", { class: `state ${state}`, text: state });
  const setError = (id, text) => { const e = document.getElementById(id); if (e) e.textContent = text || ""; };
  const stream = (url, onData) => {
    const mark = document.getElementById("live-mark");
    let es = null, leaving = false;
    const open = () => {
      const mine = es = new EventSource(url());
      mine.onopen = () => { mark.textContent = "live"; };
      mine.onmessage = (ev) => { onData(JSON.parse(ev.data)); mark.textContent = `live · ${new Date().toLocaleTimeString()}`; };
      mine.onerror = () => {
        if (leaving || es !== mine || mine.readyState !== EventSource.CLOSED) { if (!leaving) mark.textContent = "reconnecting…"; return; }
        mark.textContent = "reconnecting…"; setTimeout(() => { if (es === mine) open(); }, 1000);
      };
    };
    window.addEventListener("pagehide", () => { leaving = true; if (es) es.close(); });
    open();
    return { restart: () => { if (es) es.close(); open(); } };
  };

  // -- the approval queue -----------------------------------------------------------------------------
  function queueView(table, canWrite) {
    const body = table.tBodies[0];
    const rows = new Map();  // key → { tr, cells, outcome }
    const csrf = table.dataset.csrf;
    const decide = async (form, action, outcome) => {
      const buttons = form.querySelectorAll("button");
      buttons.forEach((b) => { b.disabled = true; });
      outcome.className = "outcome"; outcome.textContent = action.endsWith("approve") ? "approving…" : "denying…";
      try {
        const r = await fetch(action, { method: "POST", body: new FormData(form), headers: { Accept: "application/json" } });
        const type = r.headers.get("Content-Type") || "";
        const d = type.includes("json") ? await r.json() : { ok: false, message: await r.text() };
        outcome.className = `outcome ${d.ok ? "good" : "bad"}`;
        outcome.textContent = d.ok ? d.message : `${d.field ? `${d.field}: ` : ""}${d.message}`;
      } catch (e) {
        outcome.className = "outcome bad"; outcome.textContent = `the console did not answer: ${e}`;
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    };
    const make = (a) => {
      const key = `${a.node_id}/${a.run_id}/${a.step}`;
      const hidden = (name, value) => EF.el("input", { type: "hidden", name, value: String(value) });
      const reason = EF.el("input", { name: "reason", class: "reason", placeholder: "reason (optional)", maxlength: "512", "aria-label": "reason" });
      const approveBtn = EF.el("button", { type: "submit", class: "approve", formaction: "/agents/approve", text: "Approve" });
      const denyBtn = EF.el("button", { type: "submit", class: "danger deny", formaction: "/agents/deny", text: "Deny" });
      const form = EF.el("form", { method: "post", action: "/agents/approve", class: "decide" },
        hidden("csrf_token", csrf), hidden("node", a.node_id), hidden("run_id", a.run_id), hidden("step", a.step),
        reason, approveBtn, denyBtn);
      const outcome = EF.el("p", { class: "outcome" });
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        decide(form, (ev.submitter && ev.submitter.getAttribute("formaction")) || form.getAttribute("action"), outcome);
      });
      const cells = {
        node: EF.el("td"), rule: EF.el("td"), tool: EF.el("td"), args: EF.el("td", { class: "args wrap" }),
        why: EF.el("td", { class: "wrap" }), expires: EF.el("td", { class: "expires" }), decision: EF.el("p", { class: "decided-by" }),
      };
      const tr = EF.el("tr", { "data-key": key, "data-run": a.run_id, "data-step": String(a.step) },
        cells.node, cells.rule, cells.tool, cells.args, cells.why, cells.expires,
        EF.el("td", {}, cells.decision, form, outcome));
      if (!canWrite) form.title = "viewers cannot approve or deny; the console will refuse";
      return { tr, cells, outcome, reason, a };
    };
    const fill = (row, a) => {
      const c = row.cells;
      row.a = a;
      c.node.replaceChildren(a.node_id);
      c.rule.replaceChildren(EF.el("a", { href: `/agents/run/${encodeURIComponent(a.run_id)}`, text: a.rule || a.run_id }), ` · step ${a.step}`);
      c.tool.textContent = a.tool; c.args.textContent = a.arguments; c.why.textContent = a.why;
      c.expires.textContent = a.expires_at ? left(a.expires_at) : "–";
      const d = a.decision;
      c.decision.textContent = d ? `${d.approve ? "approved" : "denied"} by ${d.operator}${d.reason ? ` (${d.reason})` : ""}; waiting for the node` : "";
      row.tr.classList.toggle("decided", Boolean(d));
    };
    const apply = (approvals) => {
      const keep = new Set();
      approvals.forEach((a, i) => {
        const key = `${a.node_id}/${a.run_id}/${a.step}`;
        keep.add(key);
        let row = rows.get(key);
        if (!row) { row = make(a); rows.set(key, row); }
        fill(row, a);
        if (body.children[i] !== row.tr) body.insertBefore(row.tr, body.children[i] || null);
      });
      for (const [key, row] of [...rows]) if (!keep.has(key)) { row.tr.remove(); rows.delete(key); }
      document.getElementById("queue-empty").hidden = approvals.length > 0;
      document.getElementById("queue-count").textContent = approvals.length ? `(${approvals.length})` : "";
    };
    const tick = () => { for (const row of rows.values()) if (row.a.expires_at) row.cells.expires.textContent = left(row.a.expires_at); };
    setInterval(tick, 1000);
    const restore = (form) => {  // a form posted without script came back: its row shows what it said, with what was typed
      if (!form) return;
      const row = rows.get(form.key);
      const outcome = row ? row.outcome : document.getElementById("agents-error");
      if (row) row.reason.value = form.reason || "";
      outcome.className = `outcome ${form.ok ? "good" : "bad"}`;
      outcome.textContent = `${form.field ? `${form.field}: ` : ""}${form.message}`;
    };
    return { apply, restore };
  }

  // -- the runs table ---------------------------------------------------------------------------------
  function agentsPage() {
    const start = JSON.parse(document.getElementById("agents-view").textContent);
    const queue = queueView(document.getElementById("approvals"), document.getElementById("approvals").dataset.canWrite === "1");
    const body = document.querySelector("#runs tbody");
    const filters = document.getElementById("run-filters");
    const size = document.getElementById("page-size");
    let query = start.query, total = 0, shown = 0, asked = 0;
    const params = () => {
      const p = new URLSearchParams();
      for (const k of ["node", "rule", "state"]) if (query[k]) p.set(k, query[k]);
      if (query.offset) p.set("offset", String(query.offset));
      if (query.limit !== 25) p.set("limit", String(query.limit));
      return p.toString();
    };
    const render = (v) => {
      if (v.now) clock.skew = v.now - Date.now() / 1000;
      total = v.total; shown = v.runs.length;
      body.replaceChildren(...v.runs.map((r) => EF.el("tr", { "data-run": r.run_id, "data-state": r.state, "data-node": r.node_id },
        EF.el("td", { text: r.node_id }),
        EF.el("td", {}, EF.el("a", { href: `/agents/run/${encodeURIComponent(r.run_id)}`, text: r.rule }), r.rule_version ? `@${r.rule_version}` : ""),
        EF.el("td", {}, stateMark(r.state)),
        EF.el("td", { class: "wrap reason", text: r.reason }),
        EF.el("td", { class: "steps", text: r.steps }),
        EF.el("td", { title: r.trigger, text: when(r.started) }))));
      document.getElementById("page-info").textContent = total ? `${query.offset + 1}–${query.offset + shown} of ${total}` : "no run matches";
      document.getElementById("page-prev").disabled = query.offset === 0;
      document.getElementById("page-next").disabled = query.offset + shown >= total;
      queue.apply(v.approvals);
      setError("agents-error", v.error ? `the orchestrator did not answer everything: ${v.error}` : "");
    };
    const live = stream(() => `/events/agents?${params()}`, render);
    const ask = async () => {
      const mine = ++asked, qs = params();
      history.replaceState(null, "", qs ? `/agents?${qs}` : "/agents");
      const r = await fetch(`/agents/runs?${qs}`, { headers: { Accept: "application/json" } });
      if (mine !== asked) return;
      if (!r.ok) { setError("agents-error", await r.text()); return; }
      render(await r.json());
      live.restart();
    };
    filters.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const f = new FormData(filters);
      query = { node: String(f.get("node") || "").trim(), rule: String(f.get("rule") || "").trim(), state: String(f.get("state") || ""), offset: 0, limit: Number(size.value) };
      ask();
    });
    size.addEventListener("change", () => filters.requestSubmit());
    document.getElementById("filter-state").addEventListener("change", () => filters.requestSubmit());
    document.getElementById("page-prev").addEventListener("click", () => { query = { ...query, offset: Math.max(0, query.offset - query.limit) }; ask(); });
    document.getElementById("page-next").addEventListener("click", () => { query = { ...query, offset: query.offset + query.limit }; ask(); });
    render(start);
    queue.restore(start.form);
  }

  // -- one run ------------------------------------------------------------------------------------------
  function runPage() {
    const start = JSON.parse(document.getElementById("run-view").textContent);
    const runId = document.getElementById("run-title").dataset.run;
    const summary = document.getElementById("run-summary");
    const body = document.querySelector("#steps tbody");
    const render = (v) => {
      const run = v.run;
      setError("run-error", v.error);
      if (!run) { summary.replaceChildren(EF.el("dt", { text: "run" }), EF.el("dd", { text: "not known yet" })); return; }
      const st = document.getElementById("run-state");
      st.className = `state ${run.state}`; st.textContent = run.state;
      const p = run.pending;
      const items = [["Node", run.node_id], ["Rule", `${run.rule}@${run.rule_version}`], ["Trigger", run.trigger],
        ["State", run.state], ["Reason", run.reason], ["Answer", run.answer], ["Started", when(run.started)],
        ["Ended", run.ended ? when(run.ended) : "–"],
        ["Waiting for", p ? `approval of step ${p.step}: ${p.tool}(${p.arguments}) — ${p.why}` : "–"]];
      summary.replaceChildren(...items.flatMap(([k, val]) => [EF.el("dt", { text: k }), EF.el("dd", { class: "wrap", "data-field": k.toLowerCase(), text: val || "–" })]));
      body.replaceChildren(...(run.steps || []).map((step) => {
        const d = v.decisions[`${run.run_id}:${step.index}`];
        const why = step.detail + (d && step.verdict === "waiting" ? ` (${d.approve ? "approved" : "denied"} by ${d.operator}; the node has not answered yet)` : "");
        return EF.el("tr", { "data-step": step.index, class: step.verdict ? `verdict-${step.verdict}` : "" },
          EF.el("td", { text: step.index }), EF.el("td", { text: step.kind }), EF.el("td", { text: step.tool }),
          EF.el("td", { class: "args wrap", text: step.arguments }), EF.el("td", { class: "verdict", text: step.verdict }),
          EF.el("td", { class: "wrap detail", text: why }), EF.el("td", { class: "wrap result", text: step.result }),
          EF.el("td", { text: step.ms ? `${Math.round(step.ms)} ms` : "" }));
      }));
    };
    render(start);
    stream(() => `/events/agents/run/${encodeURIComponent(runId)}`, render);
  }

  ({ agents: agentsPage, "agent-run": runPage })[document.body.dataset.page]?.();
})();
