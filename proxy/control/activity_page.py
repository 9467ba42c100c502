"""The live activity page (``/activity``): recent decisions streaming in, filters, per-rule
counters, active sessions with a kill button, and a link from each decision to its
evidence record.

The page is a static shell rendered on the server; ``/activity.js`` polls
``/api/activity?since=SEQ&...`` every second and adds rows with ``textContent`` only
(values are never parsed as HTML). Kill posts to the session API with the login's CSRF
token in ``X-CSRF-Token`` (the API also checks the Origin). Token-protected like the
approvals console: without a login the page is the login form.
"""

from __future__ import annotations

from .console import _layout, e

VERDICTS = ("allow", "modify", "narrow", "defer", "pause", "escalate", "deny", "rollback")


def activity_page(approver: str, csrf: str, now: float, poll_ms: int = 500) -> str:
    options = "".join(f'<option value="{v}">{v}</option>' for v in VERDICTS)
    return _layout("fiveplane activity", f"""
<header>
  <h1>fiveplane activity</h1>
  <nav><a href="/" id="nav-approvals">Approvals</a></nav>
  <span class="who">signed in as <strong id="approver">{e(approver)}</strong></span>
</header>
<main class="activity" id="activity" data-csrf="{e(csrf)}" data-poll="{poll_ms}">
  <form id="filters" class="filters" autocomplete="off">
    <label>Verdict <select id="f-verdict" name="verdict"><option value="">any</option>
      {options}</select></label>
    <label>Rule <input type="text" id="f-rule" name="rule" maxlength="200"></label>
    <label>Principal <input type="text" id="f-principal" name="principal" maxlength="200">
    </label>
    <label>Session <input type="text" id="f-session" name="session" maxlength="300"></label>
    <button type="button" id="f-clear" class="quiet">Clear</button>
    <span id="status" class="status-line" role="status"></span>
  </form>
  <section id="decisions-section"><h2>Recent decisions
    <span class="count" id="decision-count">0</span></h2>
    <table id="decisions"><thead><tr><th>Time</th><th>Verdict</th><th>Principal</th>
      <th>Target</th><th>Tool</th><th>Rule</th><th>Reason</th><th>Session</th>
      <th>Evidence</th></tr></thead><tbody id="decision-rows"></tbody></table>
  </section>
  <div class="columns">
    <section id="rules-section"><h2>Per rule</h2>
      <table id="rules"><thead><tr><th>Rule</th><th>Allow</th><th>Held</th><th>Deny</th>
        <th>Other</th></tr></thead><tbody id="rule-rows"></tbody></table>
    </section>
    <section id="sessions-section"><h2>Active sessions</h2>
      <table id="sessions"><thead><tr><th>Session</th><th>Principal</th><th>Last seen</th>
        <th>State</th><th></th></tr></thead><tbody id="session-rows"></tbody></table>
    </section>
  </div>
</main>
<script src="/activity.js"></script>""", now=now)


CSS = """
header nav a { color: #fff; }
main.activity { max-width: 100rem; }
.filters { display: flex; flex-wrap: wrap; gap: .8rem; align-items: center;
  background: #fff; border: 1px solid #d9dde5; border-radius: 8px; padding: .6rem .9rem; }
.filters input, .filters select { padding: .3rem .4rem; border: 1px solid #d9dde5;
  border-radius: 5px; font: inherit; }
.filters .quiet { background: #5c6577; }
.status-line { color: #5c6577; font-size: .9em; }
#decisions td { font-size: .92em; overflow-wrap: anywhere; }
td.v-deny, td.v-rollback { color: #a4161a; font-weight: 600; }
td.v-escalate, td.v-pause, td.v-defer { color: #9a5b00; font-weight: 600; }
td.v-allow { color: #106b3a; }
td.v-modify, td.v-narrow { color: #2450b2; }
.columns { display: grid; grid-template-columns: 1fr 1fr; gap: 1.2rem; }
tr.fresh { animation: fresh 1.5s ease-out; }
@keyframes fresh { from { background: #fff7c2; } to { background: transparent; } }
"""

