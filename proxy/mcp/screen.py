"""Description screening: hidden instructions in MCP tool definitions (tool poisoning).

``screen_tools(tools)`` looks at every string of every tool — name, title, description,
annotations, and the whole ``inputSchema`` / ``outputSchema`` (nested ``description``
fields, property names, defaults, enums...) — and returns ``Finding``s with stable codes.
Each code belongs to one policy category (``Finding.category``); the policy says per
category what happens to a flagged tool (strip / deny / escalate / record).

=============================  =======================  ==========================================
code                           category                 what
=============================  =======================  ==========================================
``hidden.imperative``          ``hidden_instructions``  orders to the model: "ignore previous
                                                        instructions", "you must", "otherwise the
                                                        tool will not work", "system prompt"...
``hidden.tag``                 ``hidden_instructions``  ``<IMPORTANT>``, ``<SYSTEM>``, ``[INST]``,
                                                        ``<|im_start|>``-style markup
``hidden.tool_reference``      ``hidden_instructions``  "before using this tool", "instead of
                                                        <other_tool>", "when this tool is
                                                        available", another listed tool's name
``hidden.concealment``         ``hidden_instructions``  "do not tell the user", "do not mention
                                                        that", "without informing the user"...
``path.sensitive``             ``sensitive_paths``      ``~/.ssh``, ``id_rsa``, ``.env``,
                                                        ``/etc/passwd``, ``.aws/credentials``,
                                                        ``mcp.json``...
``unicode.invisible``          ``invisible_unicode``    zero-width and other invisible characters
``unicode.bidi``               ``invisible_unicode``    bidirectional controls (RLO, LRO, isolates)
``unicode.tags``               ``invisible_unicode``    Unicode tag characters (U+E0000-E007F):
                                                        invisible ASCII; the excerpt decodes it
``unicode.control``            ``invisible_unicode``    C0/C1 control characters (not tab/newline)
``size.oversized``             ``oversized``            a string over ``max_bytes`` (8 KiB)
``schema.missing``             ``malformed_schema``     no ``inputSchema``
``schema.not_object``          ``malformed_schema``     ``inputSchema`` (or ``outputSchema``) is
                                                        not an object schema
``schema.malformed``           ``malformed_schema``     ``properties`` / ``required`` of the wrong
                                                        shape, too deep or too large
``schema.remote_ref``          ``malformed_schema``     ``$ref`` that is not a local ``#...``
                                                        pointer (remote URL, file, relative)
``tool.not_object``            ``malformed_schema``     a tool that is not a JSON object
``tool.bad_name``              ``malformed_schema``     a name outside ``[A-Za-z0-9_.-]{1,128}``
``tool.duplicate_name``        ``malformed_schema``     two tools with one name in one list
=============================  =======================  ==========================================

Rule ids in evidence: ``mcp.screen.<code>``. One finding per (tool, code): the first one.

Cost: every string is searched once by one character-class regex (invisible characters)
and once by one alternation regex (the text patterns); no pattern can backtrack more than
a bounded window. A 10,000-tool list or a 1 MB description take milliseconds to tens of
milliseconds.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..codec import json_depth_ok

DEFAULT_MAX_BYTES = 8 * 1024
MAX_NODES = 100_000          # JSON values per tool before the schema counts as malformed
MAX_DEPTH = 64
_EXCERPT = 60                # characters either side of a match

CATEGORIES = ("hidden_instructions", "invisible_unicode", "sensitive_paths", "oversized",
              "malformed_schema")
_CATEGORY_OF_PREFIX = {
    "hidden": "hidden_instructions",
    "unicode": "invisible_unicode",
    "path": "sensitive_paths",
    "size": "oversized",
    "schema": "malformed_schema",
    "tool": "malformed_schema",
}
CODES = (
    "hidden.imperative", "hidden.tag", "hidden.tool_reference", "hidden.concealment",
    "path.sensitive",
    "unicode.invisible", "unicode.bidi", "unicode.tags", "unicode.control",
    "size.oversized",
    "schema.missing", "schema.not_object", "schema.malformed", "schema.remote_ref",
    "tool.not_object", "tool.bad_name", "tool.duplicate_name",
)
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


@dataclass(frozen=True, slots=True)
class Finding:
    code: str          # stable, see the table above
    tool: str          # the tool's name ("" when it has none)
    where: str         # JSON path in the tool: "description", "inputSchema.properties.a..."
    excerpt: str = ""  # the text around the match, invisible characters escaped
    detail: str = ""   # e.g. the decoded text of Unicode tag characters

    @property
    def category(self) -> str:
        return _CATEGORY_OF_PREFIX[self.code.split(".", 1)[0]]

    @property
    def rule_id(self) -> str:
        return f"mcp.screen.{self.code}"

    def to_dict(self) -> dict[str, Any]:
        d = {"code": self.code, "tool": self.tool, "where": self.where,
             "excerpt": self.excerpt}
        if self.detail:
            d["detail"] = self.detail
        return d


@dataclass(frozen=True, slots=True)
class ScreenReport:
    findings: tuple[Finding, ...] = ()
    by_tool: Mapping[str, tuple[Finding, ...]] = field(default_factory=dict)

    def codes(self, tool: str | None = None) -> set[str]:
        found = self.findings if tool is None else self.by_tool.get(tool, ())
        return {f.code for f in found}

    def __bool__(self) -> bool:
        return bool(self.findings)


# --- patterns ---------------------------------------------------------------------------------
#
# Each rule: (code, keys, regex, word). The text is lowercased first. ``keys``: words (runs of
# ASCII letters and digits) one of which the text must contain for the rule to apply — all
# words of the text are collected once, so a rule whose keys are absent costs a set lookup.
# ``regex`` starts with a literal so the regex engine scans for it quickly; ``word`` asks for
# a word boundary before the match. Nothing here can backtrack past a bounded window.

_S = r"\s+"
_WS = r"\s*"
_NOT = r"(?:do\s+not|don['\u2019]?t|never)"
_RULES: tuple[tuple[str, str, str, bool], ...] = (
    # orders addressed to the model
    ("hidden.imperative", "ignore",
     rf"ignore{_S}(?:all{_S}|any{_S})?(?:of{_S})?(?:the{_S}|your{_S})?(?:previous|prior|above|"
     rf"earlier|preceding|other|former|system)(?:{_S}\w+)?{_S}(?:instructions?|prompts?|"
     rf"directions|rules|messages|guidelines)\b", True),
    ("hidden.imperative", "disregard",
     rf"disregard{_S}(?:all{_S}|any{_S})?(?:the{_S}|your{_S})?(?:previous|prior|above|earlier|"
     rf"other|system|safety|instructions?|rules|guidelines)\b", True),
    ("hidden.imperative", "forget",
     rf"forget{_S}(?:all{_S}|everything{_S})?(?:your|the|previous|prior|about){_S}(?:\w+{_S})?"
     rf"(?:instructions?|rules|guidelines|prompts?)\b", True),
    # "you must" - but not the usual parameter documentation ("you must provide an id")
    ("hidden.imperative", "you",
     rf"you{_S}must\b(?!{_S}(?:provide|specify|pass|supply|set|include|enter|give|have|"
     rf"be{_S}(?:authenticated|logged|signed)|use{_S}(?:a|an|the){_S}valid|first{_S}"
     rf"(?:create|configure|install)))", True),
    ("hidden.imperative", "you",
     rf"you{_S}(?:should|will|need{_S}to){_S}(?:always|never|now|first|also{_S}(?:read|send|"
     rf"call|include))\b", True),
    ("hidden.imperative", "you", rf"you{_S}are{_S}now\b", True),
    ("hidden.imperative", "instruction instructions", rf"new{_S}instructions?{_WS}:", True),
    ("hidden.imperative", "prompt", rf"system{_S}prompt\b", True),
    ("hidden.imperative", "override",
     rf"override{_S}(?:the{_S}|your{_S}|all{_S}|any{_S})?(?:previous{_S}|prior{_S}|system{_S}|"
     rf"safety{_S})?(?:instructions?|rules|settings|guidelines|polic(?:y|ies))\b", True),
    ("hidden.imperative", "follow obey",
     rf"{_NOT}{_S}(?:follow|obey){_S}(?:the{_S}|your{_S}|any{_S})?(?:previous|prior|system|"
     rf"user|other)\b", True),
    ("hidden.imperative", "otherwise",
     rf"otherwise{_S}(?:the{_S}|this{_S})?tool{_S}(?:will{_S})?(?:not{_S}work|fail|break|"
     rf"crash|error)", True),
    ("hidden.imperative", "else",
     rf"or{_S}else{_S}(?:the{_S}|this{_S})?tool{_S}(?:will{_S})?(?:not{_S}work|fail|break)",
     True),
    ("hidden.imperative", "assistant model ai llm agent",
     rf"the{_S}(?:assistant|model|ai|llm|agent){_S}(?:must|should|has{_S}to)\b", True),
    ("hidden.imperative", "ai", rf"as{_S}an{_S}ai\b", True),
    # markup that frames text as a message from the system
    ("hidden.tag",
     "important system sys instruction instructions secret hidden admin assistant prompt "
     "critical override directive note ai aionly",
     r"<\s*/?\s*(?:important|system|sys|instructions?|secret|hidden|admin|assistant|prompt|"
     r"critical|override|directive|note[-_]to[-_](?:ai|model|assistant)|ai[-_]?only)\b"
     r"[^<>\n\x00]{0,200}>", False),
    ("hidden.tag", "inst system sys", r"\[/?\s*(?:inst|system|sys)\s*\]", False),
    ("hidden.tag", "sys", r"<<\s*/?\s*sys\s*>>", False),
    ("hidden.tag", "im system assistant user endoftext",
     r"<\|\s*(?:im_start|im_end|system|assistant|user|endoftext)\s*\|>", False),
    # references to other tools or servers
    ("hidden.tool_reference", "using",
     rf"(?:before|after|prior{_S}to|instead{_S}of|whenever|when){_S}using{_S}(?:this|any|the|"
     rf"other|another|a)\b", True),
    ("hidden.tool_reference", "calling invoking running executing",
     rf"(?:before|after|prior{_S}to|instead{_S}of|whenever|when){_S}(?:calling|invoking|"
     rf"running|executing){_S}(?:this|any|the|other|another|a)\b", True),
    ("hidden.tool_reference", "instead",
     rf"instead{_S}of{_S}(?:using{_S}|calling{_S})?(?:the{_S})?[`'\"]?(?:\w+[_.-]\w[\w.-]*|"
     rf"\w+{_S}tool)\b", True),
    ("hidden.tool_reference", "available present loaded installed enabled connected",
     rf"when{_S}this{_S}tool{_S}is{_S}(?:available|present|loaded|installed|enabled|"
     rf"connected)\b", True),
    ("hidden.tool_reference", "other",
     rf"(?:all|any|every){_S}other{_S}(?:tools?|servers?|mcp)\b", True),
    ("hidden.tool_reference", "server",
     rf"(?:on|from|of){_S}(?:the{_S})?(?:other|another){_S}(?:mcp{_S})?server\b", True),
    ("hidden.tool_reference", "mcp", r"mcp_tool_\w+|mcp__\w+", True),
    # concealment from the user
    ("hidden.concealment",
     "tell telling inform informing mention mentioning reveal revealing notify notifying "
     "alert alerting show showing disclose disclosing let letting ask asking bother bothering",
     rf"(?:{_NOT}|without){_S}(?:tell|telling|inform|informing|mention|mentioning|reveal|"
     rf"revealing|notify|notifying|alert|alerting|show|showing|disclose|disclosing|let|"
     rf"letting|ask|asking|bother|bothering){_S}(?:this{_S}|it{_S}|anything{_S})?(?:to{_S})?"
     rf"(?:the{_S}|your{_S})?user\b", True),
    ("hidden.concealment", "mention reveal disclose say report log show admit",
     rf"{_NOT}{_S}(?:mention|reveal|disclose|say|report|log|show|admit){_S}(?:that|this|it|"
     rf"anything|the{_S}fact)\b", True),
    ("hidden.concealment", "know see told find notice learn",
     rf"user{_S}(?:must|should|need){_S}(?:not|never){_S}(?:to{_S})?(?:know|see|be{_S}told|"
     rf"find{_S}out|notice|learn)\b", True),
    ("hidden.concealment", "hide conceal keep",
     rf"(?:hide|conceal|keep){_S}(?:this|it|that|these){_S}(?:hidden{_S}|secret{_S})?"
     rf"from{_S}(?:the{_S})?(?:user|human)\b", True),
    ("hidden.concealment", "secretly covertly surreptitiously",
     r"(?:secretly|covertly|surreptitiously)\b", True),
    ("hidden.concealment", "upset", rf"upset{_S}the{_S}user\b", True),
    # sensitive files
    ("path.sensitive", "ssh", r"~/\.ssh\b|\.ssh/", False),
    ("path.sensitive", "rsa dsa ecdsa ed25519", r"id_(?:rsa|dsa|ecdsa|ed25519)\b", True),
    ("path.sensitive", "authorized", r"authorized_keys\b", True),
    ("path.sensitive", "env envrc", r"(?<![\w.])\.env(?:rc|\.[\w.-]+)?\b(?!\s*\()", False),
    ("path.sensitive", "passwd shadow sudoers gshadow",
     r"/etc/(?:passwd|shadow|sudoers|gshadow|master\.passwd)\b", False),
    ("path.sensitive", "aws", r"\.aws/(?:credentials|config)\b", False),
    ("path.sensitive", "aws", r"aws_secret_access_key\b", True),
    ("path.sensitive", "credentials", r"credentials\.json\b|\.git-credentials\b", False),
    ("path.sensitive", "netrc npmrc pypirc", r"(?<![\w])\.(?:netrc|npmrc|pypirc)\b", False),
    ("path.sensitive", "pgpass", r"\.pgpass\b", False),
    ("path.sensitive", "docker kube gcloud",
     r"\.docker/config\.json\b|\.kube/config\b|\.config/gcloud\b", False),
    ("path.sensitive", "gnupg", r"(?<![\w])\.gnupg\b", False),
    ("path.sensitive", "mcp", r"mcp\.json\b", True),
    ("path.sensitive", "claude", r"claude_desktop_config\.json\b", True),
    ("path.sensitive", "cursor", r"~/\.cursor\b", False),
    ("path.sensitive", "environ", r"/proc/self/environ\b", False),
    ("path.sensitive", "wallet", r"wallet\.dat\b", True),
    ("path.sensitive", "history", r"\.(?:bash|zsh)_history\b", False),
    ("path.sensitive", "secret secrets vault", r"secrets?\.ya?ml\b|\.vault-token\b", False),
)
_COMPILED = tuple((code, frozenset(k.encode() for k in keys.split()), re.compile(rx), word)
                  for code, keys, rx, word in _RULES)
# bytes: ASCII letters and digits kept, everything else a separator (for the word set)
_WORDS_TABLE = bytes(c if (0x30 <= c <= 0x39 or 0x61 <= c <= 0x7A) else 0x20 for c in range(256))
_SEP = "\x00"     # between joined strings: no pattern can match across it

_INVISIBLE = (
    "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200d\u2060-\u2064"
    "\u206a-\u206f\u3164\ufe00-\ufe0d\ufeff\uffa0\ufff9-\ufffb"
    "\U0001d173-\U0001d17a\U000e0100-\U000e01ef"
)
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_TAGS = "\U000e0000-\U000e007f"
_CONTROL = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_HIDDEN = re.compile(f"[{_INVISIBLE}{_BIDI}{_TAGS}{_CONTROL}]")
_HIDDEN_CLASSES = (
    ("unicode.tags", re.compile(f"[{_TAGS}]+")),
    ("unicode.bidi", re.compile(f"[{_BIDI}]")),
    ("unicode.invisible", re.compile(f"[{_INVISIBLE}]")),
    ("unicode.control", re.compile(f"[{_CONTROL}]")),
)
# identifier-like words with a separator or a camelCase hump: candidates for tool names
_IDENT = re.compile(r"[A-Za-z_][\w.-]*(?:[_.-]|[a-z][A-Z])[\w.-]*")
_CAMEL = re.compile(r"[a-z][A-Z]")


# --- screening ----------------------------------------------------------------------------------


def screen_tools(tools: Iterable[Any], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 foreign_names: Iterable[str] = ()) -> ScreenReport:
    """Screen a ``tools/list`` result's ``tools`` array (any JSON values are accepted).

    ``foreign_names``: tool names other servers offered in the same session; a description
    that mentions one of them is a ``hidden.tool_reference`` (mentions of this server's own
    tools are normal documentation and are not flagged).

    How it stays fast: each tool is serialized once (C speed) and the text rules run over
    all tools' JSON at once; the tool's strings are walked one by one only to say *where*
    a finding is, and for the rare tools that may hold an oversized or invisible string."""
    tools = list(tools)
    counts: dict[str, int] = {}
    for tool in tools:
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            counts[tool["name"]] = counts.get(tool["name"], 0) + 1
    found: list[dict[str, Finding]] = [{} for _ in tools]
    docs: list[str] = []
    for i, tool in enumerate(tools):
        name = tool_name(tool)
        seen = found[i]

        def add(f: Finding, seen: dict[str, Finding] = seen) -> None:
            seen.setdefault(f.code, f)

        if not isinstance(tool, dict):
            add(Finding("tool.not_object", "", "",
                        f"a tool must be a JSON object, got {type(tool).__name__}"))
            docs.append("")
            continue
        if not _NAME.fullmatch(name):
            add(Finding("tool.bad_name", name, "name",
                        f"name {_escape(name)!r} has characters outside [A-Za-z0-9_.-] or is "
                        "not 1-128 characters"))
        if counts.get(name, 0) > 1:
            add(Finding("tool.duplicate_name", name, "name",
                        f"{counts[name]} tools are named {_escape(name)!r}"))
        _schema_checks(tool, name, add)
        try:
            doc = _JSON.encode(tool)
        except (TypeError, ValueError, RecursionError) as e:
            add(Finding("schema.malformed", name, "", f"not a JSON value: {e}"))
            docs.append("")
            continue
        docs.append(doc)
        if "Ref\"" in doc or "$ref\"" in doc:
            _refs(tool, name, add)
        oversized = len(doc) * 4 > max_bytes and \
            len(doc.encode("utf-8", "surrogatepass")) > max_bytes
        hidden = (not doc.isascii() and _HIDDEN.search(doc) is not None) or \
            _ESCAPED_CONTROL.search(doc) is not None
        brackets = doc.count("{") + doc.count("[")
        too_big = len(doc) > _WALK_ALWAYS or brackets > MAX_NODES or doc.count(",") > MAX_NODES \
            or (brackets > MAX_DEPTH and not json_depth_ok(doc, MAX_DEPTH))
        if oversized or hidden or too_big:
            _walk_strings(tool, name, max_bytes, add)
    _scan_docs(tools, found, docs)
    foreign = frozenset(foreign_names) - counts.keys()
    if foreign:
        _scan_names(tools, found, docs, foreign)
    findings: list[Finding] = []
    by_tool: dict[str, list[Finding]] = {}
    for i, seen in enumerate(found):
        if seen:
            ordered = sorted(seen.values(), key=lambda f: _ORDER[f.code])
            findings.extend(ordered)
            by_tool.setdefault(tool_name(tools[i]), []).extend(ordered)
    return ScreenReport(tuple(findings), {k: tuple(v) for k, v in by_tool.items()})


# C0 controls as JSON writes them (\u0000-\u001f but \n \t \r, and \b \f); a false hit (an
# escaped backslash before "b") only costs a walk of that tool's strings.
_ESCAPED_CONTROL = re.compile(r"\\(?:u00(?:0[0-8bcefBCEF]|1[0-9a-fA-F])|[bf])")
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_WALK_ALWAYS = 1 << 20    # a tool JSON this large is walked anyway (the depth/size bound)
_LOCATE_TOOLS = 500       # flagged tools whose findings are located string by string


def _walk_strings(tool: Mapping[str, Any], name: str, max_bytes: int, add: Any) -> None:
    for where, text in _strings(tool, name, add):
        if len(text) * 4 > max_bytes:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > max_bytes:
                add(Finding("size.oversized", name, where, f"{size} bytes (limit {max_bytes})"))
        if not (text.isascii() and text.isprintable()) and _HIDDEN.search(text):
            _classify_hidden(text, name, where, add)


_ORDER = {code: i for i, code in enumerate(CODES)}


def screen_tool(tool: Any, *, max_bytes: int = DEFAULT_MAX_BYTES,
                foreign_names: Iterable[str] = ()) -> list[Finding]:
    """Findings for one tool definition (first per code)."""
    return list(screen_tools([tool], max_bytes=max_bytes, foreign_names=foreign_names).findings)


def tool_name(tool: Any) -> str:
    name = tool.get("name") if isinstance(tool, dict) else None
    return name if isinstance(name, str) else ""


def _strings(tool: Mapping[str, Any], name: str, add: Any) -> Iterator[tuple[str, str]]:
    """Every string (values, and member names that are not plain identifiers) of the tool
    with its path; bounded in size and depth."""
    stack: list[tuple[str, Any, int]] = [("", tool, 0)]
    nodes = 0
    while stack:
        path, value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            add(Finding("schema.malformed", name, path,
                        f"the tool definition is larger than {MAX_NODES} values or deeper "
                        f"than {MAX_DEPTH} levels; the rest was not screened"))
            return
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, dict):
            for key, item in value.items():
                sub = f"{path}.{key}" if path else key
                if len(key) > 40 or not (key.isascii() and key.isidentifier()):
                    yield f"{sub} (member name)", key
                stack.append((sub, item, depth + 1))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                stack.append((f"{path}[{i}]", item, depth + 1))


def _scan_docs(tools: list[Any], found: list[dict[str, Finding]], docs: list[str]) -> None:
    """The text rules over every tool at once: the tools' JSON texts, lowercased, joined by
    NUL (JSON text never holds a raw NUL, so no rule matches across tools); a match is mapped
    to its tool by bisection and then to the string it is in."""
    if not any(docs):
        return
    lowered = [_unescape_space(d.lower()) for d in docs]
    starts: list[int] = []
    pos = 0
    for d in lowered:
        starts.append(pos)
        pos += len(d) + 1
    joined = _SEP.join(lowered)
    words = set(joined.encode("utf-8", "surrogatepass").translate(_WORDS_TABLE).split())
    strings: dict[int, list[tuple[str, str, str]]] = {}   # tool -> (where, text, lowered)
    for code, keys, rx, word in _COMPILED:
        if keys.isdisjoint(words):
            continue
        pos = 0
        while (m := rx.search(joined, pos)) is not None:
            at = pos = m.start()
            i = bisect_right(starts, at) - 1
            seen = found[i]
            if code in seen:
                pos = starts[i + 1] if i + 1 < len(starts) else len(joined)  # next tool
                continue
            pos = at + 1
            if word and at and (joined[at - 1].isalnum() or joined[at - 1] == "_"):
                continue
            if len(strings) >= _LOCATE_TOOLS and i not in strings:
                # Past this many flagged tools, say where in the tool's JSON instead (the
                # finding stands; a flood of poisoned tools must not stall the proxy).
                doc, a = lowered[i], at - starts[i]
                seen[code] = Finding(code, tool_name(tools[i]), "(tool JSON)",
                                     _excerpt(doc, a, m.end() - starts[i]))
                continue
            if i not in strings:
                strings[i] = _lowered_strings(tools[i])
            located = _locate(strings[i], rx, word)
            if located is not None:
                where, text, a, b = located
                seen[code] = Finding(code, tool_name(tools[i]), where, _excerpt(text, a, b))


def _unescape_space(doc: str) -> str:
    # JSON writes newlines and tabs as escapes: rules that expect whitespace between words
    # must see whitespace there.
    if "\\" not in doc:
        return doc
    return doc.replace("\\n", " ").replace("\\t", " ").replace("\\r", " ")


def _lowered_strings(tool: Any) -> list[tuple[str, str, str]]:
    if not isinstance(tool, dict):
        return []
    return [(where, text, text.lower())
            for where, text in _strings(tool, tool_name(tool), lambda f: None)]


def _locate(strings: list[tuple[str, str, str]], rx: re.Pattern[str],
            word: bool) -> tuple[str, str, int, int] | None:
    """The string the rule matches in (None: the match in the JSON text only spanned
    several strings)."""
    for where, text, low in strings:
        for m in rx.finditer(low):
            at = m.start()
            if word and at and (low[at - 1].isalnum() or low[at - 1] == "_"):
                continue
            shown = text if len(text) == len(low) else low
            return where, shown, at, m.end()
    return None


def _scan_names(tools: list[Any], found: list[dict[str, Finding]], docs: list[str],
                foreign: frozenset[str]) -> None:
    for i, doc in enumerate(docs):
        seen = found[i]
        if not doc or "hidden.tool_reference" in seen:
            continue
        for m in _IDENT.finditer(doc):
            word = m.group().rstrip(".-")
            if word in foreign:
                rx = re.compile(re.escape(word.lower()))
                where, text, a, b = _locate(_lowered_strings(tools[i]), rx, False) or \
                    ("", doc, m.start(), m.end())
                seen["hidden.tool_reference"] = Finding(
                    "hidden.tool_reference", tool_name(tools[i]), where, _excerpt(text, a, b),
                    f"mentions {word}, a tool another server offers in this session")
                break


def _classify_hidden(text: str, tool: str, where: str, add: Any) -> None:
    for code, pattern in _HIDDEN_CLASSES:
        m = pattern.search(text)
        if m is None:
            continue
        detail = f"first U+{ord(m.group()[0]):04X}"
        if code == "unicode.tags":
            hidden = "".join(chr(ord(c) - 0xE0000) for m2 in pattern.finditer(text)
                             for c in m2.group() if 0x20 <= ord(c) - 0xE0000 < 0x7F)
            if hidden:
                detail = f"hidden text: {hidden[:200]!r}"
        add(Finding(code, tool, where, _excerpt(text, m.start(), m.end()), detail))


def _excerpt(text: str, start: int, end: int) -> str:
    a, b = max(0, start - _EXCERPT), min(len(text), end + _EXCERPT)
    piece = " ".join(text[a:b].split())
    return ("…" if a else "") + _escape(piece) + ("…" if b < len(text) else "")


def _escape(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if c.isprintable() and not _HIDDEN.match(c)
                   else (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
                   for c in text)


def _schema_checks(tool: Mapping[str, Any], name: str, add: Any) -> None:
    if "inputSchema" not in tool:
        add(Finding("schema.missing", name, "inputSchema", "the tool has no inputSchema"))
    else:
        _object_schema(tool["inputSchema"], name, "inputSchema", add)
    if "outputSchema" in tool and tool["outputSchema"] is not None:
        _object_schema(tool["outputSchema"], name, "outputSchema", add)


def _object_schema(schema: Any, name: str, where: str, add: Any) -> None:
    if not isinstance(schema, dict):
        add(Finding("schema.not_object", name, where,
                    f"{where} must be a JSON Schema object, got {type(schema).__name__}"))
        return
    if schema.get("type") != "object":
        add(Finding("schema.not_object", name, f"{where}.type",
                    f"{where} must have type \"object\", got {_short(schema.get('type'))}"))
    props = schema.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            add(Finding("schema.malformed", name, f"{where}.properties",
                        "properties must be an object"))
        else:
            for key, sub in props.items():
                if not isinstance(sub, dict | bool):
                    add(Finding("schema.malformed", name, f"{where}.properties.{key}",
                                f"property {_escape(key)!r} must be a schema (object or "
                                f"boolean), got {type(sub).__name__}"))
                    break
    required = schema.get("required")
    if required is not None and (not isinstance(required, list)
                                 or not all(isinstance(r, str) for r in required)):
        add(Finding("schema.malformed", name, f"{where}.required",
                    "required must be an array of strings"))


def _refs(tool: Mapping[str, Any], name: str, add: Any) -> None:
    """``$ref`` anywhere in the schemas: only local JSON pointers (``#/...``)."""
    stack: list[tuple[str, Any, int]] = [(k, tool[k], 0) for k in ("inputSchema", "outputSchema")
                                          if k in tool]
    nodes = 0
    while stack:
        path, value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            return  # reported by the string walk
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("$ref", "$dynamicRef", "$recursiveRef"):
                    if not isinstance(item, str):
                        add(Finding("schema.malformed", name, f"{path}.{key}",
                                    f"{key} must be a string"))
                    elif not item.startswith("#"):
                        add(Finding("schema.remote_ref", name, f"{path}.{key}",
                                    f"{key} to {_escape(item[:200])!r}: only local references "
                                    "(#/...) are accepted"))
                elif isinstance(item, dict | list):
                    stack.append((f"{path}.{key}", item, depth + 1))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict | list):
                    stack.append((f"{path}[{i}]", item, depth + 1))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"
