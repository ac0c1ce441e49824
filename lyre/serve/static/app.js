// lyre chat page. Plain JavaScript, no dependencies: talks to the same server's OpenAI API.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "lyre.conversations.v1";
const SETTINGS = "lyre.settings.v1";

const state = {
  model: null,
  contextLength: null,
  mode: "chat",            // "chat" | "complete"
  conversations: [],       // [{id, title, messages: [{role, content, meta?}]}]
  current: null,           // id of the open conversation
  controller: null,        // AbortController of the request in flight
};

// ---------------------------------------------------------------------------------------------
// settings

function settings() {
  return {
    temperature: parseFloat($("temperature").value),
    top_k: parseInt($("top_k").value, 10),
    top_p: parseFloat($("top_p").value),
    max_tokens: parseInt($("max_tokens").value, 10),
  };
}

function loadSettings() {
  try {
    const saved = JSON.parse(localStorage.getItem(SETTINGS) || "{}");
    for (const key of ["temperature", "top_k", "top_p", "max_tokens", "api_key"]) {
      if (saved[key] !== undefined) $(key).value = saved[key];
    }
    if (saved.mode) state.mode = saved.mode;
  } catch (e) { /* ignore a corrupt entry */ }
  showSliderValues();
}

function saveSettings() {
  const s = settings();
  s.api_key = $("api_key").value;
  s.mode = state.mode;
  localStorage.setItem(SETTINGS, JSON.stringify(s));
}

function showSliderValues() {
  for (const key of ["temperature", "top_k", "top_p"]) $(key + "-value").textContent = $(key).value;
}

// ---------------------------------------------------------------------------------------------
// conversations (kept in localStorage)

function loadConversations() {
  try { state.conversations = JSON.parse(localStorage.getItem(STORE) || "[]"); }
  catch (e) { state.conversations = []; }
}

function saveConversations() {
  try { localStorage.setItem(STORE, JSON.stringify(state.conversations.slice(0, 50))); }
  catch (e) { /* storage full: history is a convenience */ }
}

function currentConversation() {
  return state.conversations.find((c) => c.id === state.current) || null;
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.current = null;
  renderHistory();
  renderMessages();
  setStats("");
  hideError();
  $("prompt").focus();
  $("sidebar").classList.remove("open");
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const conv of state.conversations) {
    const li = document.createElement("li");
    if (conv.id === state.current) li.classList.add("active");
    const open = document.createElement("button");
    open.className = "open";
    open.type = "button";
    open.textContent = conv.title || "(untitled)";
    open.title = conv.title || "";
    open.onclick = () => {
      state.current = conv.id;
      setMode("chat");
      renderHistory();
      renderMessages();
      $("sidebar").classList.remove("open");
    };
    const del = document.createElement("button");
    del.className = "delete";
    del.type = "button";
    del.textContent = "×";
    del.setAttribute("aria-label", "Delete conversation");
    del.onclick = () => {
      state.conversations = state.conversations.filter((c) => c.id !== conv.id);
      if (state.current === conv.id) state.current = null;
      saveConversations();
      renderHistory();
      renderMessages();
    };
    li.append(open, del);
    list.append(li);
  }
}

function messageElement(msg) {
  const div = document.createElement("div");
  div.className = "msg " + msg.role;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = msg.content;
  div.append(content);
  if (msg.meta) {
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = msg.meta;
    div.append(meta);
  }
  return div;
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  const conv = currentConversation();
  const messages = conv ? conv.messages : [];
  for (const msg of messages) box.append(messageElement(msg));
  $("empty-hint").hidden = messages.length > 0;
  scrollDown();
}

function scrollDown() {
  const view = state.mode === "chat" ? $("chat-view") : $("complete-view");
  view.scrollTop = view.scrollHeight;
}

// ---------------------------------------------------------------------------------------------
// errors and stats

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
}

function hideError() { $("error").hidden = true; }

function setStats(text) { $("stats").textContent = text; }

function describeFailure(err) {
  if (err.name === "AbortError") return null;
  if (err instanceof ApiError) {
    if (err.status === 401) return "The server needs an API key: open the settings (⚙) and enter it.\n(" + err.message + ")";
    if (err.status === 429 || err.status === 503) return "The server is busy (" + err.status + "): " + err.message + " Try again in a moment.";
    return "The server answered " + err.status + ": " + err.message;
  }
  return "Cannot reach the server at " + location.origin + ". Is `lyre serve` still running?\n(" + err.message + ")";
}

