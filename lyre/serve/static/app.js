// lyre chat page. Plain JavaScript, no dependencies: talks to the same server's OpenAI API.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "lyre.conversations.v1";
const SETTINGS = "lyre.settings.v1";

const state = {
  model: null,
  contextLength: null,
  mode: "chat",            // "chat" | "complete"
  modes: {},               // model id -> the mode the user chose for it (the tabs)
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
    // Only a mode the user chose counts; without one the model decides (fetchModel).
    if (saved.modes && typeof saved.modes === "object") state.modes = saved.modes;
    $("use-docs").checked = saved.use_docs === true && !$("use-docs").disabled;
  } catch (e) { /* ignore a corrupt entry */ }
  showSliderValues();
}

function saveSettings() {
  const s = settings();
  s.api_key = $("api_key").value;
  s.modes = state.modes;
  s.use_docs = $("use-docs").checked;
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
  showDrawer(false);
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
      showDrawer(false);
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
  if (msg.calls && msg.calls.length) {  // the agent's tool calls, collapsed, before its answer
    const box = callsBox(div);
    for (const call of msg.calls) box.append(callElement(call));
  }
  div.append(content);
  if (msg.sources) div.append(sourcesElement(msg.sources));
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
  $("error-text").textContent = text;
  $("error").hidden = false;
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

// OpenAI's error types (lyre/serve/errors.py) back to their statuses, for errors mid-stream.
const ERROR_STATUS = { invalid_request_error: 400, authentication_error: 401, not_found_error: 404,
  rate_limit_error: 429, overloaded_error: 503 };

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
    const isNew = state.model !== model.id;
    state.model = model.id;
    state.contextLength = model.context_length;
    $("model-name").textContent = model.id + " · " + model.context_length + "-token context" +
      (model.chat_template === "plain" ? " · base model" : "");
    // The mode the user chose for this model, else Complete for a base model, Chat otherwise.
    if (isNew) setMode(state.modes[model.id] || (model.chat_template === "plain" ? "complete" : "chat"));
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

// POST `body` with stream: true and call onEvent(object) for each server-sent event until
// [DONE]. A 4xx/5xx answer, or an {"error": ...} event mid-stream, throws an ApiError.
async function postEvents(path, body, onEvent, signal) {
  const res = await fetch(path, {
    method: "POST", headers: headers(), signal, body: JSON.stringify({ ...body, stream: true }),
  });
  if (!res.ok) throw await apiError(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
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
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) {  // mid-stream: the status line was already sent; the type tells it
          const status = ERROR_STATUS[chunk.error.type] || 500;
          throw new ApiError(status, chunk.error.message, chunk.error.code);
        }
        onEvent(chunk);
      }
    }
  }
  throw new Error("the stream ended before [DONE]");
}

// A streamed (chat) completion; calls onDelta(text) for each piece, returns {finish, usage}.
async function streamRequest(path, body, onDelta, signal) {
  let finish = null;
  let usage = null;
  let pieces = 0;
  await postEvents(path, { ...body, stream_options: { include_usage: true } }, (chunk) => {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      const text = choice.delta ? choice.delta.content : choice.text;
      if (text) { pieces++; onDelta(text); }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }, signal);
  return { finish, usage, pieces };
}

// ---------------------------------------------------------------------------------------------
// chat mode

// What goes to the server: the stored turns, without a user message that never got an answer
// (one stored by an older page after a failure; this page removes failed turns).
function requestMessages(conv) {
  const turns = conv.messages.filter((m) => m.role === "user" || m.role === "assistant");
  return turns.filter((m, i) => !(m.role === "user" && turns[i + 1] && turns[i + 1].role === "user"));
}

// Tokens of a stored message: counted from the server's usage when it answered (`tokens`), else
// estimated from its length with the most tokens per character seen in this conversation.
function tokensOf(msg, perChar) {
  return msg.tokens != null ? msg.tokens : Math.ceil(msg.content.length * perChar) + 4;
}

function tokensPerChar(messages) {
  let ratio = 0;
  for (const m of messages) {
    if (m.tokens != null && m.content.length) ratio = Math.max(ratio, m.tokens / m.content.length);
  }
  return ratio || 1;  // nothing counted yet: one token per character errs on the safe side
}

// Leave out the oldest exchanges until the prompt leaves room for a useful answer: max_tokens,
// at most half the context (the terminal's rule). The server would otherwise cut the answer
// to whatever room is left, a few tokens in a long conversation.
function fitHistory(history, maxTokens) {
  const reserve = Math.min(maxTokens, Math.floor(state.contextLength / 2));
  const perChar = tokensPerChar(history);
  let kept = history;
  let dropped = 0;
  const total = () => kept.reduce((n, m) => n + tokensOf(m, perChar), 0);
  while (kept.length > 1 && total() + reserve > state.contextLength) {
    const n = kept.length > 2 && kept[0].role === "user" && kept[1].role === "assistant" ? 2 : 1;
    kept = kept.slice(n);
    dropped += n;
  }
  return { kept, dropped };
}

