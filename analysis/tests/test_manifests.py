"""Layer 1, the manifests: each test writes a tiny repository, reads it the way an analysis does
(`read_manifests` over a `Checkout`) and checks exactly what the findings then hold."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from analysis.checkout import Checkout
from analysis.findings import DOCUMENTATION, MANIFEST, Findings, PackageCandidate, Source
from analysis.manifests import read_manifests

FENCE = "```"


def write(root: Path, files: dict[str, str | dict]) -> None:
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(content) if isinstance(content, dict) else textwrap.dedent(content)
        target.write_text(text)


def manifests(root: Path, files: dict[str, str | dict]) -> Findings:
    write(root, files)
    findings = Findings()
    read_manifests(Checkout(root), findings)
    return findings


def readme_block(body: str, info: str = "json") -> str:
    return f"# Server\n\n{FENCE}{info}\n{textwrap.dedent(body).strip()}\n{FENCE}\n"


# server.json


SERVER_JSON = {
    "name": "io.github.acme/weather",
    "title": "Weather",
    "description": "Forecasts for MCP clients.",
    "version": "2.0.0",
    "packages": [
        {
            "registryType": "npm",
            "identifier": "@acme/weather",
            "version": "2.0.0",
            "runtimeHint": "npx",
            "transport": {"type": "stdio"},
            "environmentVariables": [
                {
                    "name": "WEATHER_API_KEY",
                    "description": "Key from the dashboard",
                    "isRequired": True,
                    "isSecret": True,
                },
                {
                    "name": "WEATHER_UNITS",
                    "format": "string",
                    "default": "metric",
                    "choices": ["metric", "imperial"],
                },
            ],
            "packageArguments": [
                {"type": "named", "name": "--region", "description": "Region code"},
                {"type": "positional", "valueHint": "directory", "isRequired": True},
            ],
        }
    ],
}


def test_server_json_names_the_server_and_describes_it(tmp_path):
    findings = manifests(tmp_path, {"server.json": SERVER_JSON})

    assert (findings.name, findings.title, findings.version) == (
        "io.github.acme/weather",
        "Weather",
        "2.0.0",
    )
    assert findings.description == "Forecasts for MCP clients."
    assert findings.description_source == Source(MANIFEST, "server.json")


def test_server_json_package_is_a_candidate_with_its_transport_and_runtime_hint(tmp_path):
    findings = manifests(tmp_path, {"server.json": SERVER_JSON})

    assert findings.packages == [
        PackageCandidate(
            registry="npm",
            identifier="@acme/weather",
            version="2.0.0",
            source=Source(MANIFEST, "server.json", "packages[0]"),
            transport="stdio",
            runtime_hint="npx",
        )
    ]
    assert findings.transports == {"stdio": [Source(MANIFEST, "server.json", "packages[0]")]}


def test_server_json_environment_variables_keep_every_declared_fact(tmp_path):
    findings = manifests(tmp_path, {"server.json": SERVER_JSON})

    key, units = findings.variables["WEATHER_API_KEY"], findings.variables["WEATHER_UNITS"]
    assert (key.description, key.required, key.secret) == ("Key from the dashboard", True, True)
    assert (units.format, units.default, units.choices) == (
        "string",
        "metric",
        ["metric", "imperial"],
    )
    assert key.sources == [Source(MANIFEST, "server.json", "packages[0]")]


def test_server_json_package_arguments_are_named_or_positional(tmp_path):
    findings = manifests(tmp_path, {"server.json": SERVER_JSON})

    region, directory = findings.arguments["--region"], findings.arguments["directory"]
    assert (region.positional, region.description) == (False, "Region code")
    assert (directory.positional, directory.required) == (True, True)


def test_broken_server_json_is_a_warning_and_the_other_manifests_still_count(tmp_path):
    findings = manifests(
        tmp_path,
        {
            "server.json": '{"name": "io.github.acme/weather",',
            "package.json": {"name": "weather-mcp", "version": "1.0.0"},
        },
    )

    assert len(findings.warnings) == 1
    assert findings.warnings[0].startswith("server.json: not valid JSON")
    assert [package.identifier for package in findings.packages] == ["weather-mcp"]


def test_server_json_that_is_not_an_object_is_a_warning(tmp_path):
    findings = manifests(tmp_path, {"server.json": "[1, 2]"})

    assert findings.warnings == ["server.json: not a JSON object"]
    assert findings.packages == []


# smithery.yaml


SMITHERY = """\
startCommand:
  type: stdio
  configSchema:
    type: object
    required: [apiKey]
    properties:
      apiKey:
        type: string
        format: password
        description: Your Acme API key
      timeout:
        type: integer
        default: 30
        description: Seconds to wait
      mode:
        type: string
        enum: [fast, thorough]
      verbose:
        type: boolean
  commandFunction: |-
    (config) => ({
      command: 'node',
      args: ['dist/index.js'],
      env: {
        ACME_API_KEY: config.apiKey,
        ACME_TIMEOUT: String(config.timeout),
        ACME_MODE: config["mode"],
        ACME_VERBOSE: config.verbose,
        ACME_FIXED: "1"
      }
    })
