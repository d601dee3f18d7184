"""Environment variables the server's code reads.

Patterns per language, each capturing the name (and a literal default where the code gives
one): `process.env.X`, `process.env["X"]`, destructuring of `process.env`; `os.environ[...]`,
`os.getenv`, `environ.get`, helpers whose name says env (`get_env("X")`), pydantic settings
fields (`validation_alias="X"`, or the field name under an `env_prefix`); Go's `os.Getenv`;
Rust's `env::var`. Names every program reads (PATH, HOME, NODE_ENV, proxies, terminals, CI)
are not the server's settings and are dropped.
"""

from __future__ import annotations

import bisect
import re

from analysis.checkout import Checkout
from analysis.findings import STATIC, Findings, Source
from analysis.scanners.sources import source_files

_NAME = r"(?P<name>[A-Za-z_][A-Za-z0-9_]{1,127})"
_QUOTED = r"['\"`]" + _NAME + r"['\"`]"
_LITERAL_VALUE = r"'[^'\n]{0,200}'|\"[^\"\n]{0,200}\"|-?\d+(?:\.\d+)?"
_DEFAULT = r"(?:\s*(?:\|\||\?\?)\s*(?P<default>" + _LITERAL_VALUE + r"|true|false))?"

PATTERNS: dict[str, list[re.Pattern[str]]] = {
    "javascript": [
        re.compile(r"process\.env\??\.(?P<name>[A-Za-z_][A-Za-z0-9_]{1,127})\b" + _DEFAULT),
        re.compile(r"process\.env\??\.?\[\s*" + _QUOTED + r"\s*\]" + _DEFAULT),
        re.compile(r"(?:Bun|import\.meta)\.env\.(?P<name>[A-Z_][A-Z0-9_]{1,127})\b" + _DEFAULT),
        # `const env = process.env; env.X`, or an environment passed in as a parameter.
        re.compile(
            r"(?<![.\w])(?:env|environment)\??\.(?P<name>[A-Z][A-Z0-9_]{1,127})\b" + _DEFAULT
        ),
        re.compile(r"Deno\.env\.get\(\s*" + _QUOTED),
    ],
    "python": [
        re.compile(r"\benviron\s*\[\s*" + _QUOTED + r"\s*\]"),
        re.compile(
            r"\b(?:environ\.get|getenv|environ\.setdefault|environ\.pop)\(\s*"
            + _QUOTED
            + r"(?:\s*,\s*(?P<default>"
            + _LITERAL_VALUE
            + r"|True|False))?"
        ),
        re.compile(r"\b(?:validation_alias|alias|env)\s*=\s*" + _QUOTED),
    ],
    "go": [re.compile(r"\bos\.(?:Getenv|LookupEnv)\(\s*" + _QUOTED)],
    "rust": [re.compile(r"\benv::var(?:_os)?\(\s*" + _QUOTED)],
}
_DESTRUCTURE = re.compile(r"\{(?P<body>[^{}]{1,2000})\}\s*=\s*process\.env\b")
_DESTRUCTURED_NAME = re.compile(
    r"(?:^|,)\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?::\s*\w+)?\s*(?:=\s*(?P<default>'[^']*'|\"[^\"]*\"|[\w.]+))?\s*(?=,|$)"
)
_SETTINGS_CLASS = re.compile(
    r"^class\s+\w+\s*\((?P<bases>[^)]*BaseSettings[^)]*)\)\s*:", re.MULTILINE
)
_ENV_PREFIX = re.compile(r"env_prefix\s*=\s*['\"](?P<prefix>[A-Za-z0-9_]*)['\"]")
_FIELD = re.compile(
    r"^    (?P<field>[a-z_][a-z0-9_]*)\s*:\s*[^=\n]+(?:=\s*(?P<value>.*))?$", re.MULTILINE
)

