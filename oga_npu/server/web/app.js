/* The oga-npu chat page: talks to this server's OpenAI-compatible routes (/v1/models,
   /v1/chat/completions streamed as server-sent events). No framework, no build step, nothing
   from another site. Conversations, settings and the API key live in localStorage
   ("oga-npu.*"); an answer is stored as it streams, so a reload or a closed tab keeps its
   text (shown as stopped). The model's text is rendered by markdown.js as DOM nodes (never
   as HTML). The model manager (manager.js) uses what this file hands it in window.ogaPage. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ------------------------------------------------------------ storage
  const store = {
    get(key, fallback) {
      try {
        const v = localStorage.getItem("oga-npu." + key);
        return v === null ? fallback : JSON.parse(v);
      } catch (e) {
        return fallback;
      }
    },
    set(key, value) {
      try {
        localStorage.setItem("oga-npu." + key, JSON.stringify(value));
      } catch (e) {
        showBanner("The browser refused to store the conversation (storage full?). Delete old chats.");
      }
    },
    remove(key) {
      localStorage.removeItem("oga-npu." + key);
    },
  };

  const SAMPLING = ["temperature", "top_p", "top_k", "max_tokens"];
  const state = {
    models: [],                 // the loadable models (the picker)
    allModels: [],              // every model /v1/models lists (the manager), with loaded / loadable
    chats: store.get("chats", []),
    current: store.get("current", null),
    settings: Object.assign({ model: "", system: "", temperature: "", top_p: "", top_k: "", max_tokens: "" },
      store.get("settings", {})),
    busy: null,                 // {controller, chat, answer} while an answer streams
    nodes: new WeakMap(),       // answer object -> its DOM node
  };
  if (!Array.isArray(state.chats)) state.chats = [];
  for (const chat of state.chats) {   // a page closed while an answer streamed: that answer stopped there
    for (const m of chat.messages || []) {
      if (m.pending) { delete m.pending; m.stopped = true; }
    }
  }

  const ui = {
    app: $("app"), sidebar: $("sidebar"), toggle: $("toggle-sidebar"), newChat: $("new-chat"),
    chatList: $("chat-list"), openSettings: $("open-settings"), forgetKey: $("forget-key"),
    model: $("model"), modelInfo: $("model-info"), meter: $("context-meter"), meterBar: $("context-bar"),
    meterText: $("context-text"), defaultLength: $("default-length"), serverState: $("server-state"), banner: $("banner"),
    messages: $("messages"), composer: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
    settings: $("settings"), system: $("set-system"), keyDialog: $("key-dialog"), keyInput: $("key-input"),
    keyMessage: $("key-message"),
  };

  const saveChats = () => { store.set("chats", state.chats); store.set("current", state.current); };
  const currentChat = () => state.chats.find((c) => c.id === state.current) || null;

  // ------------------------------------------------------------ server
  function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    const key = store.get("apiKey", "");
    if (key) headers.Authorization = "Bearer " + key;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, Object.assign({}, options, { headers }));
  }

  function apiError(status, body, retryAfter) {
    const e = new Error((body && body.message) || "HTTP " + status);
    e.status = status;
    e.code = body && body.code;
    e.detail = body || {};
    e.retryAfter = retryAfter;
    return e;
  }

  async function errorOf(resp) {
    let body = null;
    try {
      body = await resp.json();
    } catch (e) { /* not JSON */ }
    return apiError(resp.status, body && body.error, resp.headers.get("Retry-After"));
  }

  /* An error as a sentence a person can act on. */
  function explain(e) {
    const d = e.detail || {};
    switch (e.code) {
      case "context_length_exceeded": {
        const room = /(\d+) max_tokens/.exec(e.message || "");
        const need = room ? `${d.n_prompt_tokens} tokens of conversation plus ${room[1]} for the answer`
          : `${d.n_prompt_tokens} tokens`;
        return `This conversation is too long for the model: it needs ${need}, and the model's context holds `
          + `${d.n_ctx} tokens. Start a new chat, shorten the message or the system prompt, or lower Max tokens `
          + "in Settings.";
      }
      case "server_busy":
        return "The server is busy: other requests are waiting for this model. Try again in a few seconds "
          + "(Regenerate).";
      case "loading":
        return "The model is still loading. Try again in a few seconds.";
      case "model_not_found":
        return `The server does not serve this model (any more). Pick another one above. (${e.message})`;
      case "model_load_failed":
        return `The model failed to load on the server: ${e.message}`;
      case "shutting_down":
        return "The server is shutting down; the answer was cut off.";
      case "invalid_api_key":
        return "The server refused the API key.";
      default:
    }
    if (e.status === 0) return `Cannot reach the server at ${location.host}. Is oga-npu serve still running?`;
    if (e.status === 401) return "The server needs an API key.";
    if (e.status === 503) return `The server cannot answer now (503): ${e.message}. Try again in a few seconds.`;
    if (e.status >= 500) return `The server failed (${e.status}): ${e.message}`;
    return `The server refused the request (${e.status || "error"}): ${e.message}`;
  }

  /* Server-sent events of a streamed response, as parsed JSON objects, until [DONE]. */
  async function* sseEvents(resp) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart())
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }

  /* The caret back in the message box after a dialog (the focus a dialog restores takes no typing). */
  function refocus() {
    ui.input.blur();
    ui.input.focus();
  }

  // ------------------------------------------------------------ API key
  const KEY_NEEDED = "This server needs an API key: the one given to oga-npu serve --api-key.";
  const KEY_REFUSED = "The server refused the stored API key. Enter the one given to oga-npu serve --api-key.";
  let keyWaiting = null;
  function askKey(message) {
    if (keyWaiting) return keyWaiting;
    ui.keyMessage.textContent = message;
    ui.keyInput.value = "";
    ui.keyDialog.returnValue = "";
    keyWaiting = new Promise((resolve) => {
      ui.keyDialog.addEventListener("close", () => {
        keyWaiting = null;
        refocus();
        const key = ui.keyInput.value.trim();
        if (ui.keyDialog.returnValue === "save" && key) {
          store.set("apiKey", key);
          updateKeyButton();
          resolve(true);
        } else {
          resolve(false);
        }
      }, { once: true });
    });
    ui.keyDialog.showModal();
    ui.keyInput.focus();
    return keyWaiting;
  }

  function updateKeyButton() {
    ui.forgetKey.hidden = !store.get("apiKey", "");
  }

  // ------------------------------------------------------------ models
  function setServerState(name, text) {
    ui.serverState.dataset.state = name;
    ui.serverState.textContent = text || name;
  }

  function showBanner(text) {
    ui.banner.textContent = text;
    ui.banner.hidden = !text;
  }

  async function loadModels() {
    let resp;
    try {
      resp = await api("/v1/models");
    } catch (e) {
      setServerState("offline");
      showBanner(explain({ status: 0 }));
      setTimeout(loadModels, 3000);
      return;
    }
    if (resp.status === 401) {
      setServerState("locked", "needs API key");
      const hadKey = !!store.get("apiKey", "");
      if (await askKey(hadKey ? KEY_REFUSED : KEY_NEEDED)) return loadModels();
      showBanner("This server needs an API key: reload the page to enter it.");
      return;
    }
    if (!resp.ok) {
      setServerState("error");
      showBanner(explain(await errorOf(resp)));
      return;
    }
    // a model folder the server cannot load is listed with the reason; the page offers the others
    const all = (await resp.json()).data || [];
    state.allModels = all;
    const data = all.filter((m) => m.loadable !== false);
    document.dispatchEvent(new CustomEvent("oga-models"));
    if (!data.length) {
      waitUntilReady();
      return;
    }
    state.models = data;
    fillModels();
    setServerState("ready");
    showBanner("");
  }

  /* The list again (after a load, an answer, a delete): the picker's marks, the header. */
  async function refreshModels() {
    try {
      const resp = await api("/v1/models");
      if (!resp.ok) return;
      const all = (await resp.json()).data || [];
      state.allModels = all;
      state.models = all.filter((m) => m.loadable !== false);
      document.dispatchEvent(new CustomEvent("oga-models"));
      if (!state.models.length) {
        ui.model.replaceChildren();
        showModelInfo();
        return waitUntilReady();
      }
      if (!state.busy) fillModels(true);
      else markLoaded();
      setServerState("ready");
      showBanner("");
    } catch (e) { /* the next call says it */ }
  }

  const EMPTY = "No model is installed yet. Open Models to download one, or run oga-npu pull NAME "
    + "(or oga-npu prepare SOURCE) and reload.";

  async function waitUntilReady() {
    setServerState("loading", "loading models");
    try {
      const resp = await fetch("/health");
      const body = await resp.json().catch(() => ({}));
      if (resp.ok && body.status === "ok" && !state.allModels.some((m) => m.loadable !== false)) {
        setServerState("empty", "no models");   // an empty store: the manager fills it
        showBanner(EMPTY);
        return;
      }
      if (resp.ok) return loadModels();
      if (body.status === "error") {
        setServerState("error");
        showBanner(`The server could not load its models: ${body.message}`);
        return;
      }
      showBanner("The server is loading its models…");
    } catch (e) {
      showBanner(explain({ status: 0 }));
    }
    setTimeout(waitUntilReady, 1000);
  }

  function fillModels(keep) {
    const was = ui.model.value;
    ui.model.replaceChildren();
    for (const m of state.models) {
      const o = el("option", null, m.id);
      o.value = m.id;
      ui.model.appendChild(o);
    }
    markLoaded();
    const chat = currentChat();
    const want = [keep && was, chat && chat.model, state.settings.model].find((id) => state.models.some((m) => m.id === id));
    ui.model.value = want || state.models[0].id;
    showModelInfo();
    renderMessages();
  }

  /* The picker marks the loaded models. */
  function markLoaded() {
    for (const o of ui.model.options) {
      const m = state.models.find((x) => x.id === o.value);
      const loaded = !!(m && m.loaded);
      o.dataset.loaded = loaded ? "true" : "false";
      o.textContent = loaded ? `${o.value} ● loaded` : o.value;
    }
  }

  const modelOf = (id) => state.models.find((x) => x.id === id) || null;

  function showModelInfo() {
    const m = state.models.find((x) => x.id === ui.model.value);
    if (!m) {
      ui.modelInfo.textContent = "";
      return;
    }
    const bits = [`${m.context_length} tokens context`];
    if (m.provider) bits.push(m.provider);
    else if (m.target) bits.push(m.target);
    if (m.decoder && m.decoder !== "oga") bits.push(`${m.decoder} decoder`);
    const loading = state.busy && state.busy.answer.loading && state.busy.answer.model === m.id;
    if (loading) bits.push("loading…");
    else if (m.loaded === false) bits.push("loads on first use");
    else bits.push("loaded");
    ui.modelInfo.textContent = bits.join(" · ");
  }

  // ------------------------------------------------------------ chats
  function newChat() {
    const chat = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "New chat",
      system: state.settings.system || "", model: ui.model.value, messages: [], updated: Date.now() };
    state.chats.unshift(chat);
    state.current = chat.id;
    return chat;
  }

  function openChat(id) {
    state.current = id;
    saveChats();
    const chat = currentChat();
    if (chat && chat.model && state.models.some((m) => m.id === chat.model)) {
      ui.model.value = chat.model;
      showModelInfo();
    }
    ui.app.classList.remove("sidebar-open");
    renderAll();
  }

  function deleteChat(id) {
    if (state.busy && state.busy.chat.id === id) state.busy.controller.abort();
    state.chats = state.chats.filter((c) => c.id !== id);
    if (state.current === id) state.current = state.chats.length ? state.chats[0].id : null;
    saveChats();
    renderAll();
  }

  function titleOf(text) {
    const t = text.replace(/\s+/g, " ").trim();
    return t.length > 48 ? t.slice(0, 47) + "…" : t;
  }

  // ------------------------------------------------------------ rendering
  function renderAll() {
    renderChatList();
    renderMessages();
  }

  function renderChatList() {
    ui.chatList.replaceChildren();
    const chats = [...state.chats].sort((a, b) => b.updated - a.updated);
    for (const chat of chats) {
      const row = el("div", "chat-item");
      if (chat.id === state.current) row.setAttribute("aria-current", "true");
      const open = el("button", "chat-open", chat.title || "New chat");
      open.type = "button";
      open.title = chat.title || "";
      open.addEventListener("click", () => openChat(chat.id));
      const del = el("button", "chat-delete", "×");
      del.type = "button";
      del.title = "Delete this conversation";
      del.setAttribute("aria-label", "Delete " + (chat.title || "conversation"));
      del.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (confirm(`Delete "${chat.title}"?`)) deleteChat(chat.id);
      });
      row.append(open, del);
      ui.chatList.appendChild(row);
    }
  }

  /* Tokens the conversation holds of the model's context: the last answer's prompt + answer. */
  function renderMeter(chat) {
    const last = chat ? [...chat.messages].reverse().find((m) => m.role === "assistant" && m.stats
      && m.stats.prompt_tokens != null) : null;
    const m = last && (modelOf(last.stats.model) || modelOf(chat.model));
    if (!last || !m || !m.context_length) {
      ui.meter.hidden = true;
      return;
    }
    const used = last.stats.prompt_tokens + (last.stats.completion_tokens || 0);
    ui.meter.hidden = false;
    ui.meterBar.max = m.context_length;
    ui.meterBar.value = Math.min(used, m.context_length);
    ui.meterBar.high = m.context_length * 0.8;
    ui.meterBar.optimum = 0;
    ui.meterText.textContent = `${used} / ${m.context_length} tokens`;
    ui.meter.title = `This conversation holds ${used} of the ${m.context_length} tokens of ${m.id}'s context `
      + "(its prompt and the last answer); the next message must fit in the rest.";
  }

  function renderMessages() {
    const chat = currentChat();
    renderMeter(chat);
    ui.messages.replaceChildren();
    if (!chat || !chat.messages.length) {
      const empty = el("div", "empty");
      empty.appendChild(el("h1", null, ui.model.value ? `Chat with ${ui.model.value}` : "oga-npu chat"));
      empty.appendChild(el("p", null, "Answers are made on this machine by oga-npu serve and appear as they are "
        + "generated. Stop one at any time; conversations stay in this browser."));
      if (chat && chat.system) empty.appendChild(systemNote(chat));
      ui.messages.appendChild(empty);
      return;
    }
    if (chat.system) ui.messages.appendChild(systemNote(chat));
    const lastAssistant = chat.messages.length - 1 - [...chat.messages].reverse().findIndex((m) => m.role === "assistant");
    chat.messages.forEach((msg, i) => {
      ui.messages.appendChild(msg.role === "user" ? userNode(chat, msg, i) : answerNode(chat, msg, i === lastAssistant
        && i === chat.messages.length - 1));
    });
    scrollToEnd(true);
  }

  function systemNote(chat) {
    const n = el("button", "system-note");
    n.type = "button";
    n.title = "Edit the system prompt";
    n.appendChild(el("span", "label", "System"));
    n.appendChild(el("span", "text", chat.system));
    n.addEventListener("click", openSettings);
    return n;
  }

  function userNode(chat, msg, index) {
    const row = el("div", "msg user");
    row.appendChild(el("div", "bubble", msg.content));
    const actions = el("div", "user-actions");
    actions.appendChild(actionButton("Edit", "edit", () => editMessage(chat, index, row)));
    row.appendChild(actions);
    return row;
  }

  /* Edit-and-resend: the message changed in place, the conversation after it dropped, answered again. */
  function editMessage(chat, index, row) {
    if (state.busy) return;
    const box = el("textarea", "edit-box");
    box.value = chat.messages[index].content;
    box.rows = Math.min(10, box.value.split("\n").length + 1);
    box.setAttribute("aria-label", "Edit the message");
    const send = actionButton("Send", "edit-send", () => {
      const text = box.value;
      if (!text.trim() || state.busy) return;
      chat.messages = chat.messages.slice(0, index);
      chat.messages.push({ role: "user", content: text });
      if (index === 0) chat.title = titleOf(text);
      generate(chat);
    });
    const cancel = actionButton("Cancel", "edit-cancel", () => renderMessages());
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        send.click();
      } else if (e.key === "Escape") {
        e.preventDefault();
        renderMessages();
      }
    });
    const bar = el("div", "user-actions editing");
    bar.append(cancel, send);
    row.replaceChildren(box, bar);
    box.focus();
  }

  function answerNode(chat, msg, last) {
    const row = el("div", "msg assistant");
    const body = el("div", "body");
    row.appendChild(body);
    state.nodes.set(msg, row);
    paintBody(msg, body);
    const foot = el("div", "foot");
    if (msg.pending) {
      foot.appendChild(el("span", "pending", msg.loading ? `loading ${msg.model}…` : "generating…"));
    } else {
      if (msg.error) row.appendChild(el("div", "error", msg.error));
      if (msg.stopped) foot.appendChild(el("span", "badge", "stopped"));
      if (msg.stats) foot.appendChild(statsNode(msg.stats));
      const actions = el("span", "actions");
      if (msg.content) actions.appendChild(actionButton("Copy", "copy", (b) => copyAnswer(msg, b)));
      if (last) actions.appendChild(actionButton("Regenerate", "regenerate", () => regenerate(chat)));
      foot.appendChild(actions);
    }
    row.appendChild(foot);
    return row;
  }

  function actionButton(text, name, onClick) {
    const b = el("button", "action " + name, text);
    b.type = "button";
    b.addEventListener("click", () => onClick(b));
    return b;
  }

  function copyAnswer(msg, button) {
    const ok = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(msg.content).then(ok, () => {});
  }

  function paintBody(msg, body) {
    body.replaceChildren(window.ogaMarkdown.render(msg.content));
    if (msg.pending) {   // the cursor at the end of the text: inside the last paragraph, item or code
      let at = body;
      while (at.lastElementChild && !at.lastElementChild.matches("br, hr")) at = at.lastElementChild;
      at.appendChild(el("span", "cursor"));
    }
  }

  function fmtMs(ms) {
    return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : Math.round(ms) + " ms";
  }

  function statsNode(s) {
    const box = el("span", "stats");
    const add = (name, text, title) => {
      const item = el("span", "stat " + name, text);
      if (title) item.title = title;
      box.appendChild(item);
    };
    if (s.model) add("model", s.model);
    if (s.completion_tokens != null) add("tokens", `${s.completion_tokens} tokens`);
    if (s.ttft_ms != null) add("ttft", `TTFT ${fmtMs(s.ttft_ms)}`, "time to first token, as this page saw it");
    if (s.tps != null) {
      add("tps", `${s.tps.toFixed(1)} tok/s`, s.tps_from === "server" ? "decode speed: tokens per second after the "
        + "first, as the server timed them" : "tokens per second after the first, as this page saw them arrive");
    }
    if (s.prompt_tokens != null) {
      add("cached", `${s.cached_tokens || 0} of ${s.prompt_tokens} prompt tokens cached`,
        "prompt tokens whose KV cache the server reused instead of computing them again");
    }
    if (s.finish === "length") add("finish", "hit the token limit");
    return box;
  }

  function nearBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 120;
  }

  function scrollToEnd(force) {
    if (force || nearBottom()) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  let paintQueued = null;
  function paintAnswer(answer) {
    if (paintQueued) return;
    paintQueued = requestAnimationFrame(() => {
      paintQueued = null;
      const row = state.nodes.get(answer);
      if (!row || !row.isConnected) return;
      const stick = nearBottom();
      paintBody(answer, row.querySelector(".body"));
      if (stick) scrollToEnd(true);
    });
  }

  function setBusy(busy) {
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.app.classList.toggle("busy", busy);
  }

  // ------------------------------------------------------------ sending
  function sampling() {
    const out = {};
    for (const name of SAMPLING) {
      const v = String(state.settings[name] ?? "").trim();
      if (v === "") continue;
      const n = Number(v);
      if (Number.isFinite(n)) out[name] = name === "top_k" || name === "max_tokens" ? Math.round(n) : n;
    }
    return out;
  }

  /* The server's own timing of this answer (/v1/stats), when its last request is this one:
     its decode rate is exact, where the page sees tokens in chunks (--stream-interval). */
  async function serverStats(model, usage) {
    try {
      const resp = await api("/v1/stats");
      const last = resp.ok ? (await resp.json()).last_request : null;
      if (last && last.model === model && last.prompt_tokens === usage.prompt_tokens
        && last.completion_tokens === usage.completion_tokens) return last;
    } catch (e) { /* no stats: the page's own numbers */ }
    return null;
  }

  function requestMessages(chat, answer) {
    const msgs = [];
    if (chat.system && chat.system.trim()) msgs.push({ role: "system", content: chat.system });
    for (const m of chat.messages) {
      if (m === answer) break;
      if (m.content) msgs.push({ role: m.role, content: m.content });
    }
    return msgs;
  }

  function submit() {
    const text = ui.input.value;
    if (!text.trim() || state.busy) return;
    if (!ui.model.value) {
      showBanner("No model to talk to yet: the server has not listed one.");
      return;
    }
    const chat = currentChat() || newChat();
    if (!chat.messages.some((m) => m.role === "user")) chat.title = titleOf(text);
    chat.messages.push({ role: "user", content: text });
    ui.input.value = "";
    autosize();
    generate(chat);
  }

  function regenerate(chat) {
    if (state.busy) return;
    const last = chat.messages[chat.messages.length - 1];
    if (last && last.role === "assistant") chat.messages.pop();
    generate(chat);
  }

  /* The conversation stored while an answer streams (at most every 250 ms): a reload or a
     closed tab keeps the text so far. */
  let lastSave = 0;
  function saveSoon() {
    const now = performance.now();
    if (now - lastSave < 250) return;
    lastSave = now;
    saveChats();
  }

  function firstEvent(answer) {
    if (!answer.loading) return;
    delete answer.loading;
    const row = state.nodes.get(answer);
    const label = row && row.querySelector(".pending");
    if (label) label.textContent = "generating…";
    const m = modelOf(answer.model);
    if (m) m.loaded = true;
    markLoaded();
    showModelInfo();
  }

  async function generate(chat) {
    const model = ui.model.value;
    const info = modelOf(model);
    const answer = { role: "assistant", content: "", model, pending: true };
    const firstLoad = !!(info && info.loaded === false);
    if (firstLoad) answer.loading = true;   // its first request loads it: "loading MODEL…" until the server answers
    chat.model = model;
    chat.messages.push(answer);
    chat.updated = Date.now();
    state.settings.model = model;
    store.set("settings", state.settings);
    saveChats();
    renderAll();
    const controller = new AbortController();
    state.busy = { controller, chat, answer };
    setBusy(true);
    showModelInfo();
    const body = Object.assign({ model, messages: requestMessages(chat, answer), stream: true,
      stream_options: { include_usage: true } }, sampling());
    const t0 = performance.now();
    let tFirst = null;
    let usage = null;
    let finish = null;
    let needKey = false;
    try {
      let resp;
      try {
        resp = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body),
          signal: controller.signal });
      } catch (e) {
        if (e.name === "AbortError") throw e;
        throw apiError(0, { message: String(e.message || e) });
      }
      if (!resp.ok) throw await errorOf(resp);
      firstEvent(answer);   // the server answers once the model is loaded
      for await (const ev of sseEvents(resp)) {
        if (ev.error) throw apiError(ev.error.code === "shutting_down" ? 503 : 500, ev.error);
        if (ev.usage) usage = ev.usage;
        for (const c of ev.choices || []) {
          const text = c.delta && c.delta.content;
          if (text) {
            if (tFirst === null) tFirst = performance.now();
            answer.content += text;
            paintAnswer(answer);
            saveSoon();
          }
          if (c.finish_reason) finish = c.finish_reason;
        }
      }
    } catch (e) {
      if (e.name === "AbortError" || leaving) answer.stopped = true;
      else if (e.status === 401) needKey = true;
      else answer.error = explain(e);
    }
    const tEnd = performance.now();
    const server = usage && !answer.stopped && !answer.error ? await serverStats(model, usage) : null;
    delete answer.loading;
    delete answer.pending;
    state.busy = null;
    setBusy(false);
    if (usage || tFirst !== null) {
      const n = usage ? usage.completion_tokens : null;
      answer.stats = {
        model,
        completion_tokens: n,
        ttft_ms: tFirst !== null ? tFirst - t0 : null,
        tps: server && server.decode_tokens_per_s != null ? server.decode_tokens_per_s
          : n > 1 && tFirst !== null && tEnd > tFirst ? (n - 1) / ((tEnd - tFirst) / 1000) : null,
        tps_from: server && server.decode_tokens_per_s != null ? "server" : "page",
        prompt_tokens: usage ? usage.prompt_tokens : null,
        cached_tokens: usage && usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens : 0,
        finish,
      };
    }
    if (needKey) {
      chat.messages.pop();
      renderAll();
      const hadKey = !!store.get("apiKey", "");
      if (await askKey(hadKey ? KEY_REFUSED : KEY_NEEDED)) {
        if (!state.models.length) await loadModels();
        return generate(chat);
      }
      answer.error = explain({ status: 401 });
      chat.messages.push(answer);
    }
    saveChats();
    renderAll();
    ui.input.focus();
    if (firstLoad || answer.error) refreshModels();   // the header and the picker say it is loaded now
  }

  // ------------------------------------------------------------ settings
  function openSettings() {
    const chat = currentChat();
    ui.system.value = chat ? chat.system || "" : state.settings.system || "";
    for (const name of SAMPLING) $("set-" + name).value = state.settings[name] ?? "";
    const m = modelOf(ui.model.value);
    const n = m && m.default_max_tokens;
    $("set-max_tokens").placeholder = n ? String(n) : "";
    ui.defaultLength.textContent = n ? `Empty: ${m.id}'s default answer length, ${n} tokens (of its `
      + `${m.context_length}-token context). A number here applies to every model.`
      : "Empty: the server's default answer length for the model.";
    ui.settings.showModal();
  }

  ui.settings.addEventListener("close", () => {
    refocus();
    if (ui.settings.returnValue !== "save") return;
    state.settings.system = ui.system.value;
    for (const name of SAMPLING) state.settings[name] = $("set-" + name).value;
    store.set("settings", state.settings);
    const chat = currentChat();
    if (chat) {
      chat.system = ui.system.value;
      saveChats();
    }
    renderMessages();
  });

  // ------------------------------------------------------------ input
  function autosize() {
    ui.input.style.height = "auto";
    ui.input.style.height = Math.min(ui.input.scrollHeight, window.innerHeight * 0.4) + "px";
  }

  ui.input.addEventListener("input", autosize);
  ui.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submit();
    }
  });
  ui.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  ui.stop.addEventListener("click", () => {
    if (state.busy) state.busy.controller.abort();
  });
  ui.newChat.addEventListener("click", () => {
    const chat = currentChat();
    if (!chat || chat.messages.length) newChat();
    saveChats();
    ui.app.classList.remove("sidebar-open");
    renderAll();
    ui.input.focus();
  });
  ui.model.addEventListener("change", () => {
    state.settings.model = ui.model.value;
    store.set("settings", state.settings);
    const chat = currentChat();
    if (chat) {
      chat.model = ui.model.value;
      saveChats();
    }
    showModelInfo();
    if (!chat || !chat.messages.length) renderMessages();
  });
  ui.openSettings.addEventListener("click", openSettings);
  ui.forgetKey.addEventListener("click", () => {
    store.remove("apiKey");
    updateKeyButton();
  });
  ui.toggle.addEventListener("click", (e) => {
    e.stopPropagation();
    ui.app.classList.toggle("sidebar-open");
  });
  document.querySelector(".main").addEventListener("click", () => ui.app.classList.remove("sidebar-open"));
  window.addEventListener("storage", (e) => {
    if (e.key === "oga-npu.chats" && !state.busy) {
      state.chats = store.get("chats", []);
      renderAll();
    }
  });

  // a reload or a closed tab: the answer streaming now is kept with its text, as stopped (its
  // fetch then fails with a network error, which is no error of the answer's)
  let leaving = false;
  window.addEventListener("pagehide", () => {
    leaving = true;
    if (!state.busy) return;
    const answer = state.busy.answer;
    delete answer.pending;
    delete answer.loading;
    answer.stopped = true;
    saveChats();
  });

  // what manager.js (the model manager) uses
  window.ogaPage = { api, el, errorOf, explain, state, refreshModels, showBanner, refocus };

  updateKeyButton();
  renderAll();
  loadModels();
  ui.input.focus();
})();
