// Chatify studio: edit personalities with live validation, try the unsaved draft in a preview
// chat, compare it with the published version, publish, roll back, and edit the universal rules.
"use strict";
const API = "/api/v1";
const $ = (id) => document.getElementById(id);

// Every field the form edits, and how its input reads.
const FIELDS = {
  name: "text", title: "text", description: "text", category: "text",
  personalityPrompt: "text", welcomeMessage: "text", model: "text",
  temperature: "number", maxTokens: "number", presencePenalty: "number",
  frequencyPenalty: "number", contextMessages: "number",
  tags: "tags", isPublic: "bool", isDefault: "bool", variables: "json",
};
const isField = (name) => Object.hasOwn(FIELDS, name);

// The key lives only in this variable, never in storage: closing the tab forgets it.
let key = "";
let published = null;  // the stored personality being edited; null while creating one
let etag = null;       // its ETag, sent as If-Match so another author's edit is never overwritten
let rulesEtag = null;
let history = [];      // the preview conversation; the server keeps none, so it is resent each turn
let validateTimer = null;
let validateSeq = 0;   // only the newest validation's answer is shown

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super((error.code || "http_" + status) + ": " + (error.message || "request failed"));
    this.status = status;
    this.code = error.code;
    this.detail = body && body.detail;
  }
}

async function request(method, path, { body, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (key) init.headers.Authorization = "Bearer " + key;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return response;
}

async function api(method, path, options) {
  const response = await request(method, path, options);
  const data = response.status === 204 ? null : await response.json();
  return { data, etag: response.headers.get("ETag") };
}

const itemPath = (id, rest = "") => "/personalities/" + encodeURIComponent(id) + rest;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function button(label, onClick) {
  const node = el("button", label);
  node.type = "button";
  node.addEventListener("click", () => onClick().catch(fail));
  return node;
}

function status(text, isError) {
  $("status").textContent = text || "";
  $("status").className = isError ? "error" : "";
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "never");

// One place turns an API error into words for the author.
function fail(error) {
  if (error.status === 401 || error.status === 403) {
    status("This needs an admin key (or a Firebase ID token with the admin claim): enter it in " +
      "Key, top right, and press Enter. (" + error.message + ")", true);
  } else if (error.status === 412) {
    status("Someone else changed this since you loaded it. Reload it and apply your edits " +
      "again. (" + error.message + ")", true);
  } else if (error.status === 422 && Array.isArray(error.detail)) {
    showProblems(error.detail);
    status("The draft has problems: see the list under the form.", true);
  } else {
    status(error.message, true);
  }
}

// An empty input means "not set", so the field is left out and the server's default applies.
function readInput(name) {
  const input = $("f-" + name), kind = FIELDS[name];
  if (kind === "bool") return input.checked;
  const text = input.value.trim();
  if (text === "") return undefined;
  if (kind === "number") return Number(text);
  if (kind === "tags") return text.split(",").map((tag) => tag.trim()).filter(Boolean);
  if (kind === "json") return JSON.parse(text);
  return input.value;
}

// The form as a personality document, and the problems the browser finds alone (bad JSON).
function readDraft() {
  const draft = {}, local = [];
  for (const name of Object.keys(FIELDS)) {
    try {
      const value = readInput(name);
      if (value !== undefined) draft[name] = value;
    } catch (error) {
      local.push({ type: "json_invalid", loc: [name], msg: "Not valid JSON: " + error.message });
    }
  }
  return { draft, local };
}

function fillForm(doc) {
  for (const [name, kind] of Object.entries(FIELDS)) {
    const input = $("f-" + name), value = doc[name];
    if (kind === "bool") input.checked = name === "isPublic" ? value !== false : value === true;
    else if (kind === "tags") input.value = (value || []).join(", ");
    else if (kind === "json") input.value = isEmpty(value) ? "" : JSON.stringify(value, null, 2);
    else input.value = value ?? "";
  }
}

// ["body", "variables", "user_name", "maxLength"] → "variables.user_name.maxLength". A preview
// nests the draft under "template" in its body, so its problems carry that step too.
function problemPath(problem) {
  let loc = (problem.loc || []).map(String);
  if (loc[0] === "body") loc = loc.slice(1);
  if (loc[0] === "template" && loc.length > 1) loc = loc.slice(1);
  return loc.join(".");
}

function showProblems(problems) {
  for (const name of Object.keys(FIELDS)) {
    $("p-" + name).textContent = "";
    $("f-" + name).classList.remove("invalid");
  }
  $("problems").replaceChildren(...problems.map((problem) => {
    const path = problemPath(problem), field = path.split(".")[0];
    if (isField(field)) {
      const slot = $("p-" + field);
      const line = (path === field ? "" : path + ": ") + problem.msg;
      slot.textContent = slot.textContent ? slot.textContent + "\n" + line : line;
      $("f-" + field).classList.add("invalid");
    }
    return el("li", (path || "personality") + ": " + problem.msg);
  }));
}

// Validation runs on the server (the one schema), debounced so typing does not flood it.
function scheduleValidate() {
  clearTimeout(validateTimer);
  validateTimer = setTimeout(() => validate().catch(fail), 300);
}

async function validate() {
  const seq = ++validateSeq;
  const { draft, local } = readDraft();
  let problems;
  try {
    const { data } = await api("POST", "/personalities/validate", { body: draft });
    problems = data.problems || [];
  } catch (error) {
    if (error.status !== 422 || !Array.isArray(error.detail)) throw error;
    problems = error.detail;
  }
  if (seq === validateSeq) showProblems([...local, ...problems]);
}

function isEmpty(value) {
  if (value === undefined || value === null || value === "") return true;
  if (Array.isArray(value)) return value.length === 0;
  return typeof value === "object" && Object.keys(value).length === 0;
}

const same = (a, b) => (isEmpty(a) && isEmpty(b)) || JSON.stringify(a) === JSON.stringify(b);
const shown = (value) => (isEmpty(value) ? "(not set)" : JSON.stringify(value));
const isLong = (value) => typeof value === "string" && (value.includes("\n") || value.length > 60);

// A line diff over the longest common subsequence; prompts are small, so O(n·m) is fine.
function lineDiff(before, after) {
  const a = before ? before.split("\n") : [], b = after ? after.split("\n") : [];
  const common = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      common[i][j] = a[i] === b[j] ? common[i + 1][j + 1] + 1
        : Math.max(common[i + 1][j], common[i][j + 1]);
    }
  }
  const lines = [];
  let i = 0, j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) { lines.push("  " + a[i]); i++; j++; }
    else if (i < a.length && (j === b.length || common[i + 1][j] >= common[i][j + 1])) lines.push("- " + a[i++]);
    else lines.push("+ " + b[j++]);
  }
  return lines;
}

