/* The chat page's model manager (the Models dialog): the installed models (size, target,
   loaded or not, why one cannot load) with Load / Unload / Delete (/api/v1/load, /unload,
   /delete), and, where the server has them, the catalog (GET /api/v1/catalog) and downloads
   (POST /api/v1/pull, NDJSON progress as Ollama's /api/pull streams it). A server without
   those routes (404) shows the installed models only. Uses app.js's window.ogaPage. */
"use strict";

(() => {
  const page = window.ogaPage;
  if (!page) return;
  const { api, el, errorOf, explain, state } = page;
  const $ = (id) => document.getElementById(id);
  const ui = {
    open: $("open-models"), dialog: $("models-dialog"), message: $("models-message"),
    installed: $("installed-list"), catalogSection: $("catalog-section"), catalog: $("catalog-list"),
    pullName: $("pull-name"), pullGo: $("pull-name-go"), pullStatus: $("pull-status"),
    pullBar: $("pull-progress"), pullText: $("pull-text"),
  };
  let catalog = null;       // null: not asked yet; false: the server has no catalog
  let pulling = false;

  function size(bytes) {
    if (!bytes) return "";
    return bytes >= 1e9 ? (bytes / 1e9).toFixed(1) + " GB" : Math.max(1, Math.round(bytes / 1e6)) + " MB";
  }

  function say(text) {
    ui.message.textContent = text || "";
    ui.message.hidden = !text;
  }

  function button(text, cls, onClick, disabled) {
    const b = el("button", "btn small " + cls, text);
    b.type = "button";
    b.disabled = !!disabled;
    b.addEventListener("click", onClick);
    return b;
  }

  // ------------------------------------------------------------ installed

  function renderInstalled() {
    ui.installed.replaceChildren();
    if (!state.allModels.length) {
      ui.installed.appendChild(el("p", "muted", "No model is installed yet."
        + (catalog ? " Download one below." : " Run oga-npu pull NAME or oga-npu prepare SOURCE, then reload.")));
      return;
    }
    for (const m of state.allModels) {
      const row = el("div", "model-row");
      row.dataset.id = m.id;
      const main = el("div", "model-main");
      main.appendChild(el("span", "model-name", m.id));
      const facts = [size(m.size), m.target, m.context_length ? `${m.context_length} tokens context` : ""];
      main.appendChild(el("span", "model-facts muted", facts.filter(Boolean).join(" · ")));
      const st = m.loadable === false ? "not loadable" : m.loaded ? "loaded" : m.loading ? "loading" : "not loaded";
      const badge = el("span", "model-state", st);
      badge.dataset.state = st.replace(" ", "-");
      if (m.not_loadable_reason) badge.title = m.not_loadable_reason;
      main.appendChild(badge);
      if (m.not_loadable_reason) main.appendChild(el("span", "model-why muted", m.not_loadable_reason));
      const actions = el("div", "model-actions");
      if (m.loaded) actions.appendChild(button("Unload", "unload", () => act(row, "unload", m.id)));
      else actions.appendChild(button("Load", "load", () => act(row, "load", m.id), m.loadable === false));
      actions.appendChild(button("Delete", "delete", () => {
        if (confirm(`Delete ${m.id}${m.size ? ` (${size(m.size)})` : ""} from this machine? It is unloaded and `
          + "its files are removed.")) act(row, "delete", m.id);
      }));
      row.append(main, actions);
      ui.installed.appendChild(row);
    }
  }

  async function act(row, what, id) {
    say("");
    for (const b of row.querySelectorAll("button")) b.disabled = true;
    row.classList.add("working");
    const body = what === "delete" ? { model: id } : { model_name: id };
    try {
      const resp = await api("/api/v1/" + what, { method: "POST", body: JSON.stringify(body) });
      if (!resp.ok) {
        const e = await failure(resp);
        say(`${what[0].toUpperCase() + what.slice(1)} ${id}: ${e.status !== undefined ? explain(e) : e.message}`);
      }
    } catch (e) {
      say(explain({ status: 0 }));
    }
    row.classList.remove("working");
    await page.refreshModels();
    if (what === "delete") await loadCatalog();
    renderInstalled();
  }

  // ------------------------------------------------------------ catalog and pulls

  async function loadCatalog() {
    if (catalog === false) return;
    try {
      const resp = await api("/api/v1/catalog");
      if (resp.status === 404 || resp.status === 405) {
        catalog = false;   // a server without the catalog and pulls
      } else if (resp.ok) {
        catalog = (await resp.json()).data || [];
      }
    } catch (e) { /* unreachable: the installed list says so */ }
    renderCatalog();
  }

  function renderCatalog() {
    ui.catalogSection.hidden = !catalog;
    if (!catalog) return;
    ui.catalog.replaceChildren();
    for (const c of catalog) {
      const row = el("div", "model-row catalog-row");
      row.dataset.name = c.name;
      const main = el("div", "model-main");
      main.appendChild(el("span", "model-name", c.name));
      const facts = [size(c.size_bytes), c.target, c.release ? `Ryzen AI ${c.release}` : "",
        c.context ? `${c.context} tokens context` : "", c.license];
      main.appendChild(el("span", "model-facts muted", facts.filter(Boolean).join(" · ")));
      const fit = el("span", "model-state", c.fits ? "fits here" : "does not fit");
      fit.dataset.state = c.fits ? "fits" : "no-fit";
      if (c.why) fit.title = c.why;
      main.appendChild(fit);
      if (!c.fits && c.why) main.appendChild(el("span", "model-why muted", c.why));
      const actions = el("div", "model-actions");
      actions.appendChild(c.installed ? el("span", "muted", "installed")
        : button("Pull", "pull", () => pull(c.name, c.variant), pulling));
      row.append(main, actions);
      ui.catalog.appendChild(row);
    }
  }

  /* A refusal as an Error: the OpenAI shape ({"error": {...}}) or Ollama's ({"error": "..."}). */
  async function failure(resp) {
    const body = await resp.clone().json().catch(() => null);
    if (body && typeof body.error === "string") return new Error(`${body.error} (${resp.status})`);
    return errorOf(resp);
  }

  /* Newline-delimited JSON objects of a streamed response. */
  async function* ndjson(resp) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (value) buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, cut).trim();
        buf = buf.slice(cut + 1);
        if (line) yield JSON.parse(line);
      }
      if (done) {
        if (buf.trim()) yield JSON.parse(buf);
        return;
      }
    }
  }

  function progress(text, done, total) {
    ui.pullStatus.hidden = false;
    ui.pullText.textContent = text;
    if (total) {
      ui.pullBar.max = total;
      ui.pullBar.value = Math.min(done || 0, total);
    } else {
      ui.pullBar.removeAttribute("value");   // indeterminate
    }
  }

  async function pull(name, variant) {
    if (pulling || !name) return;
    pulling = true;
    say("");
    renderCatalog();
    ui.pullGo.disabled = true;
    progress(`pulling ${name}…`, 0, 0);
    let result = null;
    try {
      const body = { model: name };
      if (variant) body.variant = variant;
      const resp = await api("/api/v1/pull", { method: "POST", body: JSON.stringify(body) });
      if (!resp.ok) throw await failure(resp);
      for await (const ev of ndjson(resp)) {
        if (ev.error) throw new Error(ev.error);
        if (ev.status === "success") result = ev.model || name;
        else if (ev.total) {
          progress(`${name}: ${ev.status} — ${size(ev.completed || 0) || "0 MB"} of ${size(ev.total)}`,
            ev.completed || 0, ev.total);
        } else if (ev.status) progress(`${name}: ${ev.status}`, 0, 0);
      }
      if (!result) throw new Error("the download ended without success");
      progress(`${result} is installed`, 1, 1);
    } catch (e) {
      ui.pullStatus.hidden = true;
      say(`Pull ${name}: ${e.status !== undefined ? explain(e) : e.message}`);
    }
    pulling = false;
    ui.pullGo.disabled = false;
    await page.refreshModels();
    await loadCatalog();
    renderInstalled();
  }

  // ------------------------------------------------------------ the dialog

  async function openModels() {
    say("");
    renderInstalled();
    renderCatalog();
    ui.dialog.showModal();
    await page.refreshModels();
    renderInstalled();
    await loadCatalog();
  }

  ui.open.addEventListener("click", openModels);
  ui.pullGo.addEventListener("click", () => pull(ui.pullName.value.trim()));
  ui.pullName.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      pull(ui.pullName.value.trim());
    }
  });
  ui.dialog.addEventListener("close", () => page.refocus());
  document.addEventListener("oga-models", () => { if (ui.dialog.open) renderInstalled(); });
  // an empty store: the banner points at this dialog
  document.addEventListener("oga-models", () => {
    if (!state.allModels.some((m) => m.loadable !== false) && catalog === null) loadCatalog();
  });
})();