class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}

function statsLine(tokens, startedAt, firstAt, endedAt, finish) {
  // tokens/s of the decoding: the tokens after the first, over the time after the first arrived
  // (the wait for the first one is shown on its own, as "first token").
  const parts = [tokens + " token" + (tokens === 1 ? "" : "s")];
  const decodeSeconds = firstAt ? (endedAt - firstAt) / 1000 : 0;
  const totalSeconds = (endedAt - startedAt) / 1000;
  if (tokens > 1 && decodeSeconds > 0) parts.push(((tokens - 1) / decodeSeconds).toFixed(1) + " tokens/s");
  else if (tokens > 0 && totalSeconds > 0) parts.push((tokens / totalSeconds).toFixed(1) + " tokens/s");
  if (firstAt) parts.push("first token " + Math.round(firstAt - startedAt) + " ms");
  if (finish) parts.push(finish === "length" ? "stopped at the token limit" : "finished");
  return parts.join(" · ");
}

// ---------------------------------------------------------------------------------------------
// the API

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function fetchModel() {
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    if (!res.ok) throw await apiError(res);
    const body = await res.json();
    const model = body.data[0];
    state.model = model.id;
    state.contextLength = model.context_length;
    $("model-name").textContent = model.id + " · " + model.context_length + "-token context" +
      (model.chat_template === "plain" ? " · base model" : "");
    if (model.chat_template === "plain" && !localStorage.getItem(SETTINGS)) setMode("complete");
    hideError();
  } catch (err) {
    const text = describeFailure(err);
    if (text) showError(text);
  }
}

async function apiError(res) {
  let message = res.statusText || "error";
  let code = null;
  try {
    const body = await res.json();
    if (body && body.error) { message = body.error.message; code = body.error.code; }
  } catch (e) { /* not JSON */ }
  return new ApiError(res.status, message, code);
}