function showDiff() {
  const { draft, local } = readDraft();
  const unreadable = new Set(local.map((problem) => problem.loc[0]));
  const before = published || {};
  const lines = [];
  for (const name of Object.keys(FIELDS)) {
    // The name of a stored personality cannot change: it is its id.
    if (unreadable.has(name) || (published && name === "name")) continue;
    const old = before[name], now = draft[name];
    if (same(old, now)) continue;
    if (isLong(old) || isLong(now)) {
      lines.push(el("div", name + ":"));
      for (const line of lineDiff(old || "", now || "")) {
        lines.push(el("div", line, { "+": "add", "-": "del" }[line[0]]));
      }
    } else {
      lines.push(el("div", name + ": " + shown(old) + " → " + shown(now)));
    }
  }
  $("diff").replaceChildren(...(lines.length ? lines : [el("div", "No changes")]));
}

function listRow(item) {
  const row = el("li");
  row.dataset.id = item.id;
  row.setAttribute("aria-current", String(Boolean(published && published.id === item.id)));
  const head = el("div");
  head.append(el("span", item.id, "row-id"));
  if (item.problems && item.problems.length) head.append(el("span", "problems", "badge problems"));
  if (item.isDefault) head.append(el("span", "default", "badge"));
  if (item.isPublic === false) head.append(el("span", "hidden", "badge"));
  row.append(head, el("div", item.title || item.name || ""),
    el("div", (item.usageCount || 0) + " sessions", "row-meta"));
  row.addEventListener("click", () => {
    // Another personality starts a new conversation; reloading the same one keeps it.
    if (!published || published.id !== item.id) resetPreview();
    loadItem(item.id).catch(fail);
  });
  return row;
}

async function loadList() {
  const { data } = await api("GET", "/personalities");
  const items = Array.isArray(data) ? data : data.personalities;
  $("list").replaceChildren(...items.map(listRow));
}