# Read by every program, or by the runtime itself: never a server's own setting.
GENERIC = {
    "PATH",
    "HOME",
    "USER",
    "USERNAME",
    "LOGNAME",
    "SHELL",
    "PWD",
    "OLDPWD",
    "TERM",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "HOSTNAME",
    "EDITOR",
    "PAGER",
    "DISPLAY",
    "NODE_ENV",
    "NODE_OPTIONS",
    "NODE_DEBUG",
    "NODE_PATH",
    "NODE_TLS_REJECT_UNAUTHORIZED",
    "NODE_NO_WARNINGS",
    "DEBUG",
    "DEBUG_FD",
    "DEBUG_COLORS",
    "DEBUG_DEPTH",
    "DEBUG_MIME",
    "CI",
    "FORCE_COLOR",
    "NO_COLOR",
    "COLORTERM",
    "COLUMNS",
    "LINES",
    "APPDATA",
    "LOCALAPPDATA",
    "USERPROFILE",
    "PROGRAMFILES",
    "SYSTEMROOT",
    "WINDIR",
    "COMSPEC",
    "PATHEXT",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONUNBUFFERED",
    "PYTHONIOENCODING",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "TRACE_DEPRECATION",
    "NO_DEPRECATION",
    "NODE_UNIQUE_ID",
    "TERM_PROGRAM",
    "WT_SESSION",
    "GITHUB_ACTIONS",
    "VERCEL",
    "VERCEL_ENV",
    "VERCEL_URL",
    "AWS_LAMBDA_FUNCTION_NAME",
    "K_SERVICE",
    "JEST_WORKER_ID",
    "VITEST",
    "PYTEST_CURRENT_TEST",
    "UV_CACHE_DIR",
    "READABLE_STREAM",
    "BROWSER",
    "WSL_DISTRO_NAME",
    "SUDO_USER",
    "UNDICI_NO_FG",
    "ZEIT_NOW_ID",
}
# Honoured by most HTTP and TLS libraries on their own: a server's setting only where its own
# code reads them by name (then it documents or changes how they work).
AMBIENT = {
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
}
GENERIC_PREFIXES = ("npm_config_", "npm_package_", "npm_lifecycle_", "XDG_", "LC_", "GITHUB_ACTION")
MAX_SOURCES_PER_NAME = 5
# esbuild and rollup mark each bundled module with a `// path` comment line.
_MODULE_MARKER = re.compile(r"^// (?P<path>[\w@./-]+\.(?:[cm]?[jt]sx?))\s*$", re.MULTILINE)
# Without markers, a file this large or with a bundler's module table carries dependencies.
BUNDLE_BYTES = 400_000
BUNDLE_SIGNS = ("__webpack_require__", "__commonJS(", "__toESM(", "/******/")
BUNDLED = "bundle"
_ENV_LIKE = r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+"
_LITERAL = re.compile(r"['\"`](?P<name>" + _ENV_LIKE + r")['\"`]")
_WORD_LITERAL = re.compile(r"['\"](?P<word>[A-Z][A-Z0-9]{1,30})['\"]")
# A call to a helper named for the environment (`get_env_bool("X")`, `feedbackEnvEnabled("A",
# "B")`, `is_env_ssl_verify(...)`): its literal arguments are variable names, or prefixes.
# Found from the "env" inside their names (a literal start keeps this fast on large bundles);
# the rest of the name is read backwards from there.
_ENV_CALL = re.compile(r"(?:env|Env|ENV)\w*\s*\((?P<args>[^()]{0,300})\)")
# A constant or keyword named for the environment: `PROXY_ENV_VARS = ("A", "B")`,
# `passthrough_env_var="X"`, `X_ENV = "X"`.
_ENV_ASSIGNMENT = re.compile(r"(?:env|ENV|Env)[A-Za-z0-9_]*\s*[:=]\s*(?=[\[({'\"`])")
_TEMPLATE = re.compile(
    r"(?:f['\"]\{[^{}'\"]{1,60}\}|`\$\{[^{}`]{1,60}\})_(?P<suffix>[A-Z][A-Z0-9_]{1,60})['\"`]"
)


def is_generic(name: str) -> bool:
    """A variable of the runtime or the host that no server's user sets."""
    return name in GENERIC or name.startswith(GENERIC_PREFIXES)


