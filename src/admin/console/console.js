// wxgate console: reads the admin JSON routes with the admin token kept in this tab's
// sessionStorage. Every value from the gateway (and so from WeChat: an account's nick name is
// user input) reaches the page as text (textContent, Text nodes), never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "wxgate.admin.token";
  const PAGE = 50;
  const AUTO_RELOAD_MS = 15000;

  const $ = (id) => document.getElementById(id);
  let offset = 0;
  let query = "";
  let searchTimer = null;
  let autoReload = null;

  class SignedOut extends Error {}

  // ---- elements, built from text only ----

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, String(v));
      else e[k] = v;
    }
    for (const c of children) {
      if (c !== undefined && c !== null) e.append(c);
    }
    return e;
  }

  function toast(text, isError) {
    const t = $("toast");
    t.textContent = text;
    t.className = isError ? "error" : "";
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
  }

  // Each cell named by its column, for the phone layout where a row becomes a card.
  function labelled(row, tableId) {
    const heads = [...document.querySelectorAll(`#${tableId} thead th`)].map((th) => th.textContent);
    [...row.cells].forEach((td, i) => { if (i > 0 && heads[i]) td.dataset.label = heads[i]; });
    return row;
  }

  // ---- time ----

  const pad = (n) => String(n).padStart(2, "0");

  function stamp(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function span(secs) {
    const s = Math.abs(Math.round(secs));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function relative(ms) {
    const secs = (ms - Date.now()) / 1000;
    return secs >= 0 ? `in ${span(secs)}` : `${span(secs)} ago`;
  }

  // A time cell: relative, with the exact time beside; data-ms for scripts and tests.
  function timeCell(ms, cls) {
    if (!ms) return el("td", { class: `${cls || ""} muted`, "data-ms": 0 }, "—");
    const exact = el("small", { class: "muted" }, stamp(ms));
    return el("td", { class: cls, "data-ms": ms, title: new Date(ms).toISOString() }, relative(ms), el("br"), exact);
  }

  // ---- the admin API ----

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(method, path) {
    const t = token();
    if (!t) throw new SignedOut();
    const r = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${t}` },
      cache: "no-store",
      credentials: "omit",
    });
    if (r.status === 401) {
      signOut("The gateway refused this admin token.");
      throw new SignedOut();
    }
    const text = await r.text();
    let body = text;
    try { body = JSON.parse(text); } catch (_) { /* a text answer */ }
    return { status: r.status, ok: r.ok, body };
  }

  function reason(answer) {
    const b = answer.body;
    if (b && typeof b === "object" && typeof b.errmsg === "string") return b.errmsg;
    return `HTTP ${answer.status}`;
  }

  // ---- readiness and the component ----

  async function loadReady() {
    const badge = $("ready");
    try {
      const r = await fetch("/readyz", { cache: "no-store", credentials: "omit" });
      const text = (await r.text()).trim();
      badge.textContent = r.ok ? "ready" : text;
      badge.className = r.ok ? "badge ok" : "badge bad";
    } catch (_) {
      badge.textContent = "gateway unreachable";
      badge.className = "badge bad";
    }
    badge.hidden = false;
  }

  function fact(list, name, ...value) {
    list.append(el("dt", {}, name), el("dd", {}, ...value));
  }

  async function loadComponent() {
    const a = await api("GET", "/admin/component");
    const list = $("component");
    list.replaceChildren();
    if (a.status === 404) {
      fact(list, "Platform", "none configured: this gateway holds owned accounts only");
      return;
    }
    if (!a.ok) {
      fact(list, "Error", reason(a));
      return;
    }
    const c = a.body;
    fact(list, "Component appid", el("code", {}, String(c.component_appid)));
    fact(list, "Ticket age", c.ticket_age_secs == null ? "no ticket received yet" : span(c.ticket_age_secs));
    fact(list, "Token expires", c.token_expires_at_ms ? `${relative(c.token_expires_at_ms)} (${stamp(c.token_expires_at_ms)})` : "no token held");
    fact(list, "Last refresh", c.last_refresh_at_ms ? `${relative(c.last_refresh_at_ms)} (${stamp(c.last_refresh_at_ms)})` : "—");
    if (c.next_refresh_at_ms) fact(list, "Next refresh", `${relative(c.next_refresh_at_ms)} (${stamp(c.next_refresh_at_ms)})`);
    fact(list, "Last error", c.last_error ? el("span", { class: "error" }, String(c.last_error)) : "none");
  }

  // ---- authorizers ----

  // The account's names, flat or under one nested object (the info, however it arrives).
  function info(a, field) {
    if (typeof a[field] === "string") return a[field];
    for (const v of Object.values(a)) {
      if (v && typeof v === "object" && typeof v[field] === "string") return v[field];
    }
    return null;
  }

  function stateClass(state) {
    return `state state-${String(state).replace(/[^a-z_]/g, "")}`;
  }

  function authorizerRow(a) {
    const nick = info(a, "nick_name");
    const user = info(a, "user_name");
    const account = el("td", { class: "account" },
      nick ? el("strong", {}, nick) : null, nick ? el("br") : null,
      el("code", {}, String(a.appid)),
      user ? el("small", { class: "muted" }, ` ${user}`) : null);
    const refresh = el("button", { type: "button", textContent: "Refresh", class: "refresh" });
    refresh.addEventListener("click", () => refreshAuthorizer(a.appid, refresh));
    const kind = info(a, "kind");
    return labelled(el("tr", { "data-appid": a.appid },
      account,
      el("td", { class: kind ? "" : "muted" }, kind ? kind.replace(/_/g, " ") : "—"),
      el("td", {}, el("span", { class: stateClass(a.state) }, String(a.state))),
      timeCell(a.access_expires_at_ms),
      timeCell(a.last_refresh_at_ms, "last-refresh"),
      el("td", { class: a.last_error ? "error" : "muted" }, a.last_error ? String(a.last_error) : "—"),
      el("td", {}, refresh)), "authorizers");
  }

  async function loadAuthorizers() {
    const params = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
    if (query) params.set("q", query);
    const a = await api("GET", `/admin/authorizers?${params}`);
    const body = $("authorizers").tBodies[0];
    if (!a.ok) {
      body.replaceChildren();
      $("auth-empty").textContent = reason(a);
      $("auth-empty").hidden = false;
      return;
    }
    const { total, authorizers } = a.body;
    body.replaceChildren(...authorizers.map(authorizerRow));
    $("auth-total").textContent = `(${total}${query ? " found" : ""})`;
    const empty = $("auth-empty");
    empty.hidden = authorizers.length > 0;
    empty.textContent = query ? "No authorizer matches this search." : "No account has authorized this platform yet.";
    $("page").textContent = total ? `${offset + 1}–${offset + authorizers.length} of ${total}` : "";
    $("prev").disabled = offset === 0;
    $("next").disabled = offset + authorizers.length >= total;
  }

  function refreshAuthorizer(appid, button) {
    return refreshRow(`/admin/authorizers/${encodeURIComponent(appid)}/refresh`, `#authorizers tr[data-appid="${CSS.escape(appid)}"]`, authorizerRow, appid, button);
  }

  // "Refresh now" from a row: the row is drawn again from the answer.
  async function refreshRow(path, selector, toRow, appid, button) {
    button.disabled = true;
    try {
      const a = await api("POST", path);
      if (a.ok) {
        const row = document.querySelector(selector);
        if (row) row.replaceWith(toRow(a.body));
        toast(`Refreshed ${appid}.`);
      } else {
        toast(`Refresh of ${appid} failed: ${reason(a)}`, true);
      }
    } catch (e) {
      if (!(e instanceof SignedOut)) toast(`Refresh failed: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  }


  async function reconcile() {
    const button = $("reconcile");
    button.disabled = true;
    try {
      const a = await api("POST", "/admin/reconcile");
      if (a.status === 404) {
        button.hidden = true;
        toast("This gateway does not reconcile with WeChat's list.", true);
      } else if (a.ok) {
        const r = a.body;
        toast(`WeChat lists ${r.listed}: ${r.imported} imported, ${r.revoked} marked revoked, ${r.unchanged} unchanged.`);
        await loadAuthorizers();
      } else {
        toast(`Reconcile failed: ${reason(a)}`, true);
      }
    } catch (e) {
      if (!(e instanceof SignedOut)) toast(`Reconcile failed: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  // ---- a new authorization ----

  async function createLinks(event) {
    event.preventDefault();
    const error = $("authorize-error");
    error.textContent = "";
    const redirect = $("redirect").value.trim();
    const path = redirect ? `/admin/authorize-url?${new URLSearchParams({ redirect })}` : "/admin/authorize-url";
    const a = await api("GET", path);
    if (!a.ok) {
      error.textContent = reason(a);
      $("links").hidden = true;
      return;
    }
    const { pc_url: pc, mobile_url: mobile, mobile_qr_svg: svg } = a.body;
    const link = $("pc-link");
    // Only web links become a link: never a javascript: one, whatever the answer holds.
    link.href = /^https?:\/\//.test(pc) ? pc : "about:blank";
    $("mobile-link").value = mobile;
    const qr = $("qr");
    qr.hidden = !svg;
    if (svg) qr.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`;
    $("links").hidden = false;
  }

  // ---- the message outbox: shown when the gateway has one ----

  function messageRow(m) {
    // A platform event shows its InfoType; an account's message its MsgType / Event.
    const type = m.info_type ? `platform: ${m.info_type}` : [m.msg_type, m.event].filter(Boolean).join(" / ");
    const cells = [m.id, m.authorizer || "—", m.route, type || "—", m.state, m.attempts, m.last_error || "—"];
    const button = el("button", { type: "button", textContent: "Redeliver" });
    button.addEventListener("click", () => redeliver(m.id, button));
    const row = el("tr", { "data-id": m.id }, ...cells.map((c) => el("td", {}, c == null ? "—" : String(c))), el("td", {}, button));
    return labelled(row, "outbox");
  }

  async function loadOutbox() {
    const state = $("outbox-state").value;
    const a = await api("GET", state ? `/admin/messages?state=${encodeURIComponent(state)}` : "/admin/messages");
    const panel = $("outbox-panel");
    if (a.status === 404 || !a.ok) {
      panel.hidden = true;
      return;
    }
    const b = a.body;
    const messages = Array.isArray(b) ? b : (b.messages || b.items || []);
    $("outbox").tBodies[0].replaceChildren(...messages.map(messageRow));
    $("outbox-total").textContent = `(${typeof b.total === "number" ? b.total : messages.length})`;
    $("outbox-empty").hidden = messages.length > 0;
    panel.hidden = false;
  }

  async function redeliver(id, button) {
    button.disabled = true;
    try {
      const a = await api("POST", `/admin/messages/${encodeURIComponent(id)}/redeliver`);
      toast(a.ok ? `Message ${id} queued for delivery.` : `Redelivery failed: ${reason(a)}`, !a.ok);
      await loadOutbox();
    } catch (e) {
      if (!(e instanceof SignedOut)) toast(`Redelivery failed: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  // ---- owned accounts ([[accounts]]): their tokens, kept with their AppSecret ----

  function ownedRow(a) {
    const refresh = el("button", { type: "button", textContent: "Refresh", class: "refresh" });
    refresh.addEventListener("click", () => refreshOwned(a.appid, refresh));
    return labelled(el("tr", { "data-owned": a.appid },
      el("td", { class: "account" }, el("code", {}, String(a.appid))),
      el("td", {}, el("span", { class: stateClass(a.state) }, String(a.state))),
      timeCell(a.access_expires_at_ms),
      timeCell(a.last_refresh_at_ms, "last-refresh"),
      el("td", { class: a.last_error ? "error" : "muted" }, a.last_error ? String(a.last_error) : "—"),
      el("td", {}, refresh)), "owned");
  }

  async function loadOwned() {
    const a = await api("GET", "/admin/accounts");
    const accounts = a.ok ? a.body.accounts : [];
    $("owned").tBodies[0].replaceChildren(...accounts.map(ownedRow));
    $("owned-total").textContent = `(${accounts.length})`;
    $("owned-panel").hidden = accounts.length === 0;
  }

  function refreshOwned(appid, button) {
    return refreshRow(`/admin/accounts/${encodeURIComponent(appid)}/refresh`, `tr[data-owned="${CSS.escape(appid)}"]`, ownedRow, appid, button);
  }


  // ---- release jobs: each job's accounts by state, its controls, and an account list ----

  const OPEN = ["running", "paused"];

  function countsText(counts) {
    return Object.entries(counts || {}).filter(([, n]) => n > 0).map(([s, n]) => `${s.replace(/_/g, " ")} ${n}`).join(", ") || "—";
  }

  function jobButton(job, action, label) {
    const b = el("button", { type: "button", textContent: label, class: `job-${action}` });
    b.addEventListener("click", () => jobAction(job.id, action, b));
    return b;
  }

  function jobRow(job) {
    const controls = [];
    if (job.state === "running") controls.push(jobButton(job, "pause", "Pause"));
    if (job.state === "paused") controls.push(jobButton(job, "resume", "Resume"));
    if (OPEN.includes(job.state) && job.release === "manual") controls.push(jobButton(job, "release", "Release approved"));
    if (OPEN.includes(job.state)) controls.push(jobButton(job, "cancel", "Cancel"));
    const details = el("button", { type: "button", textContent: "Accounts", class: "job-accounts" });
    details.addEventListener("click", () => loadJob(job.id));
    controls.push(details);
    return labelled(el("tr", { "data-job": job.id },
      el("td", {}, el("code", {}, String(job.id))),
      el("td", {}, el("span", { class: stateClass(job.state) }, String(job.state))),
      el("td", {}, `${job.template_id} · ${job.user_version}`),
      el("td", { class: "counts" }, countsText(job.counts)),
      timeCell(job.created_at_ms),
      el("td", {}, ...controls)), "releases");
  }

  async function loadReleases() {
    const a = await api("GET", "/admin/releases");
    const panel = $("releases-panel");
    if (!a.ok) {
      panel.hidden = true;
      return;
    }
    const jobs = a.body.jobs;
    $("releases").tBodies[0].replaceChildren(...jobs.map(jobRow));
    $("releases-total").textContent = `(${jobs.length})`;
    $("releases-empty").hidden = jobs.length > 0;
    panel.hidden = false;
  }

  async function loadJob(id) {
    const a = await api("GET", `/admin/releases/${encodeURIComponent(id)}`);
    if (!a.ok) return toast(`Job ${id}: ${reason(a)}`, true);
    const rows = a.body.accounts.map((acc) => labelled(el("tr", { "data-appid": acc.appid },
      el("td", {}, el("code", {}, String(acc.appid))),
      el("td", {}, el("span", { class: stateClass(acc.state) }, String(acc.state))),
      el("td", {}, acc.auditid == null ? "—" : String(acc.auditid)),
      el("td", { class: acc.errmsg ? "error" : "" }, acc.reason || acc.errmsg || "—"),
      timeCell(acc.updated_at_ms)), "release-accounts"));
    $("release-accounts").tBodies[0].replaceChildren(...rows);
    $("release-id").textContent = id;
    $("release-detail").hidden = false;
  }

  async function jobAction(id, action, button) {
    button.disabled = true;
    try {
      const a = await api("POST", `/admin/releases/${encodeURIComponent(id)}/${action}`);
      toast(a.ok ? `Job ${id}: ${a.body.state}.` : `${action} failed: ${reason(a)}`, !a.ok);
      await loadReleases();
    } catch (e) {
      if (!(e instanceof SignedOut)) toast(`${action} failed: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  // ---- the quota guard: each limited client's use today, and the pairs held after 45009 ----

  function quotaRows(c) {
    const limits = [c.name, c.rate_per_second ?? "—", c.daily_share ?? "—"];
    const today = c.today.length ? c.today : [{ account: "—", api: "—", used: "—", allowed: null }];
    return today.map((p) => {
      const cells = [...limits, p.account, p.api, p.used, p.allowed ?? "—"];
      return labelled(el("tr", { "data-client": c.name }, ...cells.map((v) => el("td", {}, String(v)))), "quota-use");
    });
  }

  async function loadQuota() {
    const a = await api("GET", "/admin/quota");
    const panel = $("quota-panel");
    if (!a.ok) {
      panel.hidden = true;
      return;
    }
    const q = a.body;
    $("quota-state").textContent = q.guard ? "(45009 guard on)" : "(45009 guard off)";
    $("quota-use").tBodies[0].replaceChildren(...q.clients.flatMap(quotaRows));
    const held = q.held.map((h) =>
      labelled(el("tr", {}, ...[h.account, h.api, h.until].map((v) => el("td", {}, String(v)))), "quota-held"));
    $("quota-held").tBodies[0].replaceChildren(...held);
    $("quota-held").hidden = held.length === 0;
    $("quota-empty").hidden = q.clients.length > 0 || held.length > 0;
    panel.hidden = false;
  }

  // ---- signing in and out ----

  async function loadAll() {
    try {
      await Promise.all([loadReady(), loadComponent(), loadOwned(), loadAuthorizers(), loadOutbox(), loadReleases(), loadQuota()]);
    } catch (e) {
      if (!(e instanceof SignedOut)) toast(`Could not reach the gateway: ${e.message}`, true);
    }
  }

  function show(signedIn) {
    $("signin").hidden = signedIn;
    $("console").hidden = !signedIn;
    $("session").hidden = !signedIn;
    $("ready").hidden = !signedIn;
    clearInterval(autoReload);
    autoReload = null;
    if (signedIn) {
      autoReload = setInterval(() => { if (!document.hidden) loadAll(); }, AUTO_RELOAD_MS);
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    // Nothing read with the token stays on the page.
    $("component").replaceChildren();
    $("authorizers").tBodies[0].replaceChildren();
    $("outbox").tBodies[0].replaceChildren();
    $("links").hidden = true;
    $("mobile-link").value = "";
    $("qr").removeAttribute("src");
    $("toast").textContent = "";
    $("toast").hidden = true;
    $("auth-total").textContent = "";
    $("page").textContent = "";
    $("signin-error").textContent = message || "";
    show(false);
    $("token").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("token");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    try {
      await api("GET", "/admin/component");
    } catch (e) {
      if (!(e instanceof SignedOut)) signOut(`Could not reach the gateway: ${e.message}`);
      return;
    }
    $("signin-error").textContent = "";
    show(true);
    await loadAll();
  }

  function start() {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", () => signOut(""));
    $("reload").addEventListener("click", loadAll);
    $("reconcile").addEventListener("click", reconcile);
    $("authorize-form").addEventListener("submit", (e) => createLinks(e).catch(() => {}));
    $("outbox-state").addEventListener("change", () => loadOutbox().catch(() => {}));
    $("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadAuthorizers().catch(() => {}); });
    $("next").addEventListener("click", () => { offset += PAGE; loadAuthorizers().catch(() => {}); });
    $("search").addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        query = $("search").value.trim();
        offset = 0;
        loadAuthorizers().catch(() => {});
      }, 200);
    });
    if (token()) {
      show(true);
      loadAll();
    } else {
      show(false);
    }
  }

  start();
})();
