"""How to build and run a repository from source, for servers no registry publishes.

The recipe is derived from the repository's manifests by code, never from text a model wrote,
and it is structured data, not command lines: the builder composes the commands itself from a
fixed vocabulary (package manager, whether there is a build script, an entry point that is a
relative path or a plain name). So a repository can choose among known ways to build, never what
runs.

- Node: the package manager from `packageManager` or the lockfile (in the folder or, for a
  workspace member, at the repository root); install (`npm ci`, `pnpm install --frozen-lockfile`,
  `yarn install --frozen-lockfile`), then the `build` script if there is one; the entry point is
  the `bin` (the one named after the package, or the only one) or `main`.
- Python (with uv): `uv sync` where there is a `uv.lock`, else an install of the project
  (`pyproject.toml`/`setup.py`) or of `requirements.txt` into the folder's own `.venv`; the entry
  point is a `[project.scripts]` script, else `python -m PACKAGE` for a package with a
  `__main__.py`, else a top-level `server.py`/`main.py`.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from analysis.checkout import Checkout
from analysis.findings import EXECUTABLE_NAME, Findings

NODE_MANAGERS = ("npm", "pnpm", "yarn")
# A relative path inside the repository: no parent steps, no absolute paths, plain characters.
_RELATIVE_PATH = re.compile(r"(?!/)(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9._@+/-]{1,300}\Z")
_HTTP_PATH = re.compile(r"/[A-Za-z0-9/_-]{0,100}\Z")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
PYTHON_SCRIPTS = ("server.py", "main.py", "app.py")
MCP_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:mcp|fastmcp)\b", re.MULTILINE)


@dataclass
class Recipe:
    """What a build from source needs. `runnable` False comes with the reason."""

    runnable: bool
    reason: str = ""
    ecosystem: str = ""  # node, python
    manager: str = ""  # npm, pnpm, yarn, uv
    # Where the build runs (the workspace root for a workspace member) and where the server
    # is, both relative to the repository root.
    root: str = ""
    folder: str = ""
    lockfile: str = ""
    build_script: bool = False
    # node: a file to run with node; python: {"script": NAME} | {"module": NAME} | {"file": PATH}
    entry: dict[str, str] = field(default_factory=dict)
    python_install: str = ""  # sync, project, requirements
    transport: str = "stdio"
    # A Streamable HTTP server gets its port as PORT in its environment, or as this argument.
    port_argument: str = ""
    http_path: str = "/mcp"

    def as_meta(self) -> dict[str, Any]:
        data = asdict(self)
        return {
            "runnable": data["runnable"],
            "reason": data["reason"],
            "ecosystem": data["ecosystem"],
            "packageManager": data["manager"],
            "root": data["root"],
            "folder": data["folder"],
            "lockfile": data["lockfile"],
            "buildScript": data["build_script"],
            "entry": data["entry"],
            "pythonInstall": data["python_install"],
            "transport": data["transport"],
            "portArgument": data["port_argument"],
            "httpPath": data["http_path"],
        }

    @classmethod
    def from_meta(cls, data: dict[str, Any]) -> Recipe:
        """The recipe as stored, checked again: a stored row is not trusted to be well-formed."""
        recipe = cls(
            runnable=bool(data.get("runnable")),
            reason=str(data.get("reason") or ""),
            ecosystem=str(data.get("ecosystem") or ""),
            manager=str(data.get("packageManager") or ""),
            root=str(data.get("root") or ""),
            folder=str(data.get("folder") or ""),
            lockfile=str(data.get("lockfile") or ""),
            build_script=bool(data.get("buildScript")),
            entry={str(k): str(v) for k, v in (data.get("entry") or {}).items()},
            python_install=str(data.get("pythonInstall") or ""),
            transport=str(data.get("transport") or "stdio"),
            port_argument=str(data.get("portArgument") or ""),
            http_path=str(data.get("httpPath") or "/mcp"),
        )
        problem = recipe.problem()
        if problem:
            raise ValueError(problem)
        return recipe

    def problem(self) -> str:
        """Why this recipe must not be built, or ''."""
        if not self.runnable:
            return self.reason or "the repository cannot be built from source"
        for label, path in (("root", self.root), ("folder", self.folder)):
            if path and not _RELATIVE_PATH.match(path):
                return f"the {label} {path!r} is not a plain relative path"
        if self.ecosystem == "node":
            if self.manager not in NODE_MANAGERS:
                return f"unknown package manager {self.manager!r}"
            if set(self.entry) != {"file"} or not _RELATIVE_PATH.match(self.entry["file"]):
                return "a Node entry point must be one relative file"
        elif self.ecosystem == "python":
            if self.manager != "uv" or self.python_install not in (
                "sync",
                "project",
                "requirements",
            ):
                return "a Python build uses uv to sync, install the project or its requirements"
            kind, value = next(iter(self.entry.items()), ("", ""))
            checks = {"script": EXECUTABLE_NAME, "module": _MODULE, "file": _RELATIVE_PATH}
            if len(self.entry) != 1 or kind not in checks or not checks[kind].match(value):
                return "a Python entry point must be one script, module or relative file"
        else:
            return f"unknown ecosystem {self.ecosystem!r}"
        if self.transport not in ("stdio", "streamable-http"):
            return f"the {self.transport} transport cannot be served from source yet"
        if self.port_argument not in ("", "--port") or not _HTTP_PATH.match(self.http_path):
            return "the HTTP port argument or path is not one Catwalk passes"
        return ""


def derive(root: Checkout, subfolder: str, findings: Findings, transport: str) -> Recipe:
    """The recipe for the server in `subfolder` of the repository checked out at `root`."""
    folder = subfolder.strip("/")
    here = Checkout(root.root / folder) if folder else root
    if here.top_level("package.json"):
        recipe = _node(root, here, folder)
    elif here.top_level("pyproject.toml", "setup.py", "requirements.txt"):
        recipe = _python(here, folder)
    elif here.top_level("Dockerfile"):
        recipe = Recipe(
            runnable=False,
            reason="The repository only ships a Dockerfile; building images is not supported yet.",
        )
    else:
        recipe = Recipe(
            runnable=False,
            reason="No package.json, pyproject.toml, setup.py or requirements.txt was found.",
        )
    if recipe.runnable:
        recipe.transport = transport
        if transport == "streamable-http" and "--port" in findings.arguments:
            recipe.port_argument = "--port"
        problem = recipe.problem()
        if problem:
            return Recipe(runnable=False, reason=f"The derived recipe is unusable: {problem}.")
    return recipe


def _node(root: Checkout, here: Checkout, folder: str) -> Recipe:
    try:
        manifest = json.loads(here.text("package.json") or "")
    except ValueError:
        return Recipe(runnable=False, reason="package.json is not valid JSON.")
    if not isinstance(manifest, dict):
        return Recipe(runnable=False, reason="package.json is not a JSON object.")
    workspace_root, manager, lockfile = _node_workspace(root, here, folder, manifest)
    entry = _node_entry(here, manifest)
    if not entry:
        return Recipe(
            runnable=False,
            reason="package.json names no bin or main file to run.",
            ecosystem="node",
            manager=manager,
        )
    scripts = manifest.get("scripts") if isinstance(manifest.get("scripts"), dict) else {}
    return Recipe(
        runnable=True,
        ecosystem="node",
        manager=manager,
        root=workspace_root,
        folder=folder,
        lockfile=lockfile,
        build_script=isinstance(scripts.get("build"), str),
        entry={"file": str(PurePosixPath(folder, entry)) if folder else entry},
    )


def _node_workspace(
    root: Checkout, here: Checkout, folder: str, manifest: dict
) -> tuple[str, str, str]:
    """(where to install, package manager, lockfile): the member's own folder, or the nearest
    ancestor holding a lockfile (a workspace root)."""
    declared = str(manifest.get("packageManager") or "").split("@", 1)[0]
    parts = PurePosixPath(folder).parts if folder else ()
    for depth in range(len(parts), -1, -1):
        candidate = "/".join(parts[:depth])
        checkout = Checkout(root.root / candidate) if candidate else root
        for lockfile, manager in (
            ("pnpm-lock.yaml", "pnpm"),
            ("yarn.lock", "yarn"),
            ("package-lock.json", "npm"),
        ):
            if checkout.top_level(lockfile):
                return candidate, declared if declared in NODE_MANAGERS else manager, lockfile
    return folder, declared if declared in NODE_MANAGERS else "npm", ""


def _node_entry(here: Checkout, manifest: dict) -> str:
    bins = manifest.get("bin")
    name = str(manifest.get("name") or "").rsplit("/", 1)[-1]
    path = ""
    if isinstance(bins, str):
        path = bins
    elif isinstance(bins, dict) and bins:
        chosen = bins.get(name) if name in bins else next(iter(bins.values()))
        path = chosen if isinstance(chosen, str) else ""
    if not path and isinstance(manifest.get("main"), str):
        path = manifest["main"]
    path = path.removeprefix("./")
    return path if path and _RELATIVE_PATH.match(path) else ""


def _python(here: Checkout, folder: str) -> Recipe:
    scripts: dict[str, str] = {}
    has_project = False
    pyproject = here.top_level("pyproject.toml")
    if pyproject:
        try:
            document = tomllib.loads(here.text(pyproject) or "")
        except tomllib.TOMLDecodeError:
            return Recipe(runnable=False, reason="pyproject.toml is not valid TOML.")
        project = document.get("project") if isinstance(document.get("project"), dict) else {}
        has_project = bool(project.get("name"))
        if isinstance(project.get("scripts"), dict):
            scripts = {str(k): str(v) for k, v in project["scripts"].items()}
    has_project = has_project or bool(here.top_level("setup.py"))
    if here.top_level("uv.lock") and has_project:
        install = "sync"
    elif has_project:
        install = "project"
    elif here.top_level("requirements.txt"):
        install = "requirements"
    else:
        return Recipe(runnable=False, reason="pyproject.toml declares no project to install.")
    entry = _python_entry(here, scripts if install != "requirements" else {})
    if not entry:
        return Recipe(
            runnable=False,
            reason="No entry point was found: no [project.scripts], no package with a "
            "__main__.py, no server.py or main.py.",
            ecosystem="python",
            manager="uv",
        )
    return Recipe(
        runnable=True,
        ecosystem="python",
        manager="uv",
        root=folder,
        folder=folder,
        lockfile="uv.lock" if install == "sync" else "",
        entry=entry,
        python_install=install,
    )


def _python_entry(here: Checkout, scripts: dict[str, str]) -> dict[str, str]:
    usable = [name for name in scripts if EXECUTABLE_NAME.match(name)]
    if usable:
        return {"script": usable[0]}
    for path in here.files:
        parts = PurePosixPath(path).parts
        # `package/__main__.py` or `src/package/__main__.py`
        if parts[-1] == "__main__.py" and len(parts) in (2, 3):
            module = parts[-2]
            if _MODULE.match(module) and (len(parts) == 2 or parts[0] == "src"):
                return {"module": module}
    for name in PYTHON_SCRIPTS:
        if name in here.files and MCP_IMPORT.search(here.text(name) or ""):
            return {"file": name}
    return {}
