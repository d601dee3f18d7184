"""What the analysis layers find, each fact with the places it came from.

Layers add facts to one `Findings`; `serverjson.build` turns them into the output document. A
fact seen by several layers keeps every source, so the page can say where it came from and how
sure Catwalk is. Layer names, strongest first: a manifest is the author's own declaration; a
static scan is what the code reads; Claude's advice and introspection come later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MANIFEST = "manifest"
STATIC = "static"
DOCUMENTATION = "documentation"
CLAUDE = "claude"
REGISTRY = "registry"
INTROSPECTION = "introspection"

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
# A package's executable as a manifest may name it: a plain command name, never a path or an
# option. A repository could otherwise name `/bin/sh` and have this host run it.
EXECUTABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}\Z")


def plain_executables(names: object) -> tuple[str, ...]:
    """The names that are plain command names; the rest are dropped."""
    if not isinstance(names, (list, tuple, dict)):
        return ()
    return tuple(name for name in names if isinstance(name, str) and EXECUTABLE_NAME.match(name))


FORMATS = ("string", "number", "boolean", "filepath")


@dataclass(frozen=True)
class Source:
    layer: str
    file: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "file": self.file, "detail": self.detail}


@dataclass
class Setting:
    """An environment variable or a command-line argument the server takes."""

    name: str
    description: str = ""
    required: bool | None = None
    secret: bool | None = None
    format: str | None = None
    default: str | None = None
    choices: list[str] | None = None
    positional: bool = False
    repeated: bool = False
    sources: list[Source] = field(default_factory=list)

    @property
    def layers(self) -> set[str]:
        return {source.layer for source in self.sources}

    def merge(self, source: Source, **facts) -> None:
        """Add a source; fill facts still unknown (the first layer to say something wins)."""
        if source not in self.sources:
            self.sources.append(source)
        for key, value in facts.items():
            if value in (None, "", []):
                continue
            if getattr(self, key) in (None, "", []):
                setattr(self, key, value)


@dataclass(frozen=True)
class PackageCandidate:
    """A published package the repository may be, as one manifest names it."""

    registry: str  # npm, pypi, oci
    identifier: str
    version: str
    source: Source
    executables: tuple[str, ...] = ()
    transport: str = ""
    runtime_hint: str = ""


@dataclass
class Findings:
    name: str = ""
    title: str = ""
    description: str = ""
    description_source: Source | None = None
    version: str = ""
    packages: list[PackageCandidate] = field(default_factory=list)
    variables: dict[str, Setting] = field(default_factory=dict)
    arguments: dict[str, Setting] = field(default_factory=dict)
    transports: dict[str, list[Source]] = field(default_factory=dict)
    # Environment variable names the documentation mentions, with where: corroboration only.
    mentioned: dict[str, list[Source]] = field(default_factory=dict)
    # What a build from source would start from (package manager, entry points), by manifest.
    build: dict[str, object] = field(default_factory=dict)
    # The README's client configuration blocks: command, args and where.
    client_configs: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def describe(self, text: str, source: Source) -> None:
        text = " ".join(text.split())
        if text and not self.description:
            self.description = text
            self.description_source = source

    def variable(self, name: str, source: Source, **facts) -> Setting | None:
        if not ENV_NAME.match(name):
            return None
        setting = self.variables.setdefault(name, Setting(name=name))
        setting.merge(source, **facts)
        return setting

    def argument(
        self,
        name: str,
        source: Source,
        *,
        positional: bool = False,
        repeated: bool = False,
        **facts,
    ) -> Setting:
        setting = self.arguments.setdefault(
            name, Setting(name=name, positional=positional, repeated=repeated)
        )
        setting.merge(source, **facts)
        return setting

    def transport(self, kind: str, source: Source) -> None:
        sources = self.transports.setdefault(kind, [])
        if source not in sources:
            sources.append(source)

    def mention(self, name: str, source: Source) -> None:
        if ENV_NAME.match(name):
            sources = self.mentioned.setdefault(name, [])
            if len(sources) < 5 and source not in sources:
                sources.append(source)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
