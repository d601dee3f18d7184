"""Build recipes for repositories no registry publishes: derived from manifests, structured, and
checked again when read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.checkout import Checkout
from analysis.findings import Findings
from analysis.recipe import Recipe, derive


def repository(root: Path, files: dict[str, str]) -> Checkout:
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return Checkout(root)


def package_json(**fields) -> str:
    return json.dumps({"name": "weather-mcp", "version": "0.1.0", **fields})


def test_typescript_with_a_build_step_installs_builds_and_runs_its_bin(tmp_path):
    checkout = repository(
        tmp_path,
        {
            "package.json": package_json(
                bin={"weather-mcp": "./dist/index.js"}, scripts={"build": "tsc"}
            ),
            "package-lock.json": "{}",
            "src/index.ts": "",
        },
    )

    recipe = derive(checkout, "", Findings(), "stdio")

    assert recipe == Recipe(
        runnable=True,
        ecosystem="node",
        manager="npm",
        root="",
        folder="",
        lockfile="package-lock.json",
        build_script=True,
        entry={"file": "dist/index.js"},
    )


def test_plain_javascript_without_a_lockfile_runs_its_main(tmp_path):
    checkout = repository(tmp_path, {"package.json": package_json(main="server.js")})

    recipe = derive(checkout, "", Findings(), "stdio")

    assert (recipe.manager, recipe.lockfile, recipe.build_script, recipe.entry) == (
        "npm",
        "",
        False,
        {"file": "server.js"},
    )


def test_a_pnpm_workspace_member_builds_at_the_workspace_root(tmp_path):
    checkout = repository(
        tmp_path,
        {
            "package.json": json.dumps({"name": "root", "private": True}),
            "pnpm-lock.yaml": "lockfileVersion: '9.0'\n",
            "pnpm-workspace.yaml": "packages:\n  - packages/*\n",
            "packages/server/package.json": package_json(
                name="@acme/server", bin="dist/cli.js", scripts={"build": "tsc"}
            ),
        },
    )

    recipe = derive(checkout, "packages/server", Findings(), "stdio")

    assert (recipe.manager, recipe.root, recipe.folder, recipe.entry) == (
        "pnpm",
        "",
        "packages/server",
        {"file": "packages/server/dist/cli.js"},
    )
    assert recipe.lockfile == "pnpm-lock.yaml" and recipe.build_script


def test_python_with_project_scripts_runs_its_script(tmp_path):
    checkout = repository(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "weather-mcp"\nversion = "0.1.0"\n'
            '[project.scripts]\nweather-mcp = "weather_mcp:main"\n',
            "weather_mcp/__init__.py": "",
        },
    )

    recipe = derive(checkout, "", Findings(), "stdio")

    assert (recipe.ecosystem, recipe.manager, recipe.python_install, recipe.entry) == (
        "python",
        "uv",
        "project",
        {"script": "weather-mcp"},
    )


def test_python_with_a_uv_lock_is_synced(tmp_path):
    checkout = repository(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "w"\nversion = "1"\n'
            '[project.scripts]\nw = "w:m"\n',
            "uv.lock": "",
        },
    )

    assert derive(checkout, "", Findings(), "stdio").python_install == "sync"


def test_python_with_only_requirements_runs_its_module(tmp_path):
    checkout = repository(
        tmp_path,
        {
            "requirements.txt": "mcp\n",
            "weather/__init__.py": "",
            "weather/__main__.py": "from mcp.server.fastmcp import FastMCP\n",
        },
    )

    recipe = derive(checkout, "", Findings(), "stdio")

    assert (recipe.python_install, recipe.entry) == ("requirements", {"module": "weather"})


def test_python_with_only_requirements_and_a_server_file_runs_the_file(tmp_path):
    checkout = repository(
        tmp_path,
        {"requirements.txt": "mcp\n", "server.py": "from mcp.server.fastmcp import FastMCP\n"},
    )

    assert derive(checkout, "", Findings(), "stdio").entry == {"file": "server.py"}


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"Dockerfile": "FROM node:20\n"}, "only ships a Dockerfile"),
        ({"README.md": "# hello\n"}, "No package.json"),
        ({"package.json": package_json()}, "names no bin or main"),
        ({"package.json": package_json(bin="../../etc/passwd")}, "names no bin or main"),
        ({"package.json": package_json(main="/bin/sh")}, "names no bin or main"),
        ({"requirements.txt": "mcp\n"}, "No entry point"),
    ],
)
def test_what_cannot_be_built_says_why(tmp_path, files, reason):
    recipe = derive(repository(tmp_path, files), "", Findings(), "stdio")

    assert not recipe.runnable
    assert reason in recipe.reason


def test_a_stored_recipe_is_checked_again_when_read_back(tmp_path):
    checkout = repository(tmp_path, {"package.json": package_json(main="server.js")})
    stored = derive(checkout, "", Findings(), "stdio").as_meta()

    assert Recipe.from_meta(stored).entry == {"file": "server.js"}
    for tampered in (
        {**stored, "entry": {"file": "../../../bin/sh"}},
        {**stored, "packageManager": "curl"},
        {**stored, "root": "/etc"},
        {**stored, "transport": "sse"},
        {**stored, "ecosystem": "python", "entry": {"script": "--eval"}},
    ):
        with pytest.raises(ValueError):
            Recipe.from_meta(tampered)