// POST a streaming request; calls onDelta(text) for each piece, returns {finish, usage}.
async function streamRequest(path, body, onDelta, signal) {
  const res = await fetch(path, {
    method: "POST", headers: headers(), signal,
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok) throw await apiError(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  let usage = null;
  let pieces = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return { finish, usage, pieces };
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk.error.message, chunk.error.code);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const text = choice.delta ? choice.delta.content : choice.text;
          if (text) { pieces++; onDelta(text); }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  throw new Error("the stream ended before [DONE]");
}

// ---------------------------------------------------------------------------------------------
// chat mode

async function sendChat(text) {
  let conv = currentConversation();
  if (!conv) {
    conv = { id: String(Date.now()), title: text.slice(0, 60), messages: [] };
    state.conversations.unshift(conv);
    state.current = conv.id;
  }
  conv.messages.push({ role: "user", content: text });
  saveConversations();
  renderHistory();
  renderMessages();

  const reply = { role: "assistant", content: "" };
  const el = messageElement(reply);
  el.classList.add("streaming");
  $("messages").append(el);
  scrollDown();
  const content = el.querySelector(".content");

  const s = settings();
  let history = conv.messages.filter((m) => m.role === "user" || m.role === "assistant")
    .map((m) => ({ role: m.role, content: m.content }));
  let dropped = 0;
  const startedAt = performance.now();
  let firstAt = null;
  for (;;) {
    try {
      const result = await streamRequest("/v1/chat/completions", {
        model: state.model, messages: history, temperature: s.temperature, top_k: s.top_k,
        top_p: s.top_p, max_tokens: s.max_tokens,
      }, (piece) => {
        if (firstAt === null) firstAt = performance.now();
        reply.content += piece;
        content.textContent = reply.content;
        scrollDown();
      }, state.controller.signal);
      const tokens = result.usage ? result.usage.completion_tokens : result.pieces;
      reply.meta = statsLine(tokens, startedAt, firstAt, performance.now(), result.finish);
      if (dropped) reply.meta += " · oldest " + dropped + " message(s) left out to fit the context";
      break;
    } catch (err) {
      // A conversation longer than the context: leave out the oldest exchange and try again.
      if (err instanceof ApiError && err.code === "context_length_exceeded" && history.length > 1) {
        const n = history.length > 2 ? 2 : 1;
        history = history.slice(n);
        dropped += n;
        continue;
      }
      throw Object.assign(err, { partial: reply });
    } finally {
      el.classList.remove("streaming");
    }
  }
  conv.messages.push(reply);
  saveConversations();
  setStats(reply.meta);
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = reply.meta;
  el.append(meta);
}

// ---------------------------------------------------------------------------------------------
// completion mode (a base model continues a beginning)

async function sendCompletion(text) {
  const out = $("completion-output");
  out.replaceChildren();
  const prompt = document.createElement("span");
  prompt.textContent = text;
  const gen = document.createElement("span");
  gen.className = "generated";
  out.append(prompt, gen);
  const s = settings();
  const startedAt = performance.now();
  let firstAt = null;
  const result = await streamRequest("/v1/completions", {
    model: state.model, prompt: text, temperature: s.temperature, top_k: s.top_k,
    top_p: s.top_p, max_tokens: s.max_tokens,
  }, (piece) => {
    if (firstAt === null) firstAt = performance.now();
    gen.textContent += piece;
    scrollDown();
  }, state.controller.signal);
  const tokens = result.usage ? result.usage.completion_tokens : result.pieces;
  setStats(statsLine(tokens, startedAt, firstAt, performance.now(), result.finish) +
    (result.usage ? " · prompt " + result.usage.prompt_tokens + " tokens" : ""));
}

// ---------------------------------------------------------------------------------------------
// wiring

function setMode(mode) {
  state.mode = mode;
  $("mode-chat").setAttribute("aria-selected", String(mode === "chat"));
  $("mode-complete").setAttribute("aria-selected", String(mode === "complete"));
  $("chat-view").hidden = mode !== "chat";
  $("complete-view").hidden = mode !== "complete";
  $("prompt").placeholder = mode === "chat"
    ? "Message lyre…  (Enter to send, Shift+Enter for a new line)"
    : "Type a beginning for the model to continue…";
  $("send").textContent = state.controller ? "Stop" : (mode === "chat" ? "Send" : "Generate");
  saveSettings();
}

function setBusy(busy) {
  $("send").textContent = busy ? "Stop" : (state.mode === "chat" ? "Send" : "Generate");
  $("send").classList.toggle("primary", !busy);
  document.body.dataset.busy = busy ? "1" : "";
}

async function submit(event) {
  if (event) event.preventDefault();
  if (state.controller) { state.controller.abort(); return; }
  const text = $("prompt").value;
  if (!text.trim() && state.mode === "chat") return;
  hideError();
  if (!state.model) await fetchModel();
  if (!state.model) return;
  state.controller = new AbortController();
  setBusy(true);
  if (state.mode === "chat") $("prompt").value = "";
  try {
    if (state.mode === "chat") await sendChat(text);
    else await sendCompletion(text);
  } catch (err) {
    const message = describeFailure(err);
    if (message) showError(message);
    if (err.partial && err.partial.content) {  // keep what had arrived
      const conv = currentConversation();
      if (conv) { conv.messages.push(err.partial); saveConversations(); }
    } else if (state.mode === "chat" && !$("prompt").value) {
      $("prompt").value = text;  // let the user resend
    }
    if (!message) setStats("stopped");
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

function init() {
  loadSettings();
  loadConversations();
  setMode(state.mode);
  renderHistory();
  renderMessages();
  $("composer").addEventListener("submit", submit);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) submit(e);
  });
  $("new-chat").onclick = newChat;
  $("mode-chat").onclick = () => setMode("chat");
  $("mode-complete").onclick = () => setMode("complete");
  $("toggle-settings").onclick = () => { $("settings").hidden = !$("settings").hidden; };
  $("toggle-sidebar").onclick = () => $("sidebar").classList.toggle("open");
  for (const key of ["temperature", "top_k", "top_p", "max_tokens", "api_key"]) {
    $(key).addEventListener("input", () => { showSliderValues(); saveSettings(); });
  }
  $("api_key").addEventListener("change", fetchModel);
  fetchModel();
}

init();
