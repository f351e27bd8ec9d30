"""The first-party guards, built from the ``[guards]`` table (see ``docs/guards.md``).

``[guards.validation]``  input validation of workflow inputs and tool arguments: lengths,
                         patterns, forbidden patterns, allowed values, number ranges, named
                         rule kinds (AZ-OS's ``InputValidator.validate(value, kind)``).
``[guards.redaction]``   PII and secret redaction of prompts, model replies and tool results:
                         e-mail addresses, phone numbers, card numbers (Luhn-checked) and
                         API-key shapes, replaced by ``[REDACTED:kind]``.
``[guards.egress]``      the egress policy of tools: allowed hosts for URLs, allowed commands,
                         readable and writable paths, whether code may run; checked on the
                         arguments a tool declares in its ``egress`` attribute.

A table that is absent registers no guard: with no ``[guards]`` table at all, nothing is
checked (today's behaviour).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from flowyard.errors import ConfigError
from flowyard.guards import STAGES, GuardRequest, GuardVerdict, egress_of
from flowyard.models import Message, TextPart

__all__ = ["ValidationGuard", "RedactionGuard", "EgressGuard", "InvalidConfigGuard", "Rule",
           "guards_from_config",
           "luhn_ok", "redact_text", "glob_regex", "REDACTION_KINDS"]

# ----------------------------------------------------------------------------- validation

_RULE_KEYS = frozenset({"kind", "min_length", "max_length", "pattern", "forbid", "allowed",
                        "minimum", "maximum"})


@attrs.frozen
class Rule:
    """One validation rule (all given checks must pass).

    Args:
        min_length: least characters (strings) or items (lists).
        max_length: most characters or items.
        pattern: a regular expression the whole text must match (``re.fullmatch``).
        forbid: a regular expression that must not occur anywhere (``re.search``).
        allowed: the values allowed (exact).
        minimum: least number; maximum: greatest number.
    """

    min_length: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    forbid: re.Pattern[str] | None = None
    allowed: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @classmethod
    def from_table(cls, table: Any, where: str, kinds: Mapping[str, Rule]) -> Rule:
        """Build a rule from a table, or from a kind name (a string).

        Args:
            table: the rule's table, or the name of a ``[guards.validation.kinds]`` rule.
            where: the config path, for errors.
            kinds: the named rules defined so far.

        Returns:
            the rule.

        Raises:
            ConfigError: unknown key or kind, bad value, invalid regular expression.
        """
        if isinstance(table, str):
            table = {"kind": table}
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table of rules or a kind name, got {table!r}")
        unknown = sorted(set(table) - _RULE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(_RULE_KEYS)}")
        base: dict[str, Any] = {}
        if "kind" in table:
            kind = table["kind"]
            if kind not in kinds:
                raise ConfigError(f"{where}: unknown kind {kind!r}; define it in "
                                  f"[guards.validation.kinds] (known: {sorted(kinds)})")
            base = attrs.asdict(kinds[kind], recurse=False)
        for key in ("min_length", "max_length"):
            if key in table:
                value = table[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(f"{where}.{key} must be an integer >= 0, got {value!r}")
                base[key] = value
        for key in ("minimum", "maximum"):
            if key in table:
                value = table[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{where}.{key} must be a number, got {value!r}")
                base[key] = value
        for key in ("pattern", "forbid"):
            if key in table:
                try:
                    base[key] = re.compile(str(table[key]))
                except re.error as exc:
                    raise ConfigError(f"{where}.{key}: invalid regular expression "
                                      f"{table[key]!r}: {exc}") from None
        if "allowed" in table:
            if not isinstance(table["allowed"], list):
                raise ConfigError(f"{where}.allowed must be a list, got {table['allowed']!r}")
            base["allowed"] = tuple(table["allowed"])
        return cls(**base)

    def problem(self, value: Any) -> str | None:
        """Return why ``value`` breaks the rule, or None when it passes.

        Args:
            value: the input or argument value (lists are checked item by item for
                patterns; their length counts items).

        Returns:
            the problem, or None.
        """
        if self.allowed is not None and value not in self.allowed:
            return f"{_show(value)} is not one of the allowed values {list(self.allowed)}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                return f"{value} is below the minimum {self.minimum}"
            if self.maximum is not None and value > self.maximum:
                return f"{value} is above the maximum {self.maximum}"
        if isinstance(value, (str, list, tuple)):
            if self.min_length is not None and len(value) < self.min_length:
                return f"length {len(value)} is below the minimum {self.min_length}"
            if self.max_length is not None and len(value) > self.max_length:
                return f"length {len(value)} is above the maximum {self.max_length}"
        if self.pattern is not None or self.forbid is not None:
            texts = [value] if isinstance(value, str) else (
                [str(v) for v in value] if isinstance(value, (list, tuple)) else None)
            if texts is None:
                return f"expected text, got {type(value).__name__}"
            for text in texts:
                if self.pattern is not None and not self.pattern.fullmatch(text):
                    return f"{_show(text)} does not match {self.pattern.pattern!r}"
                if self.forbid is not None and self.forbid.search(text):
                    return f"{_show(text)} contains a forbidden pattern {self.forbid.pattern!r}"
        return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class ValidationGuard:
    """Input validation of workflow inputs (stage ``inputs``) and tool arguments (``tool``).

    Args:
        inputs: ``input name -> Rule`` (any workflow's input of that name).
        tools: ``tool name -> argument name -> Rule``.
    """

    def __init__(self, inputs: Mapping[str, Rule], tools: Mapping[str, Mapping[str, Rule]]
                 ) -> None:
        self.inputs = dict(inputs)
        self.tools = {name: dict(rules) for name, rules in tools.items()}
        stages = set()
        if self.inputs:
            stages.add("inputs")
        if self.tools:
            stages.add("tool")
        self.stages = frozenset(stages)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> ValidationGuard:
        """Build from ``[guards.validation]``.

        Args:
            table: the table (keys ``kinds``, ``inputs``, ``tools``).

        Returns:
            the guard.

        Raises:
            ConfigError: malformed table.
        """
        unknown = sorted(set(table) - {"kinds", "inputs", "tools"})
        if unknown:
            raise ConfigError(f"[guards.validation] unknown key(s) {unknown}; known: "
                              "['inputs', 'kinds', 'tools']")
        kinds: dict[str, Rule] = {}
        for name, rule in _table(table, "kinds", "[guards.validation]").items():
            kinds[name] = Rule.from_table(rule, f"guards.validation.kinds.{name}", kinds)
        inputs = {name: Rule.from_table(rule, f"guards.validation.inputs.{name}", kinds)
                  for name, rule in _table(table, "inputs", "[guards.validation]").items()}
        tools: dict[str, dict[str, Rule]] = {}
        for tool, arguments in _table(table, "tools", "[guards.validation]").items():
            where = f"guards.validation.tools.{tool!r}"
            if not isinstance(arguments, Mapping):
                raise ConfigError(f"{where} must be a table of argument rules")
            tools[tool] = {arg: Rule.from_table(rule, f"{where}.{arg}", kinds)
                           for arg, rule in arguments.items()}
        return cls(inputs, tools)

    async def check(self, request: GuardRequest) -> GuardVerdict | None:
        """Check inputs or a tool's arguments against their rules.

        Args:
            request: an ``inputs`` or ``tool`` request.

        Returns:
            a denial naming the first broken rule, or None.
        """
        rules = self.inputs if request.stage == "inputs" else self.tools.get(request.target)
        if not rules:
            return None
        what = "input" if request.stage == "inputs" else "argument"
        for name, rule in rules.items():
            if name in request.payload:
                problem = rule.problem(request.payload[name])
                if problem is not None:
                    return GuardVerdict.deny(f"{what} {name!r}: {problem}")
        return None


def _table(table: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} {key} must be a table, got {value!r}")
    return value


# ----------------------------------------------------------------------------- redaction


def luhn_ok(digits: str) -> bool:
    """Return True when ``digits`` passes the Luhn checksum (card numbers).

    Args:
        digits: the number's digits only.

    Returns:
        whether the checksum holds.
    """
    total = 0
    for index, char in enumerate(reversed(digits)):
        number = int(char)
        if index % 2 == 1:
            number *= 2
            if number > 9:
                number -= 9
        total += number
    return total % 10 == 0


def _card(match: re.Match[str]) -> bool:
    digits = re.sub(r"[ -]", "", match.group(0))
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


#: ``kind -> (pattern, extra check or None)``, applied in this order.
_DETECTORS: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str]], bool] | None]] = {
    "api_key": (re.compile(
        r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}"
        r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|xox[abprs]-[A-Za-z0-9-]{10,}"
        r"|AIza[0-9A-Za-z_-]{35})"), None),
    "email": (re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), None),
    "card": (re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _card),
    # +country and/or (area) or area, then two groups of 3-4 digits: 415-555-0132,
    # (415) 555 0132, +44 20 7946 0958; dates (2026-12-02) and times do not match
    "phone": (re.compile(r"(?<!\d[ .-])(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?"
                         r"(?:\(\d{2,4}\)|\d{2,4})[ .-]\d{3,4}[ .-]\d{3,4}(?![ \w.-]?\d)"),
              lambda m: 7 <= sum(c.isdigit() for c in m.group(0)) <= 15),
}

#: The kinds the redaction guard knows.
REDACTION_KINDS: tuple[str, ...] = tuple(_DETECTORS)


def redact_text(text: str, kinds: Sequence[str] = REDACTION_KINDS,
                extra: Mapping[str, re.Pattern[str]] | None = None) -> tuple[str, list[str]]:
    """Replace what ``kinds`` detect in ``text`` by ``[REDACTED:kind]``.

    Args:
        text: the text.
        kinds: which detectors to use (:data:`REDACTION_KINDS`).
        extra: more detectors, ``kind -> pattern``.

    Returns:
        ``(redacted text, kinds found)``.
    """
    found: list[str] = []
    detectors = [(kind, *_DETECTORS[kind]) for kind in kinds]
    detectors += [(kind, pattern, None) for kind, pattern in (extra or {}).items()]
    for kind, pattern, accept in detectors:
        def replace(match: re.Match[str], kind: str = kind,
                    accept: Callable[[re.Match[str]], bool] | None = accept) -> str:
            if accept is not None and not accept(match):
                return match.group(0)
            found.append(kind)
            return f"[REDACTED:{kind}]"

        text = pattern.sub(replace, text)
    return text, sorted(set(found))


class RedactionGuard:
    """PII/secret redaction of prompts (``model``), replies (``model_output``) and tool
    results (``tool_output``).

    Args:
        kinds: the detectors used (:data:`REDACTION_KINDS` by default).
        stages: where to redact.
        extra: more detectors, ``kind -> compiled pattern``.
    """

    def __init__(self, kinds: Sequence[str] = REDACTION_KINDS,
                 stages: Sequence[str] = ("model", "model_output", "tool_output"),
                 extra: Mapping[str, re.Pattern[str]] | None = None) -> None:
        self.kinds = tuple(kinds)
        self.stages = frozenset(stages)
        self.extra = dict(extra or {})

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> RedactionGuard:
        """Build from ``[guards.redaction]``.

        Args:
            table: keys ``kinds``, ``stages``, ``patterns`` (``kind = "regex"``).

        Returns:
            the guard.

        Raises:
            ConfigError: malformed table, unknown kind or stage, bad regular expression.
        """
        unknown = sorted(set(table) - {"kinds", "stages", "patterns"})
        if unknown:
            raise ConfigError(f"[guards.redaction] unknown key(s) {unknown}; known: "
                              "['kinds', 'patterns', 'stages']")
        kinds = table.get("kinds", list(REDACTION_KINDS))
        if not isinstance(kinds, list) or not set(kinds) <= set(REDACTION_KINDS):
            raise ConfigError(f"[guards.redaction] kinds must be a list of "
                              f"{list(REDACTION_KINDS)}, got {kinds!r}")
        stages = table.get("stages", ["model", "model_output", "tool_output"])
        allowed = {"model", "model_output", "tool_output"}
        if not isinstance(stages, list) or not set(stages) <= allowed:
            raise ConfigError(f"[guards.redaction] stages must be a list of {sorted(allowed)},"
                              f" got {stages!r}")
        extra: dict[str, re.Pattern[str]] = {}
        for kind, pattern in _table(table, "patterns", "[guards.redaction]").items():
            try:
                extra[kind] = re.compile(str(pattern))
            except re.error as exc:
                raise ConfigError(f"guards.redaction.patterns.{kind}: invalid regular "
                                  f"expression: {exc}") from None
        return cls(kinds, stages, extra)

    async def check(self, request: GuardRequest) -> GuardVerdict | None:
        """Redact the payload's text.

        Args:
            request: a ``model``, ``model_output`` or ``tool_output`` request.

        Returns:
            a redaction when something was found, else None.
        """
        found: set[str] = set()
        payload = self._walk(request.payload, found)
        return GuardVerdict.redact(payload, sorted(found)) if found else None

    def _text(self, text: str, found: set[str]) -> str:
        redacted, kinds = redact_text(text, self.kinds, self.extra)
        found.update(kinds)
        return redacted

    def _walk(self, value: Any, found: set[str]) -> Any:
        if isinstance(value, str):
            return self._text(value, found)
        if isinstance(value, Message):
            if isinstance(value.content, str):
                return attrs.evolve(value, content=self._text(value.content, found))
            parts = [attrs.evolve(p, text=self._text(p.text, found))
                     if isinstance(p, TextPart) else p for p in value.content]
            return attrs.evolve(value, content=parts)
        if isinstance(value, Mapping):
            return {k: self._walk(v, found) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._walk(v, found) for v in value)
        return value


# ----------------------------------------------------------------------------- egress


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob: ``*`` and ``?`` stay within one folder, ``**`` spans folders; a
    trailing ``/**`` also matches the folder itself.

    Args:
        pattern: a ``/``-separated glob (``out/**``, ``notes/*.md``).

    Returns:
        the compiled pattern (matches whole paths).
    """
    out = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("/**", index) and index + 3 == len(pattern):
            out.append("(?:/.*)?")  # "docs/**": the folder itself and everything in it
            index += 3
        elif pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif pattern[index] == "*":
            out.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            out.append("[^/]")
            index += 1
        else:
            out.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(out) + r"\Z")


