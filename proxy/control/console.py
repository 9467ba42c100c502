"""The approval console: hand-written HTML, CSS and JavaScript, no build step, no external
assets. Pages are rendered on the server (every value escaped); forms post to the JSON
API's endpoints with a CSRF field, so the console works without JavaScript. The script
(served from ``/console.js``; the CSP forbids inline script) only ticks the "time left"
counters and refreshes the live part every few seconds while nobody is typing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from ..approvals import ApprovalRequest
from ..state import SessionInfo

DONE = {
    "approved": "Approved {id}: the held call proceeds.",
    "denied": "Denied {id}: the held call gets a deny.",
    "killed": "Killed session {id}: its further calls are denied and its held calls released.",
}
ERRORS = {
    "not_found": "No such request or session: {id}.",
    "conflict": "{id} was already decided, expired or cancelled.",
    "self_approval": "You are a principal of this call's chain: agents cannot approve their "
                     "own calls.",
    "bad_request": "The form was incomplete or invalid.",
    "csrf": "The form was stale or did not come from this console: reload and try again.",
    "unavailable": "The approval or session store is unavailable: try again.",
}


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


@dataclass
class View:
    approver: str
    csrf: str
    now: float
    pending: Sequence[ApprovalRequest]
    recent: Sequence[ApprovalRequest]
    sessions: Sequence[SessionInfo] | None       # None: no session store configured
    pending_by_session: dict[str, int] = field(default_factory=dict)
    done: str | None = None
    error: str | None = None
    subject: str = ""


def _layout(title: str, body: str, *, now: float | None = None) -> str:
    stamp = f' data-now="{now:.3f}"' if now is not None else ""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(title)}</title><link rel=\"stylesheet\" href=\"/console.css\">"
            f"</head><body{stamp}>{body}</body></html>\n")


def login_page(error: str | None = None, next_path: str = "") -> str:
    message = f'<p class="error" role="alert" id="login-error">{e(error)}</p>' if error else ""
    after = (f'<input type="hidden" name="next" value="{e(next_path)}">'
             if next_path else "")
    return _layout("fiveplane control — sign in", f"""