function edit(doc, tag) {
  clearTimeout(validateTimer);
  validateSeq++;  // a validation still in flight was about the form being replaced
  published = doc;
  etag = tag;
  fillForm(doc || { isPublic: true });
  $("f-name").disabled = Boolean(doc);
  $("delete").disabled = !doc;
  $("form-title").textContent = doc ? "Editing " + doc.id + " (version " + (doc.version ?? "?") + ")"
    : "New personality";
  for (const row of $("list").children) {
    row.setAttribute("aria-current", String(Boolean(doc && row.dataset.id === doc.id)));
  }
  showProblems(doc && doc.problems ? doc.problems : []);
  showDiff();
}

function startNew() {
  resetPreview();
  edit(null, null);
  $("versions").replaceChildren();
  $("version-view").hidden = true;
  $("stats").textContent = "Not published yet.";
  $("f-name").focus();
}

async function loadItem(id) {
  const { data, etag: tag } = await api("GET", itemPath(id));
  edit(data, tag);
  $("version-view").hidden = true;
  await Promise.all([loadVersions(), loadStats()]);
}

// PUT is a partial update: a field left out keeps its stored value and null removes it, so an
// emptied input is sent as null. The name is left out: it is the id and cannot change.
function changesOf(draft) {
  const changes = {};
  for (const name of Object.keys(FIELDS)) {
    if (name !== "name" && (name in draft || !isEmpty(published[name]))) {
      changes[name] = name in draft ? draft[name] : null;
    }
  }
  return changes;
}

async function publish() {
  const { draft, local } = readDraft();
  if (local.length) {
    showProblems(local);
    return status("Fix the problems listed under the form first.", true);
  }
  let saved;
  if (published) {
    const headers = etag ? { "If-Match": etag } : {};
    saved = await api("PUT", itemPath(published.id), { body: changesOf(draft), headers });
  } else {
    saved = await api("POST", "/personalities", { body: draft });
  }
  await loadItem(saved.data.id);
  await loadList();
  status("Published " + saved.data.id + " (version " + (saved.data.version ?? "?") + ").");
}

async function remove() {
  if (!published || !confirm("Delete " + published.id + "? Its version history goes too.")) return;
  try {
    await api("DELETE", itemPath(published.id));
  } catch (error) {
    if (error.code !== "default_template") throw error;
    return status("This is the default personality: make another one the default first.", true);
  }
  const id = published.id;
  startNew();
  await loadList();
  status("Deleted " + id + ".");
}

function versionRow(entry) {
  const row = el("li");
  row.dataset.version = entry.version;
  row.append(el("span", "v" + entry.version + " · " + entry.source + " · " + when(entry.savedAt) +
    (entry.current ? " · current" : "")));
  row.append(button("View", () => viewVersion(entry.version)));
  if (!entry.current) row.append(button("Roll back", () => rollback(entry.version)));
  return row;
}

async function loadVersions() {
  const { data } = await api("GET", itemPath(published.id, "/versions"));
  $("versions").replaceChildren(...data.versions.map(versionRow));
}

async function viewVersion(version) {
  const { data } = await api("GET", itemPath(published.id, "/versions/" + version));
  $("version-view").textContent = "Version " + data.version + " (" + data.source + ", " +
    when(data.savedAt) + ")\n" + JSON.stringify(data.document, null, 2);
  $("version-view").hidden = false;
}

// A rollback stores the old document as a new version, so it can itself be undone.
async function rollback(version) {
  const { data } = await api("POST", itemPath(published.id, "/rollback"), { body: { version } });
  await loadItem(data.id);
  await loadList();
  status("Rolled " + data.id + " back to version " + version + " (now version " + data.version + ").");
}

async function loadStats() {
  const { data } = await api("GET", itemPath(published.id, "/stats"));
  const round = (value) => (value === null || value === undefined ? "–" : Math.round(value * 10) / 10);
  $("stats").textContent = [
    "sessions: " + data.sessions,
    "turns: " + data.turns + " (" + data.failedTurns + " failed)",
    "average turns per session: " + round(data.averageTurnsPerSession),
    "average reply tokens: " + round(data.averageReplyTokens),
    "cost: $" + ((data.costMicros || 0) / 1e6).toFixed(6) + " (turns of priced models)",
    "last used: " + when(data.lastUsed),
    ...Object.entries(data.byModel || {}).map(
      ([name, share]) =>
        "turns by " + name + ": " + share.turns + " (average reply tokens: " + round(share.averageReplyTokens) + ")",
    ),
  ].join("\n");
}