// Remember how many tokens the question and the answer took (for fitHistory next time).
function countTokens(sent, user, reply, usage) {
  if (!usage) return;
  reply.tokens = usage.completion_tokens;
  const perChar = tokensPerChar(sent);
  const before = sent.filter((m) => m !== user).reduce((n, m) => n + tokensOf(m, perChar), 0);
  user.tokens = Math.max(1, usage.prompt_tokens - before);
}

function addMeta(el, text) {
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = text;
  el.append(meta);
}

async function sendChat(text) {
  let conv = currentConversation();
  if (!conv) {
    conv = { id: String(Date.now()), title: text.slice(0, 60), messages: [] };
    state.conversations.unshift(conv);
    state.current = conv.id;
  }
  const user = { role: "user", content: text };
  conv.messages.push(user);
  saveConversations();
  renderHistory();
  renderMessages();

  const reply = { role: "assistant", content: "" };
  const el = messageElement(reply);
  el.classList.add("streaming");
  $("messages").append(el);
  scrollDown();
  const content = el.querySelector(".content");
  const timing = { startedAt: performance.now(), firstAt: null };
  const onPiece = (piece) => {
    if (timing.firstAt === null) timing.firstAt = performance.now();
    reply.content += piece;
    content.textContent = reply.content;
    scrollDown();
  };
  try {
    if (usingDocuments()) await askDocuments(conv, user, reply, onPiece, timing);
    else if (usingTools()) await askAgent(conv, user, reply, onPiece, timing, el);
    else await askModel(conv, user, reply, onPiece, timing);
  } catch (err) {
    el.classList.remove("streaming");
    if (reply.content) {  // keep what had arrived, and say it is not the whole answer
      reply.meta = err.name === "AbortError" ? "stopped" : "incomplete: the answer was cut off";
      conv.messages.push(reply);
      saveConversations();
      addMeta(el, reply.meta);
    } else {  // nothing arrived: the turn did not happen; its text goes back to the composer
      const stillOpen = state.current === conv.id;  // not after "New chat" or another conversation
      conv.messages.splice(conv.messages.indexOf(user), 1);
      if (!conv.messages.length) {
        state.conversations = state.conversations.filter((c) => c !== conv);
        if (stillOpen) state.current = null;
      }
      saveConversations();
      renderHistory();
      renderMessages();
      if (stillOpen && !$("prompt").value) $("prompt").value = text;
    }
    throw err;
  }
  el.classList.remove("streaming");
  content.textContent = reply.content;
  conv.messages.push(reply);
  saveConversations();
  if (reply.sources) el.append(sourcesElement(reply.sources));
  addMeta(el, reply.meta);
  scrollDown();
}