def is_ambient(name: str) -> bool:
    return name in AMBIENT


def scan(checkout: Checkout, findings: Findings) -> dict[str, list[str]]:
    """Add every variable the source reads; returns evidence lines per name for later layers."""
    evidence: dict[str, list[str]] = {}
    prefixes: set[str] = set()
    templates: list[tuple[str, str, int, str]] = []
    for path, language in source_files(checkout):
        text = checkout.text(path)
        if not text or not _ENVIRONMENT_WORD.search(text):
            continue
        hits: list[tuple[int, str, str | None, str]] = []
        for pattern in PATTERNS[language]:
            for match in pattern.finditer(text):
                groups = match.groupdict()
                hits.append((match.start(), groups["name"], groups.get("default"), "read"))
        if language == "javascript":
            hits.extend(_destructured(text))
        if language == "python" and "BaseSettings" in text:
            hits.extend(_pydantic_settings(text))
        if language in ("javascript", "python"):
            hits.extend(_named_in_environment_context(text, prefixes))
            templates.extend(
                (path, match.group("suffix"), match.start(), text)
                for match in _TEMPLATE.finditer(text)
            )
        written = {
            (text.count("\n", 0, match.start()), match.group("js") or match.group("py"))
            for match in _WRITE.finditer(text)
        }
        modules = _modules(text) if language == "javascript" else []
        unmarked_bundle = not modules and _is_bundle(text)
        for offset, name, default, how in hits:
            if name != name.upper() or name in GENERIC or name.startswith(GENERIC_PREFIXES):
                continue
            module = _module_at(modules, offset)
            if "node_modules/" in module:
                continue  # a dependency's own code, bundled in
            if name in AMBIENT and unmarked_bundle:
                continue
            if written and (text.count("\n", 0, offset), name) in written:
                continue
            label = BUNDLED if unmarked_bundle else how
            _add(findings, evidence, path, text, offset, name, default, label)
    families = {
        prefix
        for prefix in prefixes
        if sum(1 for name in findings.variables if name.startswith(prefix + "_")) >= 3
    }
    for word in families:
        findings.variables.pop(word, None)
        evidence.pop(word, None)
    for path, suffix, offset, text in templates:
        for prefix in sorted(families):
            _add(findings, evidence, path, text, offset, f"{prefix}_{suffix}", None, "template")
    return evidence


_ENVIRONMENT_WORD = re.compile(r"env|ENV|Env|BaseSettings")
# `process.env.X = …` / `os.environ["X"] = …`: the server sets X (often for a dependency), so
# its reads on that line are not a setting of its own.
_WRITE = re.compile(
    r"(?:process\.env\.(?P<js>[A-Z_][A-Z0-9_]*)|environ\[\s*['\"](?P<py>[A-Z_][A-Z0-9_]*)['\"]\s*\])\s*=(?!=)"
)


def _add(
    findings: Findings,
    evidence: dict[str, list[str]],
    path: str,
    text: str,
    offset: int,
    name: str,
    default: str | None,
    how: str,
) -> None:
    line = text.count("\n", 0, offset) + 1
    detail = f"line {line}" if how == "read" else f"line {line} ({how})"
    if findings.variable(name, Source(STATIC, path, detail), default=_literal(default)) is None:
        return
    lines = evidence.setdefault(name, [])
    if len(lines) < MAX_SOURCES_PER_NAME:
        lines.append(f"{path}:{line}: {_line_at(text, offset)}")