def _host_entry(entry: str) -> tuple[str, int | None]:
    text = entry.strip().lower()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast


_AMBIGUOUS_URL = re.compile(r"[\\\x00-\x20\x7f]")
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


async def _resolve(host: str) -> list[str]:
    import socket

    import anyio

    infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class EgressGuard:
    """The egress policy: checked on the arguments a tool declares in ``egress`` (stage
    ``tool``) and on what a tool asks again (``egress``: redirects).

    Rules (deny unless allowed):

    - ``url``: the URL's scheme is http or https and its host matches ``allow_hosts``
      (``name``, ``*.suffix``, ``host:port``, an IP address). A host that is not an IP address
      is resolved, and when any address is not public (private, loopback, link-local,
      reserved) the URL is denied unless ``allow_private`` is true: an allowed name whose DNS
      points inside the network is no bypass. An IP address is allowed only when listed.
    - ``command``: the program (first item of a list; a shell string is denied unless
      ``allow_shell``) is listed in ``allow_commands`` (a bare name matches a bare name; a
      path entry matches that exact path).
    - ``write``: the path (relative, normalised; absolute, ``~`` and ``..`` are denied)
      matches a ``write_paths`` glob; ``read``: likewise ``read_paths`` when it is set
      (unset: reads are not restricted).
    - ``code``: denied unless ``allow_code``.

    Args:
        allow_hosts: host entries; allow_commands: program entries.
        write_paths: globs; read_paths: globs or None (no read rule).
        allow_code, allow_shell, allow_private: see above.
        resolver: ``async host -> [address]`` (the system resolver by default).
    """

    stages = frozenset({"tool", "egress"})

    def __init__(self, *, allow_hosts: Sequence[str] = (), allow_commands: Sequence[str] = (),
                 write_paths: Sequence[str] = (), read_paths: Sequence[str] | None = None,
                 allow_code: bool = False, allow_shell: bool = False,
                 allow_private: bool = False,
                 resolver: Callable[[str], Any] | None = None) -> None:
        self.allow_hosts = [_host_entry(h) for h in allow_hosts]
        self.allow_commands = tuple(allow_commands)
        self.write_paths = [glob_regex(p) for p in write_paths]
        self.read_paths = None if read_paths is None else [glob_regex(p) for p in read_paths]
        self.allow_code = allow_code
        self.allow_shell = allow_shell
        self.allow_private = allow_private
        self.resolver = resolver or _resolve

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> EgressGuard:
        """Build from ``[guards.egress]``.

        Args:
            table: the table.

        Returns:
            the guard.

        Raises:
            ConfigError: unknown key or bad value.
        """
        lists = ("allow_hosts", "allow_commands", "write_paths", "read_paths")
        flags = ("allow_code", "allow_shell", "allow_private")
        unknown = sorted(set(table) - set(lists) - set(flags))
        if unknown:
            raise ConfigError(f"[guards.egress] unknown key(s) {unknown}; known: "
                              f"{sorted(lists + flags)}")
        options: dict[str, Any] = {}
        for key in lists:
            if key in table:
                value = table[key]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"[guards.egress] {key} must be a list of strings, got "
                                      f"{value!r}")
                options[key] = value
        for key in flags:
            if key in table:
                if not isinstance(table[key], bool):
                    raise ConfigError(f"[guards.egress] {key} must be true or false, got "
                                      f"{table[key]!r}")
                options[key] = table[key]
        for entry in options.get("allow_hosts", ()):
            try:
                _host_entry(entry)
            except ValueError:
                raise ConfigError(f"[guards.egress] allow_hosts: bad entry {entry!r} (host, "
                                  f"*.suffix, host:port or an IP address)") from None
        return cls(**options)

    async def check(self, request: GuardRequest) -> GuardVerdict | None:
        """Check a tool's declared arguments (or the hop it asks about).

        Args:
            request: a ``tool`` or ``egress`` request.

        Returns:
            a denial naming the rule, or None.
        """
        if request.stage == "egress":
            assert request.egress is not None
            kind, value = request.egress
            problem = await self.problem(kind, value)
            return GuardVerdict.deny(problem) if problem else None
        declared = egress_of(request.tool)
        properties = (request.tool.parameters or {}).get("properties") or {}
        for argument, kind in declared.items():
            if argument in request.payload:
                value = request.payload[argument]
            elif "default" in (properties.get(argument) or {}):
                value = properties[argument]["default"]  # what the tool will use
            else:
                continue
            problem = await self.problem(kind, value, shell=bool(request.payload.get("shell")))
            if problem is not None:
                return GuardVerdict.deny(f"{argument}: {problem}")
        return None

    async def problem(self, kind: str, value: Any, *, shell: bool = False) -> str | None:
        """Return why ``value`` of ``kind`` is refused, or None.

        Args:
            kind: an egress kind.
            value: the argument's value.
            shell: the command is a shell string.

        Returns:
            the reason, or None.
        """
        if kind == "url":
            return await self._url(str(value))
        if kind == "command":
            return self._command(value, shell)
        if kind in ("read", "write"):
            return self._path(kind, value)
        if kind == "code":
            return None if self.allow_code else "running code is not allowed " \
                "([guards.egress] allow_code)"
        return f"unknown egress kind {kind!r}"

    async def _url(self, url: str) -> str | None:
        from urllib.parse import urlsplit

        if _AMBIGUOUS_URL.search(url):
            # parsers disagree on these (WHATWG strips tabs, treats \ as /): refuse them
            return f"{url!r} contains a backslash, whitespace or a control character"
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower().rstrip(".")
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            return f"not a valid URL {url!r}: {exc}"
        if parts.scheme not in ("http", "https") or not host:
            return f"{url!r} is not an http(s) URL with a host"
        if "@" in parts.netloc:
            return f"{url!r} has credentials in its address (user@host): refused"
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")  # as httpx sends it
            except UnicodeError as exc:
                return f"host {host!r} is not a valid international name: {exc}"
        if _ip(host) is None and not _HOST_NAME.fullmatch(host):
            return f"host {host!r} is not a plain DNS name or IP address"
        shown = f"{host}:{port}"
        if not any(self._host_matches(entry, host, port) for entry in self.allow_hosts):
            return f"host {shown} is not in [guards.egress] allow_hosts"
        if _ip(host) is None and not self.allow_private:
            try:
                addresses = await self.resolver(host)
            except OSError as exc:
                return f"host {host} does not resolve: {exc}"
            private = [a for a in addresses if (ip := _ip(a)) is None or not _public(ip)]
            if private:
                return (f"host {host} resolves to a non-public address {private[0]} "
                        f"([guards.egress] allow_private)")
        return None

    @staticmethod
    def _host_matches(entry: tuple[str, int | None], host: str, port: int) -> bool:
        name, wanted = entry
        if wanted is not None and wanted != port:
            return False
        ip = _ip(host)
        if ip is not None:
            return _ip(name) == ip
        if name.startswith("*."):
            return host.endswith(name[1:])
        return host == name

    def _command(self, value: Any, shell: bool) -> str | None:
        if isinstance(value, str):
            if not (shell and self.allow_shell):
                return "shell command strings are not allowed ([guards.egress] allow_shell)"
            program = value.strip().split(maxsplit=1)[0] if value.strip() else ""
        elif isinstance(value, (list, tuple)) and value:
            program = str(value[0])
        else:
            return f"cannot tell the program of {value!r}"
        if program not in self.allow_commands:
            return f"command {program!r} is not in [guards.egress] allow_commands"
        return None

    def _path(self, kind: str, value: Any) -> str | None:
        rules = self.write_paths if kind == "write" else self.read_paths
        if rules is None:
            return None
        text = str(value).replace("\\", "/")
        if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text):
            return f"{kind} of {text!r}: only paths relative to the tool's root are allowed"
        normal = posixpath.normpath(text)
        if normal == ".." or normal.startswith("../"):
            return f"{kind} of {text!r} leaves the tool's root"
        if not any(rule.match(normal) for rule in rules):
            option = "write_paths" if kind == "write" else "read_paths"
            return f"{kind} of {normal!r} is not allowed by [guards.egress] {option}"
        return None


