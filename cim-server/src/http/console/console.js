// The cim-rs console. It speaks only the public HTTP API of the server that serves it, with
// the API key the operator typed in, kept in this tab's sessionStorage and sent in the
// X-API-Key header (never in a URL). Everything a client sent (accounts, device names) is put
// on the page as text, never as markup.
"use strict";

(() => {
  const KEY = "cim.console.apiKey";
  const PAGE = 20;
  const REFRESH_MS = 2000;
  const HISTORY = 60;

  const $ = (id) => document.getElementById(id);
  const state = {
    view: "overview",
    offset: 0,
    uid: "",
    channel: "",
    timer: null,
    last: null,
    history: [],
    storedUid: "",
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One API call: the key in its header, JSON both ways; an error answer becomes an ApiError
  // with the API's reason. A 401 signs out.
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY);
    if (key) headers["X-API-Key"] = key;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "the server cannot be reached");
    }
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (!res.ok) {
      const reason = data && data.error ? data.error : `${res.status} ${res.statusText}`;
      if (res.status === 401) signOut(reason);
      throw new ApiError(res.status, reason);
    }
    return data;
  }

  const text = (el, value) => {
    el.textContent = value === undefined || value === null ? "" : String(value);
  };
  const cell = (value, cls) => {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    text(td, value);
    return td;
  };
  const number = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–");
  const rate = (n) => (Number.isFinite(n) ? (n < 10 ? n.toFixed(1) : number(n)) : "–");
  const pad = (n) => String(n).padStart(2, "0");
  const when = (ms) => {
    if (!ms) return "";
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };
  const account = (uid) => encodeURIComponent(uid);

  // ---- signing in and out -------------------------------------------------------------

  function showLogin(reason) {
    $("app").hidden = true;
    $("login").hidden = false;
    text($("login-error"), reason || "");
    $("login-key").value = "";
    $("login-key").focus();
  }

  function signOut(reason) {
    sessionStorage.removeItem(KEY);
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
    state.last = null;
    state.history = [];
    showLogin(reason);
  }

  // Checks the stored key with a call that needs it, then opens the console.
  async function enter() {
    try {
      await api("GET", "/api/v1/sessions?limit=1");
    } catch (e) {
      if (e.status !== 401) signOut(e.message);
      return;
    }
    $("login").hidden = true;
    $("app").hidden = false;
    show(state.view);
    refreshStats();
    state.timer = setInterval(refreshStats, REFRESH_MS);
  }

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("login-key").value);
    $("login-key").value = "";
    enter();
  });
  $("sign-out").addEventListener("click", () => signOut(""));

  // ---- views --------------------------------------------------------------------------

  function show(view) {
    state.view = view;
    for (const section of document.querySelectorAll(".view")) {
      section.hidden = section.id !== `view-${view}`;
    }
    for (const tab of document.querySelectorAll(".tabs button")) {
      if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    if (view === "sessions") loadSessions();
  }

  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.addEventListener("click", () => show(tab.dataset.view));
  }

  // ---- live figures -------------------------------------------------------------------

  async function refreshStats() {
    let s;
    try {
      s = await api("GET", "/api/v1/stats");
    } catch (e) {
      text($("live-connections"), "–");
      return;
    }
    text($("node"), s.node);
    text($("live-connections"), number(s.connections));
    text($("fig-connections"), number(s.connections));
    text($("fig-sessions"), number(s.sessions));
    text($("total-sent"), number(s.messages.sent));
    text($("total-delivered"), number(s.messages.delivered));
    text($("total-stored"), number(s.messages.stored));
    const last = state.last;
    state.last = s;
    if (!last || s.time_ms <= last.time_ms) return;
    const secs = (s.time_ms - last.time_ms) / 1000;
    const into = Math.max(0, s.messages.sent - last.messages.sent) / secs;
    const out = Math.max(0, s.messages.delivered - last.messages.delivered) / secs;
    for (const [id, v] of [["live-in", into], ["fig-in", into], ["live-out", out], ["fig-out", out]]) {
      text($(id), rate(v));
    }
    state.history.push([into, out]);
    if (state.history.length > HISTORY) state.history.shift();
    drawChart();
  }

  function drawChart() {
    const h = state.history;
    // A quarter of headroom above the highest rate.
    const max = Math.max(1, ...h.map(([i, o]) => Math.max(i, o))) * 1.25;
    const step = 600 / (HISTORY - 1);
    const x0 = 600 - step * (h.length - 1);
    const points = (k) =>
      h.map((v, n) => `${(x0 + n * step).toFixed(1)},${(158 - (v[k] / max) * 150).toFixed(1)}`).join(" ");
    $("chart-in").setAttribute("points", points(0));
    $("chart-out").setAttribute("points", points(1));
    text($("chart-max"), `scale: ${rate(max)} / s`);
  }

  // ---- sessions -----------------------------------------------------------------------

  async function loadSessions() {
    const q = new URLSearchParams({ offset: String(state.offset), limit: String(PAGE) });
    if (state.uid) q.set("uid", state.uid);
    if (state.channel) q.set("channel", state.channel);
    let page;
    try {
      page = await api("GET", `/api/v1/sessions?${q}`);
    } catch (e) {
      text($("sessions-status"), e.message);
      return;
    }
    if (page.total > 0 && state.offset >= page.total) {
      state.offset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE);
      return loadSessions();
    }
    const body = $("sessions-body");
    body.replaceChildren();
    for (const s of page.sessions) {
      const tr = document.createElement("tr");
      tr.dataset.uid = s.uid;
      tr.append(
        cell(s.uid, "uid"),
        cell(s.channel),
        cell(s.deviceName ? `${s.deviceName} (${s.deviceId})` : s.deviceId),
        cell(s.node),
        cell(s.protocol),
        cell(s.remoteAddr),
        cell(when(s.bindTime)),
        cell(s.clientAck ? "yes" : "no"),
      );
      const td = document.createElement("td");
      const kick = document.createElement("button");
      kick.type = "button";
      kick.className = "kick";
      kick.textContent = "Kick";
      kick.title = `Send every connection of ${s.uid} the kick notice (999) and close them`;
      kick.addEventListener("click", () => kickAccount(s.uid));
      td.append(kick);
      tr.append(td);
      body.append(tr);
    }
    if (page.sessions.length === 0) {
      const tr = document.createElement("tr");
      const td = cell(state.uid || state.channel ? "No session matches." : "Nobody is online.", "empty");
      td.colSpan = 9;
      tr.append(td);
      body.append(tr);
    }
    const first = page.total === 0 ? 0 : state.offset + 1;
    const lastShown = state.offset + page.sessions.length;
    text($("sessions-total"), `${number(first)}–${number(lastShown)} of ${number(page.total)}`);
    $("sessions-prev").disabled = state.offset === 0;
    $("sessions-next").disabled = lastShown >= page.total;
  }

  async function kickAccount(uid) {
    try {
      const r = await api("DELETE", `/api/v1/accounts/${account(uid)}/sessions`);
      text($("sessions-status"), `Kicked ${r.kicked} connection(s) of ${uid}.`);
    } catch (e) {
      text($("sessions-status"), `Kicking ${uid} failed: ${e.message}`);
    }
    loadSessions();
  }

  $("sessions-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.uid = $("sessions-uid").value.trim();
    state.channel = $("sessions-channel").value.trim();
    state.offset = 0;
    text($("sessions-status"), "");
    loadSessions();
  });
  $("sessions-refresh").addEventListener("click", () => loadSessions());
  $("sessions-prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE);
    loadSessions();
  });
  $("sessions-next").addEventListener("click", () => {
    state.offset += PAGE;
    loadSessions();
  });

  // ---- send ---------------------------------------------------------------------------

  function target() {
    const checked = document.querySelector('input[name="send-to"]:checked');
    return checked ? checked.value : "account";
  }

  function showTarget() {
    const t = target();
    for (const el of document.querySelectorAll("#send-form [data-for]")) {
      el.hidden = el.dataset.for !== t;
    }
  }
  for (const radio of document.querySelectorAll('input[name="send-to"]')) {
    radio.addEventListener("change", showTarget);
  }

  $("send-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    text($("send-error"), "");
    const message = {};
    for (const field of ["sender", "action", "title", "content", "format", "extra"]) {
      const v = $(`send-${field}`).value;
      if (v !== "") message[field] = v;
    }
    let path;
    switch (target()) {
      case "tag": {
        const tag = $("send-tag").value.trim();
        if (!tag) return text($("send-error"), "A tag is required.");
        path = `/api/v1/tags/${encodeURIComponent(tag)}/messages`;
        break;
      }
      case "everyone":
        path = "/api/v1/broadcast";
        break;
      default:
        message.receiver = $("send-receiver").value.trim();
        if (!message.receiver) return text($("send-error"), "An account is required.");
        path = "/api/v1/messages";
    }
    $("send-submit").disabled = true;
    try {
      const sent = await api("POST", path, message);
      text($("send-result-id"), sent.id);
      text($("send-result-delivered"), sent.delivered);
      text($("send-result-stored"), sent.stored ? "yes" : "no");
      $("send-result").hidden = false;
    } catch (err) {
      $("send-result").hidden = true;
      text($("send-error"), err.message);
    } finally {
      $("send-submit").disabled = false;
    }
  });

  // ---- stored messages ----------------------------------------------------------------

  $("stored-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const uid = $("stored-uid").value.trim();
    text($("stored-status"), "");
    $("stored-delete").disabled = true;
    try {
      const r = await api("GET", `/api/v1/accounts/${account(uid)}/pending`);
      state.storedUid = uid;
      text($("stored-who"), uid);
      text($("stored-count"), number(r.pending));
      $("stored-delete").disabled = r.pending === 0;
    } catch (err) {
      text($("stored-count"), "–");
      text($("stored-status"), err.message);
    }
  });

  $("stored-delete").addEventListener("click", async () => {
    const uid = state.storedUid;
    if (!uid) return;
    $("stored-delete").disabled = true;
    try {
      const r = await api("DELETE", `/api/v1/accounts/${account(uid)}/pending`);
      text($("stored-count"), "0");
      text($("stored-status"), `Deleted ${r.deleted} stored message(s) of ${uid}.`);
    } catch (err) {
      text($("stored-status"), err.message);
    }
  });

  // ---- start --------------------------------------------------------------------------

  showTarget();
  if (sessionStorage.getItem(KEY) === null) showLogin("");
  else enter();
})();