"""


def test_smithery_maps_env_names_to_config_schema_properties(tmp_path):
    findings = manifests(tmp_path, {"smithery.yaml": SMITHERY})

    key = findings.variables["ACME_API_KEY"]
    assert (key.description, key.required) == ("Your Acme API key", True)
    assert key.sources == [Source(MANIFEST, "smithery.yaml", "configSchema.apiKey")]


def test_smithery_password_format_marks_the_variable_secret(tmp_path):
    findings = manifests(tmp_path, {"smithery.yaml": SMITHERY})

    assert findings.variables["ACME_API_KEY"].secret is True
    assert findings.variables["ACME_TIMEOUT"].secret is None


def test_smithery_schema_type_becomes_the_format_and_default_is_kept(tmp_path):
    findings = manifests(tmp_path, {"smithery.yaml": SMITHERY})

    timeout, verbose = findings.variables["ACME_TIMEOUT"], findings.variables["ACME_VERBOSE"]
    assert (timeout.format, timeout.default, timeout.required) == ("number", "30", False)
    assert verbose.format == "boolean"


def test_smithery_enum_becomes_choices_through_a_bracketed_config_reference(tmp_path):
    findings = manifests(tmp_path, {"smithery.yaml": SMITHERY})

    mode = findings.variables["ACME_MODE"]
    assert (mode.format, mode.choices) == ("string", ["fast", "thorough"])
    assert mode.sources == [Source(MANIFEST, "smithery.yaml", "configSchema.mode")]


def test_smithery_env_keys_not_mapped_to_config_are_still_variables(tmp_path):
    findings = manifests(tmp_path, {"smithery.yaml": SMITHERY})

    fixed = findings.variables["ACME_FIXED"]
    assert (fixed.description, fixed.required, fixed.secret) == ("", None, None)
    assert fixed.sources == [Source(MANIFEST, "smithery.yaml", "commandFunction env")]


@pytest.mark.parametrize(("kind", "transport"), [("stdio", "stdio"), ("http", "streamable-http")])
def test_smithery_start_command_type_names_the_transport(tmp_path, kind, transport):
    findings = manifests(tmp_path, {"smithery.yaml": f"startCommand:\n  type: {kind}\n"})

    assert findings.transports == {transport: [Source(MANIFEST, "smithery.yaml")]}


def test_broken_smithery_yaml_is_a_warning(tmp_path):
    findings = manifests(tmp_path, {"smithery.yaml": "startCommand: [unclosed\n"})

    assert len(findings.warnings) == 1
    assert findings.warnings[0].startswith("smithery.yaml: not valid YAML")


def test_smithery_optional_chaining_still_maps_to_the_schema_property(tmp_path):
    smithery = SMITHERY.replace("config.apiKey", "config?.apiKey")
    findings = manifests(tmp_path, {"smithery.yaml": smithery})

    assert findings.variables["ACME_API_KEY"].description == "Your Acme API key"


# package.json


def test_package_json_name_and_version_make_an_npm_candidate_run_with_npx(tmp_path):
    findings = manifests(
        tmp_path,
        {"package.json": {"name": "@acme/weather", "version": "1.4.0", "bin": "dist/index.js"}},
    )

    assert findings.packages == [
        PackageCandidate(
            registry="npm",
            identifier="@acme/weather",
            version="1.4.0",
            source=Source(MANIFEST, "package.json"),
            executables=("weather",),
            runtime_hint="npx",
        )
    ]
    assert findings.version == "1.4.0"


def test_package_json_bin_object_lists_every_executable(tmp_path):
    findings = manifests(
        tmp_path,
        {
            "package.json": {
                "name": "acme-tools",
                "version": "1.0.0",
                "bin": {"acme-weather": "dist/w.js", "acme-maps": "dist/m.js"},
            }
        },
    )

    assert findings.packages[0].executables == ("acme-weather", "acme-maps")
    assert findings.build["node"]["bin"] == ["acme-weather", "acme-maps"]


def test_package_json_bin_names_that_are_paths_are_dropped(tmp_path):
    findings = manifests(
        tmp_path,
        {"package.json": {"name": "x", "version": "1.0.0", "bin": {"/bin/sh": "a.js", "x": "b"}}},
    )

    assert findings.packages[0].executables == ("x",)


def test_package_json_mcp_name_becomes_the_server_name(tmp_path):
    findings = manifests(
        tmp_path,
        {"package.json": {"name": "w", "version": "1.0.0", "mcpName": "io.github.acme/weather"}},
    )

    assert findings.name == "io.github.acme/weather"


def test_private_package_json_warns_and_offers_no_package(tmp_path):
    findings = manifests(
        tmp_path,
        {"package.json": {"name": "weather", "version": "1.0.0", "private": True}},
    )

    assert findings.packages == []
    assert findings.warnings == ["package.json is marked private: it is not published to npm."]
    assert findings.build["node"]["manifest"] == "package.json"


def test_package_json_build_facts_name_the_sdk_and_the_build_script(tmp_path):
    findings = manifests(
        tmp_path,
        {
            "package.json": {
                "name": "weather",
                "version": "1.0.0",
                "main": "dist/index.js",
                "scripts": {"build": "tsc"},
                "dependencies": {"@modelcontextprotocol/sdk": "^1.0.0"},
            }
        },
    )

    assert findings.build["node"] == {
        "manifest": "package.json",
        "packageManager": "npm",
        "buildScript": True,
        "bin": [],
        "main": "dist/index.js",
        "usesMcpSdk": True,
    }


@pytest.mark.parametrize(
    ("lockfile", "manager"),
    [
        ("pnpm-lock.yaml", "pnpm"),
        ("yarn.lock", "yarn"),
        ("bun.lockb", "bun"),
        ("package-lock.json", "npm"),
    ],
)
def test_package_manager_is_told_by_the_lockfile(tmp_path, lockfile, manager):
    findings = manifests(
        tmp_path, {"package.json": {"name": "w", "version": "1.0.0"}, lockfile: "lock\n"}
    )

    assert findings.build["node"]["packageManager"] == manager


def test_declared_package_manager_wins_over_the_lockfile(tmp_path):
    findings = manifests(
        tmp_path,
        {
            "package.json": {"name": "w", "version": "1.0.0", "packageManager": "yarn@4.1.0"},
            "pnpm-lock.yaml": "lock\n",
        },
    )

    assert findings.build["node"]["packageManager"] == "yarn"


def test_broken_package_json_is_a_warning(tmp_path):
    findings = manifests(tmp_path, {"package.json": "{nope"})

    assert len(findings.warnings) == 1
    assert findings.warnings[0].startswith("package.json: not valid JSON")


# pyproject.toml and setup.py


def test_pyproject_pep_621_names_a_pypi_candidate_with_its_scripts(tmp_path):
    findings = manifests(
        tmp_path,
        {
            "pyproject.toml": """\
                [project]
                name = "mcp-server-weather"
                version = "0.3.1"
                description = "Weather for MCP."
                dependencies = ["mcp>=1.2", "httpx"]

                [project.scripts]
                mcp-server-weather = "weather.server:main"
            """
        },
    )

    assert findings.packages == [
        PackageCandidate(
            registry="pypi",
            identifier="mcp-server-weather",
            version="0.3.1",
            source=Source(MANIFEST, "pyproject.toml"),
            executables=("mcp-server-weather",),
            runtime_hint="uvx",
        )
    ]
    assert findings.build["python"]["usesMcpSdk"] is True
    assert findings.description == "Weather for MCP."


def test_pyproject_poetry_section_is_read_when_there_is_no_project_table(tmp_path):
    findings = manifests(
        tmp_path,
        {
            "pyproject.toml": """\
                [tool.poetry]
                name = "weather-mcp"
                version = "1.1.0"

                [tool.poetry.scripts]
                weather = "weather_mcp:run"

                [tool.poetry.dependencies]
                mcp = "^1.0"
            """
        },
    )

    package = findings.packages[0]
    assert (package.identifier, package.version, package.executables) == (
        "weather-mcp",
        "1.1.0",
        ("weather",),
    )
    assert findings.build["python"]["scripts"] == {"weather": "weather_mcp:run"}
    assert findings.build["python"]["usesMcpSdk"] is True


def test_pyproject_dynamic_version_warns_and_leaves_the_version_empty(tmp_path):
    findings = manifests(
        tmp_path,
        {"pyproject.toml": '[project]\nname = "weather-mcp"\ndynamic = ["version"]\n'},
    )

    assert [(p.identifier, p.version) for p in findings.packages] == [("weather-mcp", "")]
    assert findings.warnings == [
        "pyproject.toml sets its version dynamically; the published version is used."
    ]


def test_broken_pyproject_is_a_warning(tmp_path):
    findings = manifests(tmp_path, {"pyproject.toml": "[project\nname = 1\n"})

    assert len(findings.warnings) == 1
    assert findings.warnings[0].startswith("pyproject.toml / setup.py: not valid TOML")


def test_setup_py_names_a_package_with_its_console_scripts(tmp_path):
    findings = manifests(
        tmp_path,
        {
            "setup.py": """\
                from setuptools import setup

                setup(
                    name="weather-mcp",
                    version="0.9.0",
                    install_requires=["mcp==1.2.0"],
                    entry_points={
                        "console_scripts": [
                            "weather-mcp = weather_mcp.server:main",
                            "weather-admin=weather_mcp.admin:run",
                        ]
                    },
                )
            """
        },
    )

    assert findings.packages == [
        PackageCandidate(
            registry="pypi",
            identifier="weather-mcp",
            version="0.9.0",
            source=Source(MANIFEST, "setup.py"),
            executables=("weather-mcp", "weather-admin"),
            runtime_hint="uvx",
        )
    ]
    assert findings.build["python"]["scripts"] == {
        "weather-mcp": "weather_mcp.server:main",
        "weather-admin": "weather_mcp.admin:run",
    }


def test_setup_py_is_read_when_pyproject_only_configures_tools(tmp_path):
    findings = manifests(
        tmp_path,
        {
            "pyproject.toml": '[build-system]\nrequires = ["setuptools"]\n\n[tool.black]\n',
            "setup.py": 'from setuptools import setup\nsetup(name="w-mcp", version="0.9.0")\n',
        },
    )

    assert [(p.identifier, p.version) for p in findings.packages] == [("w-mcp", "0.9.0")]


# .env.example


def test_env_example_comments_become_descriptions(tmp_path):
    findings = manifests(
        tmp_path,
        {
            ".env.example": """\
                # Your key, from the dashboard
                # (keep it safe)
                WEATHER_API_KEY=

                export WEATHER_UNITS=metric
            """
        },
    )

    key, units = findings.variables["WEATHER_API_KEY"], findings.variables["WEATHER_UNITS"]
    assert key.description == "Your key, from the dashboard (keep it safe)"
    assert key.sources == [Source(MANIFEST, ".env.example", "line 3")]
    assert units.description == ""


def test_env_example_marks_secret_looking_names_secret(tmp_path):
    findings = manifests(tmp_path, {".env.sample": "WEATHER_API_KEY=\nWEATHER_UNITS=metric\n"})

    assert findings.variables["WEATHER_API_KEY"].secret is True
    assert findings.variables["WEATHER_UNITS"].secret is None


# README


JSONC_BLOCK = """\
{
  // Claude Desktop's configuration
  "mcpServers": {
    "weather": {
      "command": "npx",
      "args": ["-y", "@acme/weather",],
      "env": {
        "WEATHER_API_KEY": "<your key>", // from the dashboard
        "WEATHER_BASE_URL": "https://api.example.com/v1", /* optional */
      },
    },
  },
}
"""


def test_readme_mcp_servers_block_env_keys_become_variables_with_the_readme_source(tmp_path):
    findings = manifests(tmp_path, {"README.md": readme_block(JSONC_BLOCK, "jsonc")})

    assert list(findings.variables) == ["WEATHER_API_KEY", "WEATHER_BASE_URL"]
    assert findings.variables["WEATHER_API_KEY"].sources == [
        Source(MANIFEST, "README.md", "mcpServers block, line 3")
    ]


def test_readme_block_env_keys_that_look_secret_are_secret(tmp_path):
    findings = manifests(tmp_path, {"README.md": readme_block(JSONC_BLOCK)})

    assert findings.variables["WEATHER_API_KEY"].secret is True
    assert findings.variables["WEATHER_BASE_URL"].secret is None


def test_readme_block_command_and_args_are_kept_as_a_client_config(tmp_path):
    findings = manifests(tmp_path, {"README.md": readme_block(JSONC_BLOCK)})

    assert findings.client_configs == [
        {
            "command": "npx",
            "args": ["-y", "@acme/weather"],
            "source": Source(MANIFEST, "README.md", "mcpServers block, line 3").as_dict(),
        }
    ]


def test_readme_snippet_without_outer_braces_is_read(tmp_path):
    snippet = """\
        "mcpServers": {
          "weather": {"command": "uvx", "args": ["weather-mcp"], "env": {"WEATHER_TOKEN": ""}}
        },
    """
    findings = manifests(tmp_path, {"README.md": readme_block(snippet)})

    assert list(findings.variables) == ["WEATHER_TOKEN"]


def test_readme_vs_code_servers_key_is_read(tmp_path):
    block = """\
        {"servers": {"weather": {"type": "stdio", "command": "npx",
                                 "args": ["@acme/weather"], "env": {"WEATHER_REGION": "eu"}}}}
    """
    findings = manifests(tmp_path, {"README.md": readme_block(block)})

    assert list(findings.variables) == ["WEATHER_REGION"]


def test_readme_docker_block_env_keys_are_variables_marked_docker(tmp_path):
    block = """\
        {"mcpServers": {"weather": {
          "command": "docker",
          "args": ["run", "-i", "--rm", "-e", "WEATHER_API_KEY", "acme/weather"],
          "env": {"WEATHER_API_KEY": "<key>"}
        }}}
    """
    findings = manifests(tmp_path, {"README.md": readme_block(block)})

    assert findings.variables["WEATHER_API_KEY"].sources == [
        Source(MANIFEST, "README.md", "mcpServers block, line 3 (docker)")
    ]
    assert findings.arguments == {}


def test_readme_npx_flag_with_a_value_becomes_a_named_argument(tmp_path):
    block = """\
        {"mcpServers": {"files": {"command": "npx",
          "args": ["-y", "@acme/files", "--mode", "readonly", "/Users/me/Desktop"]}}}
    """
    findings = manifests(tmp_path, {"README.md": readme_block(block)})

    mode = findings.arguments["--mode"]
    assert (mode.positional, mode.required, mode.description) == (
        False,
        False,
        "Given in the README's example as --mode readonly.",
    )


def test_readme_npx_path_after_the_package_becomes_a_positional_path_argument(tmp_path):
    block = """\
        {"mcpServers": {"files": {"command": "npx",
          "args": ["-y", "@acme/files", "--mode", "readonly", "/Users/me/Desktop"]}}}
    """
    findings = manifests(tmp_path, {"README.md": readme_block(block)})

    path = findings.arguments["path"]
    assert (path.positional, path.repeated, path.required) == (True, False, True)
    assert path.description == "One or more paths; the README's example gives '/Users/me/Desktop'."


def test_readme_several_paths_make_one_repeated_path_argument(tmp_path):
    block = """\
        {"mcpServers": {"files": {"command": "npx",
          "args": ["-y", "@acme/files", "/Users/me/Desktop", "~/Documents"]}}}
    """
    findings = manifests(tmp_path, {"README.md": readme_block(block)})

    assert list(findings.arguments) == ["path"]
    assert findings.arguments["path"].repeated is True


def test_readme_uvx_from_option_skips_to_the_package_before_its_arguments(tmp_path):
    block = """\
        {"mcpServers": {"git": {"command": "uvx",
          "args": ["--from", "git+https://github.com/acme/git-mcp", "git-mcp",
                   "--repository", "./repo"]}}}
    """
    findings = manifests(tmp_path, {"README.md": readme_block(block)})

    assert list(findings.arguments) == ["--repository"]
    assert findings.arguments["--repository"].description == (
        "Given in the README's example as --repository ./repo."
    )


def test_readme_positional_values_that_are_not_paths_are_numbered(tmp_path):
    block = """\
        {"mcpServers": {"db": {"command": "npx", "args": ["-y", "@acme/db", "mydb", "public"]}}}
    """
    findings = manifests(tmp_path, {"README.md": readme_block(block)})

    assert list(findings.arguments) == ["argument 1", "argument 2"]
    assert findings.arguments["argument 2"].description == (
        "Positional argument; the README's example gives 'public'."
    )


def test_readme_connection_url_is_not_taken_for_a_path(tmp_path):
    block = """\
        {"mcpServers": {"postgres": {"command": "npx",
          "args": ["-y", "@modelcontextprotocol/server-postgres", "postgresql://localhost/mydb"]}}}
    """
    findings = manifests(tmp_path, {"README.md": readme_block(block)})

    assert list(findings.arguments) == ["argument 1"]


def test_readme_prose_names_are_mentions_not_variables(tmp_path):
    findings = manifests(
        tmp_path,
        {"README.md": "# Weather\n\nSet `WEATHER_API_KEY` first.\nThen WEATHER_UNITS.\n"},
    )

    assert findings.variables == {}
    assert findings.mentioned == {
        "WEATHER_API_KEY": [Source(DOCUMENTATION, "README.md", "line 3")],
        "WEATHER_UNITS": [Source(DOCUMENTATION, "README.md", "line 4")],
    }


def test_readme_options_table_rows_become_arguments_with_the_documentation_source(tmp_path):
    readme = """\
        | Option | Description |
        | --- | --- |
        | `--port <port>` | Port to listen on |
    """
    findings = manifests(tmp_path, {"README.md": readme})

    port = findings.arguments["--port"]
    assert (port.description, port.required) == ("Port to listen on", False)
    assert port.sources == [Source(DOCUMENTATION, "README.md", "options table, line 3")]


def test_readme_block_indented_under_a_list_item_is_read(tmp_path):
    readme = """\
        1. Add this to your configuration:

           ```json
           {"mcpServers": {"weather": {"command": "npx", "args": ["-y", "w"],
                                       "env": {"WEATHER_API_KEY": ""}}}}
           ```
    """
    findings = manifests(tmp_path, {"README.md": readme})

    assert list(findings.variables) == ["WEATHER_API_KEY"]


# Dockerfile


def test_dockerfile_env_lines_are_only_mentions(tmp_path):
    dockerfile = """\
        FROM node:22-slim
        ENV WEATHER_UNITS=metric NODE_ENV=production
        ENV WEATHER_REGION eu
        CMD ["node", "dist/index.js"]
    """
    findings = manifests(tmp_path, {"Dockerfile": dockerfile})

    assert findings.variables == {}
    assert list(findings.mentioned) == ["WEATHER_UNITS", "NODE_ENV", "WEATHER_REGION"]
    assert findings.mentioned["WEATHER_REGION"] == [Source(DOCUMENTATION, "Dockerfile", "ENV")]


def test_dockerfile_last_entry_command_is_the_build_entrypoint(tmp_path):
    dockerfile = 'FROM python:3.12\nCMD ["python", "a.py"]\nENTRYPOINT ["weather-mcp"]\n'
    findings = manifests(tmp_path, {"Dockerfile": dockerfile})

    assert findings.build["docker"] == {"manifest": "Dockerfile", "entrypoint": '["weather-mcp"]'}


# Several manifests


def test_an_earlier_manifest_description_stands_over_a_later_one(tmp_path):
    findings = manifests(
        tmp_path,
        {
            "server.json": SERVER_JSON,
            "package.json": {"name": "w", "version": "9.9.9", "description": "Other words."},
        },
    )

    assert (findings.description, findings.version) == ("Forecasts for MCP clients.", "2.0.0")
