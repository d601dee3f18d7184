"""The output document: which variables go in and in what order, how each is written, which
package is chosen and how it starts, and what `validate` refuses."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from analysis.checkout import Checkout
from analysis.findings import (
    CLAUDE,
    DOCUMENTATION,
    MANIFEST,
    STATIC,
    Findings,
    PackageCandidate,
    Setting,
    Source,
)
from analysis.manifests.common import looks_secret
from analysis.pipeline import Origin, analyse_folder
from analysis.serverjson import (
    META_KEY,
    InvalidDocument,
    choose_package,
    entry_command,
    environment_variable,
    excluded_variables,
    package_argument,
    registry_name,
    select_variables,
    short_description,
    transport_of,
    validate,
)

CODE = Source(STATIC, "src/index.ts", "line 1")
README = Source(DOCUMENTATION, "README.md", "line 3")


def names(settings: list[Setting]) -> list[str]:
    return [setting.name for setting in settings]


def findings_with(*variables: tuple[str, Source]) -> Findings:
    findings = Findings()
    for name, source in variables:
        findings.variable(name, source)
    return findings


# select_variables


def test_select_variables_puts_declared_ones_first_then_claude_then_code():
    findings = findings_with(
        ("ACME_FROM_CODE", CODE),
        ("ACME_FROM_CLAUDE", Source(CLAUDE)),
        ("ACME_DECLARED", Source(MANIFEST, ".env.example", "line 1")),
    )

    assert names(select_variables(findings)) == [
        "ACME_DECLARED",
        "ACME_FROM_CLAUDE",
        "ACME_FROM_CODE",
    ]


def test_select_variables_ranks_a_variable_by_its_strongest_source():
    findings = findings_with(("ACME_B", CODE), ("ACME_A", CODE))
    findings.variable("ACME_A", Source(MANIFEST, "README.md", "mcpServers block, line 9"))

    assert names(select_variables(findings)) == ["ACME_A", "ACME_B"]


@pytest.mark.parametrize("name", ["ACME_JWKS_URL", "OAUTH_ISSUER", "ACME_AUDIENCE"])
def test_inbound_authorization_settings_are_left_out(name):
    findings = findings_with((name, CODE), ("ACME_KEY", CODE))

    assert names(select_variables(findings)) == ["ACME_KEY"]


def test_left_out_inbound_authorization_setting_is_listed_with_its_reason():
    findings = findings_with(("ACME_JWKS_URL", CODE), ("ACME_ISSUER", CODE))

    assert excluded_variables(findings, select_variables(findings)) == [
        {
            "name": "ACME_JWKS_URL",
            "reason": "configures the server's own HTTP authorization, which Catwalk provides",
        },
        {
            "name": "ACME_ISSUER",
            "reason": "configures the server's own HTTP authorization, which Catwalk provides",
        },
    ]


def test_inbound_authorization_setting_declared_by_server_json_is_kept():
    findings = findings_with(("ACME_ISSUER", Source(MANIFEST, "server.json", "packages[0]")))

    assert names(select_variables(findings)) == ["ACME_ISSUER"]


def test_generic_name_declared_by_an_env_example_is_left_out_as_the_host_s():
    findings = findings_with(("NODE_ENV", Source(MANIFEST, ".env.example", "line 1")))

    kept = select_variables(findings)
    assert kept == []
    assert excluded_variables(findings, kept) == [
        {
            "name": "NODE_ENV",
            "reason": "a variable of the runtime or the host, not a setting of this server",
        }
    ]


def test_readme_mention_in_the_family_of_kept_names_is_kept():
    findings = findings_with(("FOO_BAR_ONE", CODE), ("FOO_BAR_TWO", CODE))
    findings.mention("FOO_BAR_BAZ", README)

    kept = select_variables(findings)
    assert names(kept) == ["FOO_BAR_ONE", "FOO_BAR_TWO", "FOO_BAR_BAZ"]
    assert kept[2].sources == [README]


def test_readme_mention_outside_any_family_is_not_kept():
    findings = findings_with(("FOO_BAR_ONE", CODE), ("FOO_BAR_TWO", CODE))
    findings.mention("OTHER_THING_HERE", README)

    assert names(select_variables(findings)) == ["FOO_BAR_ONE", "FOO_BAR_TWO"]


def test_family_of_a_single_kept_name_does_not_pull_in_mentions():
    findings = findings_with(("FOO_BAR_ONE", CODE))
    findings.mention("FOO_BAR_BAZ", README)

    assert names(select_variables(findings)) == ["FOO_BAR_ONE"]


def test_dockerfile_mention_in_a_family_is_not_kept():
    findings = findings_with(("FOO_BAR_ONE", CODE), ("FOO_BAR_TWO", CODE))
    findings.mention("FOO_BAR_BAZ", Source(DOCUMENTATION, "Dockerfile", "ENV"))

    assert names(select_variables(findings)) == ["FOO_BAR_ONE", "FOO_BAR_TWO"]


def test_package_name_words_make_a_family_for_readme_mentions():
    findings = Findings()
    findings.packages.append(
        PackageCandidate("npm", "@playwright/mcp", "1.0.0", Source(MANIFEST, "package.json"))
    )
    findings.mention("PLAYWRIGHT_MCP_BROWSER", README)

    assert names(select_variables(findings)) == ["PLAYWRIGHT_MCP_BROWSER"]


def test_ambient_name_mentioned_by_the_readme_is_not_kept_even_in_a_family():
    findings = findings_with(("SSL_CERT_VERIFY", CODE), ("SSL_CERT_PATH", CODE))
    findings.mention("SSL_CERT_FILE", README)
    findings.mention("SSL_CERT_PASSWORD", README)

    assert names(select_variables(findings)) == [
        "SSL_CERT_VERIFY",
        "SSL_CERT_PATH",
        "SSL_CERT_PASSWORD",
    ]


# Secrets


@pytest.mark.parametrize(
    "name", ["API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "CLIENT_SECRET"]
)
def test_secret_looking_names(name):
    assert looks_secret(name) is True


@pytest.mark.parametrize(
    "name",
    ["ENABLE_TOKEN_PASSTHROUGH", "GITHUB_TOKEN_URL", "SSH_KEY_PATH", "AWS_ACCESS_KEY_ID"],
)
def test_names_that_mention_a_secret_but_hold_something_else(name):
    assert looks_secret(name) is False


def test_passphrase_is_a_secret():
    assert looks_secret("GPG_PASSPHRASE") is True


def test_token_budget_is_not_a_secret():
    assert looks_secret("MAX_TOKEN_LIMIT") is False


# environment_variable and package_argument


def test_environment_variable_never_emits_a_default_for_a_secret_name():
    setting = Setting(name="ACME_API_KEY", default="sk-test", sources=[CODE])

    entry = environment_variable(setting)
    assert entry["isSecret"] is True
    assert "default" not in entry


def test_environment_variable_never_emits_a_default_for_a_declared_secret():
    setting = Setting(name="ACME_LOGIN", secret=True, default="admin", sources=[CODE])

    assert "default" not in environment_variable(setting)


def test_environment_variable_writes_every_known_fact():
    setting = Setting(
        name="ACME_TIMEOUT",
        description="Seconds to wait",
        required=True,
        format="number",
        default="30",
        choices=["30", "60"],
        sources=[CODE],
    )

    assert environment_variable(setting) == {
        "name": "ACME_TIMEOUT",
        "description": "Seconds to wait",
        "isRequired": True,
        "isSecret": False,
        "format": "number",
        "default": "30",
        "choices": ["30", "60"],
    }


def test_environment_variable_without_description_says_where_it_was_found():
    entry = environment_variable(Setting(name="ACME_MODE", format="string", sources=[CODE]))

    assert entry == {
        "name": "ACME_MODE",
        "description": "Read by the server's code in src/index.ts.",
        "isRequired": False,
        "isSecret": False,
    }


def test_positional_argument_is_written_with_its_value_hint():
    setting = Setting(name="path", positional=True, repeated=True, required=True)

    assert package_argument(setting) == {
        "type": "positional",
        "description": "",
        "isRequired": True,
        "valueHint": "path",
        "isRepeated": True,
    }


def test_named_argument_is_written_with_its_name():
    setting = Setting(name="--port", description="Port", default="8080")

    assert package_argument(setting) == {
        "type": "named",
        "description": "Port",
        "isRequired": False,
        "name": "--port",
        "default": "8080",
    }


# validate


VALID = {
    "name": "io.github.acme/weather",
    "description": "Forecasts for MCP clients.",
    "version": "1.0.0",
    "packages": [
        {
            "registryType": "npm",
            "identifier": "@acme/weather",
            "version": "1.0.0",
            "transport": {"type": "stdio"},
            "environmentVariables": [{"name": "ACME_KEY", "format": "string"}],
            "packageArguments": [{"type": "named", "name": "--port"}],
        }
    ],
}


def changed(edit) -> dict:
    document = copy.deepcopy(VALID)
    edit(document)
    return document


def test_validate_accepts_a_well_formed_document():
    assert validate(copy.deepcopy(VALID)) is None


def test_validate_refuses_a_name_that_is_not_reverse_dns():
    with pytest.raises(InvalidDocument, match="name must be reverse-DNS"):
        validate(changed(lambda d: d.update(name="weather")))


@pytest.mark.parametrize("name", ["ACME-KEY", "1ACME", "ACME KEY", ""])
def test_validate_refuses_a_bad_variable_name(name):
    def edit(document):
        document["packages"][0]["environmentVariables"][0]["name"] = name

    with pytest.raises(InvalidDocument, match="is not a variable name"):
        validate(changed(edit))


def test_validate_accepts_a_description_of_exactly_the_limit():
    assert validate(changed(lambda d: d.update(description="x" * 100))) is None


def test_validate_refuses_a_description_over_the_limit():
    with pytest.raises(InvalidDocument, match="description must be 1 to 100 characters"):
        validate(changed(lambda d: d.update(description="x" * 101)))


def test_validate_refuses_a_package_without_transport():
    with pytest.raises(InvalidDocument, match=r"packages\[0\]\.transport is required"):
        validate(changed(lambda d: d["packages"][0].pop("transport")))


def test_validate_refuses_an_unknown_transport():
    with pytest.raises(InvalidDocument, match=r"transport\.type must be one of"):
        validate(changed(lambda d: d["packages"][0].update(transport={"type": "websocket"})))


def test_validate_refuses_an_unknown_format():
    def edit(document):
        document["packages"][0]["environmentVariables"][0]["format"] = "password"

    with pytest.raises(InvalidDocument, match="ACME_KEY has an unknown format"):
        validate(changed(edit))


def test_validate_refuses_a_named_argument_without_a_name():
    with pytest.raises(InvalidDocument, match="a named argument needs a name"):
        validate(changed(lambda d: d["packages"][0].update(packageArguments=[{"type": "named"}])))


def test_validate_refuses_a_missing_version():
    with pytest.raises(InvalidDocument, match="version is required"):
        validate(changed(lambda d: d.update(version="")))


# entry_command


def document_for(registry: str, identifier: str, executables: list[str]) -> dict:
    return {
        "packages": [{"registryType": registry, "identifier": identifier}],
        "_meta": {META_KEY: {"package": {"executables": executables}}},
    }


def test_pypi_script_not_named_after_the_package_is_the_entry_command():
    assert entry_command(document_for("pypi", "acme-weather-mcp", ["weather"])) == "weather"


def test_pypi_script_named_after_the_package_is_named_explicitly():
    document = document_for("pypi", "acme-weather", ["acme-admin", "acme-weather"])

    assert entry_command(document) == "acme-weather"


def test_npm_package_with_one_bin_runs_its_default():
    assert entry_command(document_for("npm", "@acme/weather", ["acme-weather-cli"])) == ""


def test_npm_package_with_a_bin_named_after_it_runs_its_default():
    assert entry_command(document_for("npm", "@acme/weather", ["weather-admin", "weather"])) == ""


def test_npm_multi_bin_package_runs_its_first_bin_when_none_is_named_after_it():
    document = document_for("npm", "@acme/tools", ["acme-weather", "acme-maps"])

    assert entry_command(document) == "acme-weather"


def test_entry_command_is_never_a_path():
    assert entry_command(document_for("pypi", "acme", ["/bin/sh", "../x"])) == ""


def test_entry_command_is_empty_without_a_package():
    assert entry_command({"packages": [], "_meta": {META_KEY: {"package": {}}}}) == ""


# choose_package and transport_of


def candidate(registry: str, identifier: str, file: str, version: str = "1.0.0", **more):
    return PackageCandidate(registry, identifier, version, Source(MANIFEST, file), **more)


def test_choose_package_prefers_server_json_over_package_json_over_pyproject():
    findings = Findings()
    findings.packages = [
        candidate("pypi", "acme-py", "pyproject.toml"),
        candidate("npm", "acme-js", "package.json"),
        candidate("npm", "@acme/declared", "server.json", version=""),
    ]

    assert choose_package(findings).identifier == "@acme/declared"


def test_choose_package_prefers_package_json_over_pyproject_as_the_manifests_read_them(
    tmp_path: Path,
):
    (tmp_path / "package.json").write_text(json.dumps({"name": "acme-js", "version": "1.0.0"}))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "acme-py"\nversion = "1.0.0"\n')
    draft = analyse_folder(Checkout(tmp_path), Origin("acme", "weather"))

    assert draft.document["packages"][0]["identifier"] == "acme-js"


def test_choose_package_prefers_a_candidate_with_a_version():
    findings = Findings()
    findings.packages = [
        candidate("pypi", "acme-dynamic", "pyproject.toml", version=""),
        candidate("pypi", "acme-setup", "setup.py"),
    ]

    assert choose_package(findings).identifier == "acme-setup"


def test_choose_package_prefers_npm_or_pypi_over_an_image():
    findings = Findings()
    findings.packages = [
        candidate("oci", "ghcr.io/acme/weather", "server.json"),
        candidate("npm", "acme-js", "package.json"),
    ]

    assert choose_package(findings).identifier == "acme-js"


def test_choose_package_is_none_without_candidates():
    assert choose_package(Findings()) is None


def test_transport_is_the_package_s_declared_one():
    findings = Findings()
    findings.transport("stdio", CODE)
    package = candidate("npm", "acme", "server.json", transport="sse")

    assert transport_of(findings, package) == "sse"


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ([], "stdio"),
        (["sse", "stdio"], "stdio"),
        (["sse", "streamable-http"], "streamable-http"),
        (["sse"], "sse"),
    ],
)
def test_transport_is_stdio_whenever_offered_then_streamable_http(found, expected):
    findings = Findings()
    for kind in found:
        findings.transport(kind, CODE)

    assert transport_of(findings, None) == expected


# Names and descriptions


def test_registry_name_of_a_monorepo_member_names_its_folder():
    assert registry_name("acme", "servers", "src/weather/") == "io.github.acme/servers-weather"


def test_short_description_cuts_at_a_word_within_the_limit():
    assert short_description("word " * 30) == " ".join(["word"] * 19) + "…"


def test_short_description_keeps_a_short_text_whole_with_its_spaces_collapsed():
    assert short_description("  Weather   for\nMCP.  ") == "Weather for MCP."


# The whole static analysis


def test_analysed_npm_repository_is_a_valid_document_with_its_settings(tmp_path: Path):
    (tmp_path / "src").mkdir()
    (tmp_path / "package.json").write_text(
        json.dumps(
            {
                "name": "@acme/weather",
                "version": "1.2.0",
                "description": "Weather for MCP clients.",
                "bin": {"weather": "dist/index.js"},
            }
        )
    )
    (tmp_path / "src/index.ts").write_text(
        'import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";\n'
        "const key = process.env.ACME_API_KEY;\n"
        'const units = process.env.ACME_UNITS || "metric";\n'
        "await server.connect(new StdioServerTransport());\n"
    )
    draft = analyse_folder(Checkout(tmp_path), Origin("acme", "weather", commit="abc"))

    validate(draft.document)
    package = draft.document["packages"][0]
    assert (package["identifier"], package["version"], package["transport"]) == (
        "@acme/weather",
        "1.2.0",
        {"type": "stdio"},
    )
    assert [
        (v["name"], v["isSecret"], v.get("default")) for v in package["environmentVariables"]
    ] == [("ACME_API_KEY", True, None), ("ACME_UNITS", False, "metric")]