JS = """
(function () {
  "use strict";
  var root = document.getElementById("activity");
  var csrf = root.dataset.csrf, poll = parseInt(root.dataset.poll || "1000", 10);
  var last = 0, generation = 0, busy = false, shown = 0, MAX_ROWS = 500;
  var rows = document.getElementById("decision-rows");
  var fields = ["verdict", "rule", "principal", "session"];

  function filters() {
    var q = [];
    fields.forEach(function (f) {
      var v = document.getElementById("f-" + f).value.trim();
      if (v) { q.push(f + "=" + encodeURIComponent(v)); }
    });
    return q;
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    tr.appendChild(td);
    return td;
  }
  function when(t) {
    var d = new Date(t * 1000);
    return d.toLocaleTimeString();
  }
  function decisionRow(d) {
    var tr = document.createElement("tr");
    tr.className = "fresh decision";
    tr.dataset.id = d.decision_id;
    tr.dataset.verdict = d.verdict;
    tr.dataset.rules = d.rule_ids.join(" ");
    tr.dataset.session = d.session || "";
    cell(tr, when(d.time));
    var v = cell(tr, d.verdict + (d.outcome === "held" ? " (held)" : ""), "v-" + d.verdict);
    v.classList.add("verdict");
    cell(tr, (d.principal || []).join(" \\u2192 ") || "anonymous", "principal");
    cell(tr, d.target || "", "target");
    cell(tr, d.tool || "", "tool");
    cell(tr, d.rule_ids.join(", ") || "\\u2014", "rule");
    cell(tr, d.reason || "", "reason");
    cell(tr, d.session ? d.session.slice(-12) : "", "session").title = d.session || "";
    var td = cell(tr, "");
    var a = document.createElement("a");
    a.href = "/api/evidence/" + encodeURIComponent(d.decision_id);
    a.textContent = d.decision_id.slice(0, 10);
    a.className = "evidence";
    a.target = "_blank";
    a.rel = "noopener";
    td.appendChild(a);
    return tr;
  }
  function renderRules(counters) {
    var body = document.getElementById("rule-rows");
    var names = Object.keys(counters).sort();
    body.textContent = "";
    names.forEach(function (rule) {
      var c = counters[rule], tr = document.createElement("tr");
      tr.dataset.rule = rule;
      var allow = (c.allow || 0) + (c.modify || 0) + (c.narrow || 0);
      var held = (c.escalate || 0) + (c.pause || 0) + (c.defer || 0);
      var deny = (c.deny || 0) + (c.rollback || 0);
      var total = 0;
      Object.keys(c).forEach(function (k) { total += c[k]; });
      cell(tr, rule, "rule");
      cell(tr, String(allow), "allow");
      cell(tr, String(held), "held");
      cell(tr, String(deny), "deny");
      cell(tr, String(total - allow - held - deny), "other");
      body.appendChild(tr);
    });
  }
  function renderSessions(sessions, now) {
    // rows are updated in place (keyed by session), so a Kill button is never replaced
    // under the pointer by the next poll
    var body = document.getElementById("session-rows");
    var existing = {}, seen = {};
    Array.prototype.forEach.call(body.children, function (tr) {
      existing[tr.dataset.session] = tr;
    });
    (sessions || []).forEach(function (s, i) {
      seen[s.session] = true;
      var tr = existing[s.session];
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.session = s.session;
        cell(tr, s.session.length > 28 ? "\u2026" + s.session.slice(-27) : s.session)
          .title = s.session;
        cell(tr, (s.principal || "\u2014").slice(0, 16));
        cell(tr, "", "seen");
        cell(tr, "", "state");
        var td = cell(tr, "", "actions");
        var b = document.createElement("button");
        b.type = "button";
        b.className = "deny kill";
        b.dataset.action = "kill";
        b.dataset.id = s.session;
        b.textContent = "Kill";
        b.addEventListener("click", function () { kill(s.session, b); });
        td.appendChild(b);
      }
      tr.querySelector(".seen").textContent =
        Math.max(0, Math.round(now - s.last_seen)) + "s ago";
      var state = tr.querySelector(".state");
      state.textContent = s.killed ? "killed: " + s.killed : "active";
      state.className = "state " + (s.killed ? "killed" : "alive");
      var button = tr.querySelector("button.kill");
      if (s.killed && button) { button.remove(); }
      if (body.children[i] !== tr) { body.insertBefore(tr, body.children[i] || null); }
    });
    Object.keys(existing).forEach(function (id) {
      if (!seen[id]) { existing[id].remove(); }
    });
  }
  function kill(session, button) {
    button.disabled = true;
    fetch("/api/sessions/" + encodeURIComponent(session) + "/kill", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify({reason: "killed from the activity page"})
    }).then(function (r) { return r.json().then(function (j) { return [r, j]; }); })
      .then(function (rj) {
        var status = document.getElementById("status");
        status.textContent = rj[0].ok ? "Killed session " + session :
          "Kill failed: " + ((rj[1].error || {}).message || rj[0].status);
        status.dataset.killed = rj[0].ok ? session : "";
        tick();
      })
      .catch(function () { button.disabled = false; });
  }
  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    var mine = generation;
    var q = filters();
    q.push("since=" + last);
    fetch("/api/activity?" + q.join("&"), {credentials: "same-origin"})
      .then(function (r) {
        if (r.status === 401 || r.status === 403) { window.location.reload(); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (data) {
        busy = false;
        if (!data || mine !== generation) { return; }
        var entries = data.entries;   // newest first
        for (var i = entries.length - 1; i >= 0; i--) {
          rows.insertBefore(decisionRow(entries[i]), rows.firstChild);
          shown++;
        }
        while (rows.childNodes.length > MAX_ROWS) { rows.removeChild(rows.lastChild); }
        last = Math.max(last, data.last);
        document.getElementById("decision-count").textContent = String(rows.childNodes.length);
        renderRules(data.counters);
        renderSessions(data.sessions, data.now);
      })
      .catch(function () { busy = false; });
  }
  function reset() {
    generation++;
    busy = false;
    last = 0;
    rows.textContent = "";
    tick();
  }
  fields.forEach(function (f) {
    var el = document.getElementById("f-" + f);
    el.addEventListener(el.tagName === "SELECT" ? "change" : "input", reset);
  });
  document.getElementById("f-clear").addEventListener("click", function () {
    fields.forEach(function (f) { document.getElementById("f-" + f).value = ""; });
    reset();
  });
  document.getElementById("filters").addEventListener("submit", function (ev) {
    ev.preventDefault();
  });
  tick();
  setInterval(tick, poll);
})();
"""