def _named_in_environment_context(
    text: str, prefixes: set[str]
) -> list[tuple[int, str, str | None, str]]:
    """Names given to helpers and constants named for the environment; single words given to
    such helpers are prefixes (`proxy_settings_from_env("JIRA")`), kept for templates."""
    hits = []
    for match in _ENV_CALL.finditer(text):
        function = _word_around(text, match.start(), match.end())
        if function in {"getenv", "get"} or not (function[:1].isalpha() or function[:1] == "_"):
            continue
        arguments = match.group("args")
        base = match.start("args")
        for literal in _LITERAL.finditer(arguments):
            hits.append((base + literal.start(), literal.group("name"), None, "named"))
        first = _WORD_LITERAL.match(arguments.lstrip())
        if first:
            # One word: a prefix when a family of names shares it, else a variable of its own.
            prefixes.add(first.group("word"))
            if len(first.group("word")) >= 4:
                hits.append((base, first.group("word"), None, "named"))
    for match in _ENV_ASSIGNMENT.finditer(text):
        value = _bracketed(text, match.end())
        for literal in _LITERAL.finditer(value):
            hits.append((match.end() + literal.start(), literal.group("name"), None, "named"))
    return hits


def _word_around(text: str, start: int, limit: int) -> str:
    """The identifier that contains position `start` (read backwards, then forwards)."""
    begin = start
    while begin > 0 and (text[begin - 1].isalnum() or text[begin - 1] == "_"):
        begin -= 1
    end = start
    while end < limit and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return text[begin:end]


def _bracketed(text: str, start: int, limit: int = 2_000) -> str:
    """The value starting at `start`: a bracketed group (to its close) or a single literal."""
    opening = text[start : start + 1]
    closing = {"(": ")", "[": "]", "{": "}"}.get(opening)
    if closing is None:
        end = text.find("\n", start)
        return text[start : end if end >= 0 else start + limit][:limit]
    depth = 0
    for index in range(start, min(len(text), start + limit)):
        if text[index] == opening:
            depth += 1
        elif text[index] == closing:
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    return ""


def _modules(text: str) -> list[tuple[int, str]]:
    return [(match.start(), match.group("path")) for match in _MODULE_MARKER.finditer(text)]


def _module_at(modules: list[tuple[int, str]], offset: int) -> str:
    index = bisect.bisect_right(modules, (offset, "\uffff")) - 1
    return modules[index][1] if index >= 0 else ""


def _is_bundle(text: str) -> bool:
    return len(text) >= BUNDLE_BYTES or any(sign in text for sign in BUNDLE_SIGNS)


def _destructured(text: str) -> list[tuple[int, str, str | None, str]]:
    hits = []
    for match in _DESTRUCTURE.finditer(text):
        for item in _DESTRUCTURED_NAME.finditer(match.group("body")):
            hits.append((match.start(), item.group("name"), item.group("default"), "destructured"))
    return hits


def _pydantic_settings(text: str) -> list[tuple[int, str, str | None, str]]:
    """Fields of pydantic BaseSettings classes: each is read from the environment by name."""
    hits = []
    classes = list(_SETTINGS_CLASS.finditer(text))
    for index, match in enumerate(classes):
        end = classes[index + 1].start() if index + 1 < len(classes) else len(text)
        body = text[match.end() : end]
        next_class = re.search(r"^\S", body, re.MULTILINE)
        body = body[: next_class.start()] if next_class else body
        prefix_match = _ENV_PREFIX.search(body)
        prefix = prefix_match.group("prefix") if prefix_match else ""
        for field in _FIELD.finditer(body):
            value = field.group("value") or ""
            call = value.find("(")
            if call >= 0:
                start = match.end() + field.start("value") + call
                value = value[:call] + _bracketed(text, start)
            if field.group("field") == "model_config" or "alias" in value:
                continue  # aliased fields are found by their alias
            name = (prefix + field.group("field")).upper()
            default = (
                value.strip()
                if value and re.fullmatch(r"['\"][^'\"]*['\"]|-?\d+|True|False", value.strip())
                else None
            )
            hits.append((match.end() + field.start(), name, default, "settings field"))
    return hits


def _literal(default: str | None) -> str | None:
    if default is None:
        return None
    value = default.strip()
    if value[:1] in {"'", '"'} and value[-1:] == value[:1]:
        value = value[1:-1]
    if value in {"True", "False"}:
        value = value.lower()
    return value or None


def _line_at(text: str, offset: int) -> str:
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    line = text[start : end if end >= 0 else len(text)].strip()
    if len(line) > 200:
        column = offset - start
        line = line[max(0, column - 80) : column + 120]
    return line