// The model answers the conversation: POST /v1/chat/completions.
async function askModel(conv, user, reply, onPiece, timing) {
  const s = settings();
  let { kept: history, dropped } = fitHistory(requestMessages(conv), s.max_tokens);
  for (;;) {
    try {
      const result = await streamRequest("/v1/chat/completions", {
        model: state.model, messages: history.map((m) => ({ role: m.role, content: m.content })),
        temperature: s.temperature, top_k: s.top_k, top_p: s.top_p, max_tokens: s.max_tokens,
      }, onPiece, state.controller.signal);
      const tokens = result.usage ? result.usage.completion_tokens : result.pieces;
      countTokens(history, user, reply, result.usage);
      reply.meta = statsLine(tokens, timing.startedAt, timing.firstAt, performance.now(), result.finish);
      if (dropped) reply.meta += " · oldest " + dropped + " message(s) left out to fit the context";
      return;
    } catch (err) {
      // Still longer than the context: leave out the next oldest exchange and try again.
      if (err instanceof ApiError && err.code === "context_length_exceeded" && history.length > 1
          && !reply.content) {
        const n = history.length > 2 ? 2 : 1;
        history = history.slice(n);
        dropped += n;
        continue;
      }
      throw err;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// "Use my documents": the server's index answers (`lyre serve RUN --rag IDX`, docs/rag.md)

const RAG_HISTORY = 10;  // earlier exchanges sent along; the server condenses with those that fit

function usingDocuments() {
  return state.mode === "chat" && !$("use-docs").disabled && $("use-docs").checked;
}

// The earlier exchanges of the conversation as the route's {question, answer} turns.
function ragHistory(conv, user) {
  const turns = requestMessages(conv).filter((m) => m !== user);
  const pairs = [];
  for (let i = 0; i + 1 < turns.length; i++) {
    if (turns[i].role === "user" && turns[i + 1].role === "assistant") {
      pairs.push({ question: turns[i].content.slice(0, 10000), answer: turns[i + 1].content.slice(0, 100000) });
      i++;
    }
  }
  return pairs.slice(-RAG_HISTORY);
}

// POST /v1/rag/answer, streamed: pieces of the answer, then the whole answer with its sources.
async function askDocuments(conv, user, reply, onPiece, timing) {
  // The answer budget: Max tokens, at most a quarter of the context (the route's own default),
  // so that the passages keep most of the prompt.
  const quarter = Math.max(16, Math.floor(state.contextLength / 4));
  const maxTokens = Math.min(settings().max_tokens, quarter);
  let answer = null;
  await postEvents("/v1/rag/answer", {
    question: user.content, history: ragHistory(conv, user), max_tokens: maxTokens,
  }, (event) => {
    if (event.object === "rag.answer.delta") onPiece(event.text);
    else if (event.object === "rag.answer") answer = event;
  }, state.controller.signal);
  if (!answer) throw new Error("the answer stream ended without its sources");
  reply.content = answer.answer;  // the pieces joined, as the server says it
  // What the page keeps of each source (the passage cut short: localStorage is small).
  reply.sources = answer.sources.map((src) => ({
    n: src.n, source: src.source, page: src.page, start: src.start, end: src.end,
    cited: src.cited, text: src.text.slice(0, 2000),
  }));
  const parts = ["from your documents", answer.chain,
    answer.llm_calls + " model call" + (answer.llm_calls === 1 ? "" : "s")];
  if (timing.firstAt) parts.push("first token " + Math.round(timing.firstAt - timing.startedAt) + " ms");
  if (answer.standalone_question && answer.standalone_question !== answer.question) {
    parts.push("searched for: " + answer.standalone_question);
  }
  if (!answer.sources.length) parts.push("no passage matched");
  for (const notice of answer.notices) parts.push("note: " + notice);
  reply.meta = parts.join(" · ");
}

// "[1] iliad.txt, page 3" as `lyre rag ask` prints it; the passage opens under it.
function sourceLabel(src) {
  const where = src.page != null ? "page " + src.page : "characters " + src.start + "-" + src.end;
  return "[" + src.n + "] " + src.source + ", " + where;
}

function sourcesElement(sources) {
  const list = document.createElement("ol");
  list.className = "sources";
  list.setAttribute("aria-label", "Sources");
  for (const src of sources) {
    const item = document.createElement("li");
    if (src.cited) item.className = "cited";
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = sourceLabel(src) + (src.cited ? " · cited" : "");
    const passage = document.createElement("p");
    passage.textContent = src.text;
    details.append(summary, passage);
    item.append(details);
    list.append(item);
  }
  return list;
}

// The server says whether it has an index (<body data-rag="on">, lyre/serve/routes/page.py).
function setUpDocuments() {
  const box = $("use-docs");
  if (document.body.dataset.rag !== "on") return;  // stays disabled, its tooltip says why
  box.disabled = false;
  box.removeAttribute("aria-describedby");
  $("use-docs-why").hidden = true;
  $("use-docs-label").title = "Answer from the documents of the server's index, with their sources";
}

function showDocumentsMode() {
  const on = usingDocuments();
  $("prompt").placeholder = state.mode === "complete" ? "Type a beginning for the model to continue…"
    : on ? "Ask your documents…  (Enter to send, Shift+Enter for a new line)"
      : usingTools() ? "Message lyre (tools: " + serverTools().join(", ") + ")…  (Enter to send)"
        : "Message lyre…  (Enter to send, Shift+Enter for a new line)";
}

// ---------------------------------------------------------------------------------------------
// Tools: the server runs them (`lyre serve RUN --tools calculator,...`, docs/agent.md)

// The tools the server runs for this page (<meta name="lyre-tools" content="calculator,sql">,
// routes/page.py).
function serverTools() {
  const meta = document.querySelector('meta[name="lyre-tools"]');
  return (meta ? meta.content : "").split(",").filter((name) => name);
}

function usingTools() { return state.mode === "chat" && serverTools().length > 0; }

// The box of an answer's tool calls, before its text (made on first use).
function callsBox(el) {
  let box = el.querySelector(".tool-calls");
  if (!box) {
    box = document.createElement("div");
    box.className = "tool-calls";
    el.prepend(box);
  }
  return box;
}

// One call, collapsed: "calculator({...})" opens onto its result (or its error).
function callElement(call) {
  const details = document.createElement("details");
  details.className = "tool-call" + (call.error ? " error" : "");
  const summary = document.createElement("summary");
  summary.textContent = "⚙ " + call.name + "(" + call.arguments + ")" +
    (call.result == null ? " …" : call.error ? " · error" : "");
  const result = document.createElement("pre");
  result.textContent = call.result == null ? "running…" : call.result;
  details.append(summary, result);
  return details;
}

// POST /v1/agent/answer, streamed: each call as it starts and ends, the answer's pieces, then
// the whole answer with its steps.
async function askAgent(conv, user, reply, onPiece, timing, el) {
  const s = settings();
  const { kept: history, dropped } = fitHistory(requestMessages(conv), s.max_tokens);
  reply.calls = [];
  const shown = {};  // call_id -> its element
  let answer = null;
  await postEvents("/v1/agent/answer", {
    messages: history.map((m) => ({ role: m.role, content: m.content })),
    max_tokens: s.max_tokens, temperature: s.temperature,
  }, (event) => {
    if (event.object === "agent.call") {
      const call = { name: event.name, arguments: event.arguments, result: null, error: false };
      reply.calls.push(call);
      shown[event.call_id] = { call, element: callElement(call) };
      callsBox(el).append(shown[event.call_id].element);
      scrollDown();
    } else if (event.object === "agent.result") {
      const entry = shown[event.call_id];
      if (!entry) return;
      entry.call.result = event.result.slice(0, 4000);  // localStorage is small
      entry.call.error = event.is_error;
      const fresh = callElement(entry.call);
      entry.element.replaceWith(fresh);
      entry.element = fresh;
    } else if (event.object === "agent.delta") onPiece(event.text);
    else if (event.object === "agent.answer") answer = event;
  }, state.controller.signal);
  if (!answer) throw new Error("the answer stream ended without its steps");
  reply.content = answer.answer;
  const parts = [answer.steps.length + " tool call" + (answer.steps.length === 1 ? "" : "s"),
    answer.model_calls + " model call" + (answer.model_calls === 1 ? "" : "s")];
  if (answer.tool_errors) parts.push(answer.tool_errors + " failed");
  if (timing.firstAt) parts.push("first token " + Math.round(timing.firstAt - timing.startedAt) + " ms");
  if (dropped) parts.push("oldest " + dropped + " message(s) left out to fit the context");
  for (const notice of answer.notices) parts.push("note: " + notice);
  reply.meta = parts.join(" · ");
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

// `remember`: the user chose it (a tab), so this model opens in it next time.
function setMode(mode, remember = false) {
  state.mode = mode;
  if (remember && state.model) state.modes[state.model] = mode;
  $("mode-chat").setAttribute("aria-selected", String(mode === "chat"));
  $("mode-complete").setAttribute("aria-selected", String(mode === "complete"));
  $("chat-view").hidden = mode !== "chat";
  $("complete-view").hidden = mode !== "complete";
  $("docs-option").hidden = mode !== "chat";
  showDocumentsMode();
  $("send").textContent = state.controller ? "Stop" : (mode === "chat" ? "Send" : "Generate");
  setStats("");
  if (remember) saveSettings();
}

// The history drawer of phone-width screens, with a backdrop that closes it.
function showDrawer(open) {
  $("sidebar").classList.toggle("open", open);
  $("backdrop").hidden = !open;
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
  setStats("");
  if (state.mode === "chat") $("prompt").value = "";
  try {
    if (state.mode === "chat") await sendChat(text);  // its stats go under the answer
    else await sendCompletion(text);
  } catch (err) {
    const message = describeFailure(err);
    if (message) showError(message);
    else if (state.mode !== "chat") setStats("stopped");
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

function init() {
  setUpDocuments();
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
  $("mode-chat").onclick = () => setMode("chat", true);
  $("mode-complete").onclick = () => setMode("complete", true);
  $("toggle-settings").onclick = () => { $("settings").hidden = !$("settings").hidden; };
  $("toggle-sidebar").onclick = () => showDrawer(!$("sidebar").classList.contains("open"));
  $("backdrop").onclick = () => showDrawer(false);
  $("error-close").onclick = hideError;
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") showDrawer(false); });
  for (const key of ["temperature", "top_k", "top_p", "max_tokens", "api_key"]) {
    $(key).addEventListener("input", () => { showSliderValues(); saveSettings(); });
  }
  $("api_key").addEventListener("change", fetchModel);
  $("use-docs").addEventListener("change", () => { showDocumentsMode(); saveSettings(); });
  fetchModel();
}

init();