function bubble(role, text) {
  const node = el("div", text, "msg " + role);
  $("preview-log").appendChild(node);
  $("preview-log").scrollTop = $("preview-log").scrollHeight;
  return node;
}

function resetPreview() {
  history = [];
  $("preview-log").replaceChildren();
}

async function sendPreview(text) {
  const { draft, local } = readDraft();
  if (local.length) {
    showProblems(local);
    return status("Fix the problems listed under the form first.", true);
  }
  bubble("user", text);
  const response = await request("POST", "/personalities/preview",
    { body: { template: draft, history, message: text } });
  const reply = bubble("assistant", "");
  for await (const event of readEvents(response)) {
    const data = JSON.parse(event.data);
    if (event.event === "delta") {
      reply.textContent += data.content;
      $("preview-log").scrollTop = $("preview-log").scrollHeight;
    } else if (event.event === "done") {
      reply.textContent = data.response ?? reply.textContent;
      // Only a finished exchange joins the history, so a failed turn can simply be retried.
      history = [...history, { role: "user", content: text }];
      if (reply.textContent) history.push({ role: "assistant", content: reply.textContent });
      status("Preview reply from " + (data.model || "the model") +
        (data.usage ? " · " + data.usage.total_tokens + " tokens" : "") + " (not stored).");
    } else if (event.event === "error") {
      if (!reply.textContent) reply.remove();
      throw new Error(data.code + ": " + data.message);
    }
  }
}

function fillRules(data, tag) {
  rulesEtag = tag;
  $("rules").value = data.rules || "";
  $("rules-version").value = data.version || "";
  $("rules-enabled").checked = data.enabled !== false;
  $("rules-meta").textContent = "revision " + (data.revision ?? "?") + " · updated " +
    when(data.updatedAt);
}

async function loadRules() {
  const { data, etag: tag } = await api("GET", "/settings/universal-rules");
  fillRules(data, tag);
}

async function saveRules() {
  const body = { rules: $("rules").value, version: $("rules-version").value.trim() || null,
    enabled: $("rules-enabled").checked };
  const headers = rulesEtag ? { "If-Match": rulesEtag } : {};
  const { data, etag: tag } = await api("PUT", "/settings/universal-rules", { body, headers });
  fillRules(data, tag);
  status("Universal rules saved (revision " + (data.revision ?? "?") + ").");
}

function showTab(name) {
  const rules = name === "rules";
  $("editor").hidden = rules;
  $("rules-panel").hidden = !rules;
  $("tab-personalities").setAttribute("aria-selected", String(!rules));
  $("tab-rules").setAttribute("aria-selected", String(rules));
  if (rules) loadRules().catch(fail);
}

// A new key reloads whatever the page shows, since the last attempt may have been refused.
function useKey() {
  const value = $("key").value.trim();
  if (value === key) return;
  key = value;
  status("");
  const loads = [loadList()];
  // The form is left alone: it may hold edits not published yet.
  if (published) loads.push(loadVersions(), loadStats());
  if (!$("rules-panel").hidden) loads.push(loadRules());
  Promise.all(loads).catch(fail);
}

$("key").addEventListener("change", useKey);
$("key").addEventListener("keydown", (event) => { if (event.key === "Enter") useKey(); });
$("tab-personalities").addEventListener("click", () => showTab("personalities"));
$("tab-rules").addEventListener("click", () => showTab("rules"));
$("new").addEventListener("click", startNew);
$("form").addEventListener("submit", (event) => event.preventDefault());
$("form").addEventListener("input", () => { showDiff(); scheduleValidate(); });
$("publish").addEventListener("click", () => publish().catch(fail));
$("delete").addEventListener("click", () => remove().catch(fail));
$("rules-save").addEventListener("click", () => saveRules().catch(fail));
$("preview-reset").addEventListener("click", () => { resetPreview(); status("Preview reset."); });
$("preview-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("preview-text").value.trim();
  if (!text) return;
  $("preview-text").value = "";
  $("preview-send").disabled = true;
  sendPreview(text).catch(fail).finally(() => { $("preview-send").disabled = false; });
});
startNew();
loadList().catch(fail);
