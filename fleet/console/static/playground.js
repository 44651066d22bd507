"use strict";
// The playground: POST the question, read the NDJSON answer as it streams.
(() => {
  const form = document.getElementById("ask-form");
  const answer = document.getElementById("answer");
  const by = document.getElementById("answered-by");
  const figures = document.getElementById("figures");
  const sources = document.getElementById("sources");
  const error = document.getElementById("ask-error");
  const button = document.getElementById("ask");
  const fieldErrors = () => form.querySelectorAll(".field-error[data-for]");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    fieldErrors().forEach((e) => { e.textContent = ""; });
    [answer, by, figures, sources, error].forEach((e) => { e.textContent = ""; });
    const f = new FormData(form);
    const variables = {};
    for (const line of String(f.get("variables") || "").split("\n")) {
      const i = line.indexOf("=");
      if (i > 0) variables[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    const body = { ...Object.fromEntries(f.entries()), variables };
    button.disabled = true;
    try {
      const resp = await fetch("/playground/generate", { method: "POST", body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", "X-CSRF-Token": document.body.dataset.csrf } });
      if (!resp.ok) {
        const text = await resp.text();
        let problem = { error: text };
        try { problem = JSON.parse(text); } catch (e) { /* plain text */ }
        const slot = problem.field && form.querySelector(`.field-error[data-for="${problem.field}"]`);
        (slot || error).textContent = problem.error;
        return;
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const e = JSON.parse(buf.slice(0, nl)); buf = buf.slice(nl + 1);
          if (e.type === "meta") by.textContent = `answered by ${e.node || "(unnamed)"} · ${e.via} ${e.address} · node named by ${e.node_source}`;
          else if (e.type === "text") answer.textContent += e.text;
          else if (e.type === "done") {
            figures.textContent = `time to first token ${e.ttft_ms} ms · ${e.tokens_per_second} tokens/s · ${e.completion_tokens} tokens · ${e.finish_reason}`;
            sources.textContent = e.sources.length ? `sources: ${e.sources.join(", ")}` : "";
          } else if (e.type === "error") error.textContent = `${e.code}: ${e.error}`;
        }
      }
    } catch (e) {
      error.textContent = `the console could not be reached: ${e}`;
    } finally {
      button.disabled = false;
    }
  });
})();