<main class="login">
  <h1>fiveplane control</h1>
  <p>Sign in with the control token (<code>--control-token</code>, or the file
  <code>control.token</code> in the proxy's state directory).</p>
  {message}
  <form method="post" action="/login" id="login-form">{after}
    <label for="token">Control token</label>
    <input type="password" id="token" name="token" autocomplete="current-password" required
      autofocus>
    <button type="submit" id="login-button">Sign in</button>
  </form>
</main>""")


def console_page(view: View) -> str:
    flash = ""
    if view.done in DONE:
        flash = (f'<p class="done" role="status" id="flash">'
                 f'{e(DONE[view.done].format(id=view.subject))}</p>')
    elif view.error in ERRORS:
        flash = (f'<p class="error" role="alert" id="flash">'
                 f'{e(ERRORS[view.error].format(id=view.subject))}</p>')
    return _layout("fiveplane control", f"""
<header>
  <h1>fiveplane control</h1>
  <a href="/activity" id="nav-activity" class="nav">Activity</a>
  <span class="who">signed in as <strong id="approver">{e(view.approver)}</strong></span>
  <form method="post" action="/logout" class="inline">
    <input type="hidden" name="csrf" value="{e(view.csrf)}">
    <button type="submit" class="quiet" id="logout">Sign out</button>
  </form>
</header>
{flash}
<main id="live">{live_fragment(view)}</main>
<script src="/console.js"></script>""", now=view.now)


def live_fragment(view: View) -> str:
    parts = [f'<section id="pending"><h2>Pending approvals '
             f'<span class="count" id="pending-count">{len(view.pending)}</span></h2>']
    if not view.pending:
        parts.append('<p class="empty">Nothing is waiting for a decision.</p>')
    for r in view.pending:
        parts.append(_approval(r, view))
    parts.append("</section>")
    parts.append(_sessions(view))
    parts.append(_recent(view))
    return "\n".join(parts)


def _chain(r: ApprovalRequest) -> str:
    return " → ".join(f'<span class="link {e(link.kind.value)}" title="{e(link.kind.value)}">'
                      f"{e(link.id)}</span>" for link in r.principal.chain)


def _left(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    m, s = divmod(int(seconds), 60)
    return f"{m}m {s:02d}s" if m else f"{s}s"


def _approval(r: ApprovalRequest, view: View) -> str:
    a = r.action
    tool = a.get("name") or a.get("mcp_method") or a.get("method") or "call"
    where = a.get("server") or a.get("target") or ""
    shown = a.get("arguments", a.get("body"))
    args = (json.dumps(shown, indent=2, ensure_ascii=False, default=str)
            if shown is not None else "(no arguments)")
    rules = ", ".join(r.rule_ids) or "—"
    left = _left(r.time_left(view.now))
    return f"""
<article class="approval" id="approval-{e(r.id)}" data-id="{e(r.id)}">
  <h3><span class="tool">{e(tool)}</span> <span class="where">on {e(where)}</span></h3>
  <dl>
    <dt>Principal</dt><dd class="chain">{_chain(r)}</dd>
    <dt>Call</dt><dd class="summary">{e(a.get("summary", ""))}</dd>
    <dt>Rule</dt><dd class="rule">{e(rules)}</dd>
    <dt>Reason</dt><dd class="reason">{e(r.reason)}</dd>
    <dt>Time left</dt><dd><span class="left" data-expires="{r.expires_at:.3f}">{left}</span></dd>
    <dt>Request</dt><dd><code>{e(r.id)}</code></dd>
  </dl>
  <pre class="args">{e(args)}</pre>
  <form method="post" action="/api/approvals/{e(r.id)}/approve" class="decide">
    <input type="hidden" name="csrf" value="{e(view.csrf)}">
    <input type="text" name="note" placeholder="note (optional)" maxlength="2000"
      aria-label="note">
    <button type="submit" class="approve" data-action="approve" data-id="{e(r.id)}">Approve</button>
    <button type="submit" class="deny" data-action="deny" data-id="{e(r.id)}"
      formaction="/api/approvals/{e(r.id)}/deny">Deny</button>
  </form>
</article>"""


def _sessions(view: View) -> str:
    if view.sessions is None:
        return ('<section id="sessions"><h2>Sessions</h2>'
                '<p class="empty">No session store is configured.</p></section>')
    rows = []
    for s in view.sessions:
        state = (f'<span class="killed">killed: {e(s.killed)}</span>' if s.killed
                 else '<span class="alive">active</span>')
        kill = "" if s.killed else f"""
      <form method="post" action="/api/sessions/{e(s.session)}/kill" class="kill">
        <input type="hidden" name="csrf" value="{e(view.csrf)}">
        <input type="text" name="reason" placeholder="reason" maxlength="2000"
          aria-label="kill reason">
        <button type="submit" class="deny" data-action="kill" data-id="{e(s.session)}">Kill</button>
      </form>"""
        rows.append(f"""
    <tr data-session="{e(s.session)}">
      <td><code>{e(s.session)}</code></td><td><code>{e((s.principal or "—")[:16])}</code></td>
      <td>{_ago(view.now - s.last_seen)}</td><td>{view.pending_by_session.get(s.session, 0)}</td>
      <td>{state}</td><td>{kill}</td>
    </tr>""")
    if not rows:
        return ('<section id="sessions"><h2>Sessions</h2>'
                '<p class="empty">No sessions yet.</p></section>')
    return f"""<section id="sessions"><h2>Sessions</h2>
  <table><thead><tr><th>Session</th><th>Principal</th><th>Last seen</th><th>Held</th>
  <th>State</th><th></th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>"""


def _recent(view: View) -> str:
    if not view.recent:
        return ""
    rows = "".join(
        f'<tr data-id="{e(r.id)}"><td><code>{e(r.id)}</code></td>'
        f'<td>{e(r.action.get("name") or r.action.get("summary", ""))}</td>'
        f'<td class="status {e(r.status.value)}">{e(r.status.value)}'
        f'{" (used)" if r.consumed_at else ""}</td>'
        f"<td>{e(r.approver or '—')}</td><td>{e(r.note)}</td>"
        f"<td>{_ago(view.now - (r.decided_at or r.expires_at))}</td></tr>"
        for r in reversed(view.recent))
    return f"""<section id="recent"><h2>Recent decisions</h2>
  <table><thead><tr><th>Request</th><th>Call</th><th>Status</th><th>Approver</th>
  <th>Note</th><th>When</th></tr></thead><tbody>{rows}</tbody></table></section>"""


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)}s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() - seconds))


CSS = """
:root { --fg: #1d2330; --muted: #5c6577; --line: #d9dde5; --bg: #f6f7f9; --card: #fff;
  --ok: #106b3a; --no: #a4161a; --accent: #2450b2; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1rem; align-items: center; padding: .6rem 1.2rem;
  background: var(--fg); color: #fff; }
header h1 { font-size: 1.1rem; margin: 0; flex: 1; }
header .quiet { background: transparent; color: #fff; border: 1px solid #fff6; }
header a.nav { color: #fff; }
main { max-width: 72rem; margin: 0 auto; padding: 1rem 1.2rem 3rem; }
main.login { max-width: 28rem; margin-top: 10vh; background: var(--card);
  border: 1px solid var(--line); border-radius: 8px; padding: 1.5rem 2rem; }
h2 { font-size: 1.05rem; margin: 1.6rem 0 .6rem; }
.count { display: inline-block; min-width: 1.6em; padding: 0 .4em; border-radius: 1em;
  background: var(--accent); color: #fff; text-align: center; font-size: .85em; }
.approval { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: .8rem 1.1rem; margin-bottom: .9rem; }
.approval h3 { margin: 0 0 .4rem; font-size: 1.05rem; }
.approval .where { color: var(--muted); font-weight: normal; }
dl { display: grid; grid-template-columns: 7rem 1fr; gap: .15rem .8rem; margin: .3rem 0; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.link { padding: 0 .3em; border-radius: 4px; background: #eef1f7; }
.link.human { background: #e3f4e9; }
.left { font-variant-numeric: tabular-nums; font-weight: 600; }
pre.args { background: #f0f2f6; border-radius: 6px; padding: .6rem .8rem; overflow: auto;
  max-height: 18rem; margin: .5rem 0; }
form.decide, form.kill, form.inline { display: flex; gap: .5rem; align-items: center; }
form.inline { margin: 0; }
input[type=text], input[type=password] { padding: .4rem .5rem; border: 1px solid var(--line);
  border-radius: 5px; font: inherit; }
form.decide input[type=text] { flex: 1; }
main.login input { width: 100%; margin: .3rem 0 .8rem; }
button { font: inherit; padding: .4rem .9rem; border-radius: 5px; border: 1px solid transparent;
  cursor: pointer; background: var(--accent); color: #fff; }
button.approve { background: var(--ok); }
button.deny { background: var(--no); }
table { width: 100%; border-collapse: collapse; background: var(--card); }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line);
  vertical-align: middle; }
th { color: var(--muted); font-weight: 600; font-size: .9em; }
.empty { color: var(--muted); }
.done, .error { max-width: 72rem; margin: .8rem auto 0; padding: .5rem 1.2rem; }
.done { color: var(--ok); }
.error { color: var(--no); }
.killed, .status.denied, .status.expired, .status.cancelled { color: var(--no); }
.alive, .status.approved { color: var(--ok); }
"""

JS = """
(function () {
  "use strict";
  var offset = parseFloat(document.body.dataset.now || "0") - Date.now() / 1000;
  function fmt(s) {
    if (s <= 0) { return "expired"; }
    var m = Math.floor(s / 60), r = Math.floor(s % 60);
    return m > 0 ? m + "m " + (r < 10 ? "0" : "") + r + "s" : r + "s";
  }
  function tick() {
    var now = Date.now() / 1000 + offset;
    var els = document.querySelectorAll("[data-expires]");
    for (var i = 0; i < els.length; i++) {
      els[i].textContent = fmt(parseFloat(els[i].dataset.expires) - now);
    }
  }
  function busy() {
    var a = document.activeElement;
    if (a && (a.tagName === "INPUT" || a.tagName === "BUTTON") && a.closest("#live")) {
      return true;
    }
    var inputs = document.querySelectorAll("#live input[type=text]");
    for (var i = 0; i < inputs.length; i++) { if (inputs[i].value) { return true; } }
    return false;
  }
  function refresh() {
    if (busy() || document.hidden) { return; }
    fetch("/fragment", {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) {
        if (r.status === 401 || r.status === 403) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (typeof html === "string" && !busy()) {
          document.getElementById("live").innerHTML = html;
          tick();
        }
      })
      .catch(function () {});
  }
  tick();
  setInterval(tick, 1000);
  setInterval(refresh, 3000);
})();
"""