# ----------------------------------------------------------------------------- config


class InvalidConfigGuard:
    """Fail closed: stands in for the guards of a ``[guards]`` table that could not be built
    (without ``plugins.strict``, where the stack would not start), denying every stage with
    the configuration error, so a typo never turns the guards off.

    Args:
        error: the configuration error's message.
    """

    stages = STAGES

    def __init__(self, error: str) -> None:
        self.error = error

    async def check(self, request: GuardRequest) -> GuardVerdict:
        """Deny.

        Args:
            request: any request.

        Returns:
            a denial naming the configuration error.
        """
        return GuardVerdict.deny(f"the [guards] configuration is invalid, so every guarded "
                                 f"call is refused: {self.error}")



def guards_from_config(section: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Build the first-party guards of a ``[guards]`` table.

    Args:
        section: the ``[guards]`` table.

    Returns:
        ``(name, guard)`` pairs: ``validation``, ``redaction``, ``egress`` for the tables
        present, in that order.

    Raises:
        ConfigError: an unknown table or a malformed one.
    """
    builders = {"validation": ValidationGuard.from_table,
                "redaction": RedactionGuard.from_table,
                "egress": EgressGuard.from_table}
    unknown = sorted(set(section) - set(builders))
    if unknown:
        raise ConfigError(f"[guards] unknown table(s) {unknown}; known: {sorted(builders)}")
    built = []
    for name, build in builders.items():
        if name in section:
            table = section[name]
            if not isinstance(table, Mapping):
                raise ConfigError(f"[guards.{name}] must be a table, got {table!r}")
            built.append((name, build(table)))
    return built
