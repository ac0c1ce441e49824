// lyre classifier page: POST the text to /v1/classify, show every label's probability.
"use strict";
const $ = (id) => document.getElementById(id);
const KEY = "lyre.classify.api_key";

function show(error) {
  $("error").textContent = error || "";
  $("error").hidden = !error;
}

async function classify(event) {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) { show("Type a text first."); return; }
  localStorage.setItem(KEY, $("api_key").value);
  const headers = { "Content-Type": "application/json" };
  if ($("api_key").value) headers.Authorization = "Bearer " + $("api_key").value;
  $("send").disabled = true;
  try {
    const res = await fetch("/v1/classify", { method: "POST", headers, body: JSON.stringify({ input: text }) });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) { show((body.error && body.error.message) || "HTTP " + res.status); return; }
    show("");
    const item = body.data[0];
    const rows = Object.entries(item.probabilities).sort((a, b) => b[1] - a[1]);
    const tbody = $("result").querySelector("tbody");
    tbody.replaceChildren(...rows.map(([label, p]) => {
      const tr = document.createElement("tr");
      if (label === item.label) tr.className = "best";
      for (const cell of [label, (100 * p).toFixed(1) + " %"]) {
        const td = document.createElement("td");
        td.textContent = cell;
        tr.append(td);
      }
      return tr;
    }));
    $("result").hidden = false;
    $("note").textContent = item.tokens + " tokens read" + (item.truncated ? "; the text was longer than the context and lost its end" : "");
    $("note").hidden = false;
  } catch (e) {
    show("The server cannot be reached: " + e.message);
  } finally {
    $("send").disabled = false;
  }
}

$("api_key").value = localStorage.getItem(KEY) || "";
$("curl").textContent = $("curl").textContent.replace("URL", location.origin);
$("form").addEventListener("submit", classify);
