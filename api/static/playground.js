// Chatify playground: pick a personality, chat, and watch the reply stream in (SSE over fetch).
"use strict";
const API = "/api/v1/chatbot";
const $ = (id) => document.getElementById(id);
const userId = localStorage.getItem("chatify-playground-user") ||
  "playground-" + crypto.randomUUID().slice(0, 8);
localStorage.setItem("chatify-playground-user", userId);
let sessionId = null;
let pending = []; // data: URLs of the images chosen for the next message (docs/images.md)

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function status(text, isError) {
  $("status").textContent = text || "";
  $("status").className = isError ? "error" : "";
}

function showImages(reply, urls) {
  for (const url of urls) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "an image the personality made";
    img.className = "generated";
    reply.appendChild(document.createElement("br"));
    reply.appendChild(img);
  }
}

async function api(method, path, body) {
  const response = await fetch(API + path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.code + ": " + data.error.message : response.status);
  return data;
}

async function loadPersonalities() {
  const data = await api("GET", "/personalities");
  for (const [id, description] of Object.entries(data.personalities)) {
    const option = new Option(id + " — " + description, id);
    $("personality").add(option);
  }
}

async function newChat() {
  $("log").replaceChildren();
  const data = await api("POST", "/session", { user_id: userId, template_id: $("personality").value });
  sessionId = data.session_id;
  bubble("note", "Session " + sessionId + " with " + data.template_id);
  if (data.welcome_message) bubble("assistant", data.welcome_message);
  for (const id of ["text", "send", "end", "regenerate", "attach"]) $(id).disabled = false;
  $("text").focus();
}

async function endChat() {
  const data = await api("DELETE", "/session/" + sessionId);
  bubble("note", "Ended: " + data.stats.message_count + " turns in " + data.stats.duration_seconds + " s");
  for (const id of ["text", "send", "end", "regenerate", "attach"]) $(id).disabled = true;
}

function send(text) {
  const asked = bubble("user", text);
  const body = { message: text, client_message_id: crypto.randomUUID() };
  if (pending.length) {
    body.attachments = pending.map((url) => ({ url }));
    for (const url of pending) {
      const img = document.createElement("img");
      img.src = url;
      img.alt = "an image you sent";
      img.className = "sent";
      asked.appendChild(document.createElement("br"));
      asked.appendChild(img);
    }
    pending = [];
    $("attach").textContent = "Image";
  }
  return streamTurn("POST", "/message/stream", body, asked);
}

// Image: the chosen files go with the next message, as data: URLs the service checks.
function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
$("attach").addEventListener("click", () => $("image").click());
$("image").addEventListener("change", async () => {
  for (const file of $("image").files) pending.push(await readAsDataURL(file));
  $("image").value = "";
  $("attach").textContent = "Image (" + pending.length + ")";
});

// Regenerate: the last reply is answered again (the old one is kept as a variant).
function regenerate() {
  const replies = $("log").querySelectorAll(".msg.assistant");
  const sent = $("log").querySelectorAll(".msg.user");
  const asked = sent.length ? sent[sent.length - 1] : null;
  if (replies.length) replies[replies.length - 1].remove();
  const body = { client_message_id: crypto.randomUUID() };
  return streamTurn("POST", "/regenerate/stream", body, asked);
}

// Edit (click a message you sent): it is replaced and answered anew; what followed it leaves
// the conversation (kept as a variant).
function edit(asked) {
  const text = window.prompt("Edit your message", asked.textContent);
  if (!text || !text.trim() || asked.dataset.seq === undefined) return Promise.resolve();
  while (asked.nextSibling) asked.nextSibling.remove();
  asked.textContent = text.trim();
  const path = "/messages/" + asked.dataset.seq + "/stream";
  return streamTurn("PATCH", path, { message: text.trim() }, asked);
}

async function streamTurn(method, path, body, asked) {
  const reply = bubble("assistant", "");
  const started = performance.now();
  const response = await fetch(API + "/session/" + sessionId + path, {
    method,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    const data = await response.json();
    throw new Error(data.error.code + ": " + data.error.message);
  }
  let first = null;
  const calls = {};
  for await (const event of readEvents(response)) {
    const data = JSON.parse(event.data);
    if (event.event === "delta") {
      first = first || performance.now();
      reply.textContent += data.content;
      $("log").scrollTop = $("log").scrollHeight;
    } else if (event.event === "tool_call") {
      calls[data.id] = bubble("tool", "⚙ " + data.name + " " + JSON.stringify(data.arguments));
      $("log").insertBefore(calls[data.id], reply);
    } else if (event.event === "tool_result") {
      const note = calls[data.id] || bubble("tool", data.name);
      const result = data.result.length > 200 ? data.result.slice(0, 200) + "…" : data.result;
      note.textContent += (data.is_error ? " ✗ " : " → ") + result;
    } else if (event.event === "done") {
      showImages(reply, data.assistant_message.images || []);
      if (asked) {
        asked.dataset.seq = data.user_message.seq;
        asked.title = "Click to edit";
      }
      const total = Math.round(performance.now() - started);
      const ttft = first ? Math.round(first - started) : total;
      const stopped = data.finish_reason === "stopped" ? "stopped · " : "";
      status(stopped + "turn " + data.message_count + " · first text after " + ttft +
        " ms · done in " + total + " ms · " + (data.usage ? data.usage.total_tokens + " tokens" : ""));
    } else if (event.event === "error") {
      throw new Error(data.code + ": " + data.message);
    }
  }
}

$("new").addEventListener("click", () => newChat().catch((e) => status(e.message, true)));
$("end").addEventListener("click", () => endChat().catch((e) => status(e.message, true)));
// The server stops the turn and stores the text so far; the stream then ends with its `done`.
$("stop").addEventListener("click", () =>
  api("POST", "/session/" + sessionId + "/stop").catch((e) => status(e.message, true)));
// One turn at a time from this page: Send, Regenerate and Edit wait for the reply.
function busy(start) {
  $("send").disabled = $("regenerate").disabled = true;
  $("stop").disabled = false;
  status("");
  start().catch((err) => status(err.message, true)).finally(() => {
    $("send").disabled = $("regenerate").disabled = false;
    $("stop").disabled = true;
  });
}
$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text || !sessionId) return;
  $("text").value = "";
  busy(() => send(text));
});
$("regenerate").addEventListener("click", () => busy(regenerate));
$("log").addEventListener("click", (e) => {
  const target = e.target;
  if (target.classList.contains("user") && target.dataset.seq !== undefined && !$("send").disabled) {
    busy(() => edit(target));
  }
});
loadPersonalities().catch((e) => status(e.message, true));
