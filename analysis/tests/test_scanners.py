"""Layer 2, the source scans: each test writes a few source files, runs one scanner over the
`Checkout` and checks exactly which variables, transports or options it found, and where."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from analysis.checkout import Checkout
from analysis.findings import STATIC, Findings, Source
from analysis.manifests import read_manifests
from analysis.scanners import arguments, environment, transport
from analysis.serverjson import excluded_variables, select_variables


def checkout(root: Path, files: dict[str, str]) -> Checkout:
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    return Checkout(root)


def scan_environment(root: Path, files: dict[str, str]) -> Findings:
    findings = Findings()
    environment.scan(checkout(root, files), findings)
    return findings


def defaults(findings: Findings) -> dict[str, str | None]:
    return {name: setting.default for name, setting in findings.variables.items()}


def details(findings: Findings, name: str) -> list[str]:
    return [source.detail for source in findings.variables[name].sources]


# JavaScript and TypeScript


def test_process_env_property_read_is_a_variable_with_its_line(tmp_path):
    findings = scan_environment(tmp_path, {"src/index.ts": "\nconst key = process.env.ACME_KEY;\n"})

    assert findings.variables["ACME_KEY"].sources == [Source(STATIC, "src/index.ts", "line 2")]


def test_process_env_bracket_read_is_a_variable(tmp_path):
    findings = scan_environment(tmp_path, {"src/index.ts": "const k = process.env['ACME_KEY'];\n"})

    assert defaults(findings) == {"ACME_KEY": None}


def test_process_env_or_literal_gives_the_default(tmp_path):
    source = 'const url = process.env.ACME_URL || "https://api.acme.dev";\n'
    findings = scan_environment(tmp_path, {"src/index.ts": source})

    assert defaults(findings) == {"ACME_URL": "https://api.acme.dev"}


def test_process_env_nullish_literal_gives_the_default(tmp_path):
    source = "const mode = process.env['ACME_MODE'] ?? 'fast';\n"
    findings = scan_environment(tmp_path, {"src/index.ts": source})

    assert defaults(findings) == {"ACME_MODE": "fast"}


def test_destructuring_process_env_reads_each_name_with_its_default(tmp_path):
    source = 'const { ACME_KEY, ACME_MODE = "fast", ACME_URL: url } = process.env;\n'
    findings = scan_environment(tmp_path, {"src/index.ts": source})

    assert defaults(findings) == {"ACME_KEY": None, "ACME_MODE": "fast", "ACME_URL": None}
    assert details(findings, "ACME_MODE") == ["line 1 (destructured)"]


def test_env_parameter_property_is_a_read(tmp_path):
    source = "export function load(env) {\n  return env.ACME_HOST;\n}\n"
    findings = scan_environment(tmp_path, {"src/config.ts": source})

    assert findings.variables["ACME_HOST"].sources == [Source(STATIC, "src/config.ts", "line 2")]


def test_write_to_process_env_is_not_a_read_but_the_value_read_on_that_line_is(tmp_path):
    source = 'process.env.DEPENDENCY_LEVEL = process.env.ACME_LOG_LEVEL || "info";\n'
    findings = scan_environment(tmp_path, {"src/index.ts": source})

    assert defaults(findings) == {"ACME_LOG_LEVEL": "info"}


def test_comparison_with_process_env_is_still_a_read(tmp_path):
    findings = scan_environment(
        tmp_path, {"src/index.ts": 'if (process.env.ACME_READ_ONLY === "true") {}\n'}
    )

    assert list(findings.variables) == ["ACME_READ_ONLY"]


# Python


def test_os_environ_subscript_is_a_read(tmp_path):
    findings = scan_environment(
        tmp_path, {"server.py": 'import os\nkey = os.environ["ACME_KEY"]\n'}
    )

    assert findings.variables["ACME_KEY"].sources == [Source(STATIC, "server.py", "line 2")]


def test_os_getenv_literal_second_argument_is_the_default(tmp_path):
    source = 'port = os.getenv("ACME_PORT", 8080)\nmode = os.getenv("ACME_MODE", "fast")\n'
    findings = scan_environment(tmp_path, {"server.py": source})

    assert defaults(findings) == {"ACME_PORT": "8080", "ACME_MODE": "fast"}


def test_environ_get_is_a_read_and_an_empty_default_is_no_default(tmp_path):
    source = 'from os import environ\nurl = environ.get("ACME_URL", "")\n'
    findings = scan_environment(tmp_path, {"server.py": source})

    assert defaults(findings) == {"ACME_URL": None}


def test_write_to_os_environ_is_not_a_read(tmp_path):
    findings = scan_environment(
        tmp_path, {"server.py": 'import os\nos.environ["GRPC_VERBOSITY"] = "ERROR"\n'}
    )

    assert findings.variables == {}


SETTINGS = """\
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACME_")

    api_key: str
    port: int = 8000
    token: str = Field(
        ...,
        validation_alias="UPSTREAM_TOKEN",
    )
"""


def test_pydantic_settings_fields_are_read_under_the_env_prefix(tmp_path):
    findings = scan_environment(tmp_path, {"acme/settings.py": SETTINGS})

    assert defaults(findings) == {"UPSTREAM_TOKEN": None, "ACME_API_KEY": None, "ACME_PORT": "8000"}
    assert details(findings, "ACME_PORT") == ["line 9 (settings field)"]


def test_pydantic_multi_line_field_is_read_by_its_validation_alias_only(tmp_path):
    findings = scan_environment(tmp_path, {"acme/settings.py": SETTINGS})

    assert "ACME_TOKEN" not in findings.variables
    assert details(findings, "UPSTREAM_TOKEN") == ["line 12"]


# Go and Rust


def test_go_os_getenv_is_a_read(tmp_path):
    findings = scan_environment(tmp_path, {"main.go": 'token := os.Getenv("ACME_TOKEN")\n'})

    assert findings.variables["ACME_TOKEN"].sources == [Source(STATIC, "main.go", "line 1")]


def test_rust_env_var_is_a_read(tmp_path):
    findings = scan_environment(tmp_path, {"src/main.rs": 'let t = env::var("ACME_TOKEN")?;\n'})

    assert findings.variables["ACME_TOKEN"].sources == [Source(STATIC, "src/main.rs", "line 1")]


# Names that are not the server's settings


def test_generic_runtime_names_are_dropped(tmp_path):
    source = "const a = process.env.PATH + process.env.NODE_ENV + process.env.DEBUG;\n"
    findings = scan_environment(tmp_path, {"src/index.ts": source})

    assert findings.variables == {}


def test_generic_prefixed_names_are_dropped(tmp_path):
    source = "const a = process.env.npm_config_cache + process.env.XDG_CONFIG_HOME;\n"
    findings = scan_environment(tmp_path, {"src/index.ts": source})

    assert findings.variables == {}


def test_proxy_named_by_the_server_own_code_is_kept(tmp_path):
    findings = scan_environment(
        tmp_path, {"src/http.ts": "const proxy = process.env.HTTPS_PROXY;\n"}
    )

    assert list(findings.variables) == ["HTTPS_PROXY"]


@pytest.mark.parametrize(
    "path", ["tests/test_env.py", "test/setup.ts", "examples/demo.py", "docs/conf.py"]
)
def test_test_example_and_docs_folders_are_not_scanned(tmp_path, path):
    source = 'import os\nos.getenv("ACME_KEY")\nprocess.env.ACME_KEY\n'
    findings = scan_environment(tmp_path, {path: source})

    assert findings.variables == {}


def test_test_files_beside_the_code_are_not_scanned(tmp_path):
    findings = scan_environment(
        tmp_path,
        {
            "src/index.test.ts": "process.env.ACME_TEST_KEY;\n",
            "acme/test_server.py": 'os.getenv("ACME_TEST_KEY")\n',
            "src/types.d.ts": "process.env.ACME_TEST_KEY;\n",
        },
    )

    assert findings.variables == {}


# Bundles


MARKED_BUNDLE = """\
// node_modules/undici/index.js
var proxy = process.env.HTTP_PROXY;
var level = process.env.UNDICI_LOG_LEVEL;
// src/server.ts
var key = process.env.ACME_KEY;
"""


def test_marked_bundle_drops_reads_under_dependency_markers(tmp_path):
    findings = scan_environment(tmp_path, {"dist/index.js": MARKED_BUNDLE})

    assert "UNDICI_LOG_LEVEL" not in findings.variables
    assert "HTTP_PROXY" not in findings.variables


def test_marked_bundle_keeps_reads_under_the_server_own_modules(tmp_path):
    findings = scan_environment(tmp_path, {"dist/index.js": MARKED_BUNDLE})

    assert findings.variables["ACME_KEY"].sources == [Source(STATIC, "dist/index.js", "line 5")]


def big_bundle() -> str:
    filler = "var filler = 0;\n" * (environment.BUNDLE_BYTES // 16 + 1)
    return filler + "var key = process.env.ACME_KEY;\nvar proxy = process.env.HTTPS_PROXY;\n"


def test_unmarked_big_bundle_marks_its_reads_as_bundled(tmp_path):
    findings = scan_environment(tmp_path, {"dist/cli.js": big_bundle()})

    line = environment.BUNDLE_BYTES // 16 + 2
    assert details(findings, "ACME_KEY") == [f"line {line} (bundle)"]


def test_unmarked_big_bundle_drops_proxy_reads(tmp_path):
    findings = scan_environment(tmp_path, {"dist/cli.js": big_bundle()})

    assert list(findings.variables) == ["ACME_KEY"]


def analysed(root: Path, files: dict[str, str]) -> Findings:
    folder = checkout(root, files)
    findings = Findings()
    read_manifests(folder, findings)
    environment.scan(folder, findings)
    return findings


def test_bundle_read_is_kept_when_the_readme_mentions_it(tmp_path):
    findings = analysed(
        tmp_path, {"dist/cli.js": big_bundle(), "README.md": "Set `ACME_KEY` to your key.\n"}
    )

    assert [setting.name for setting in select_variables(findings)] == ["ACME_KEY"]


def test_bundle_read_is_left_out_with_a_reason_when_nothing_documents_it(tmp_path):
    findings = analysed(tmp_path, {"dist/cli.js": big_bundle(), "README.md": "# Acme\n"})

    kept = select_variables(findings)
    assert kept == []
    assert excluded_variables(findings, kept) == [
        {"name": "ACME_KEY", "reason": "read only inside bundled code, and not documented"}
    ]


# Helpers and constants named for the environment


def test_env_helper_call_literal_is_a_variable(tmp_path):
    source = 'from acme.util import get_env_bool\nverify = get_env_bool("ACME_SSL_VERIFY")\n'
    findings = scan_environment(tmp_path, {"acme/server.py": source})

    assert details(findings, "ACME_SSL_VERIFY") == ["line 2 (named)"]


def test_env_named_constant_lists_its_variables(tmp_path):
    source = 'PROXY_ENV_VARS = ("ACME_PROXY_URL", "ACME_NO_PROXY")\n'
    findings = scan_environment(tmp_path, {"acme/proxy.py": source})

    assert list(findings.variables) == ["ACME_PROXY_URL", "ACME_NO_PROXY"]


PREFIXED = """\
import os

jira = os.getenv("JIRA_URL"), os.getenv("JIRA_USERNAME"), os.getenv("JIRA_API_TOKEN")
conf = os.getenv("CONF_URL")
jira_verify = is_env_ssl_verify("JIRA")
conf_verify = is_env_ssl_verify("CONF")


def is_env_ssl_verify(prefix):
    return os.getenv(f"{prefix}_SSL_VERIFY", "true")
"""


def test_prefix_template_expands_for_a_prefix_with_a_family_of_three(tmp_path):
    findings = scan_environment(tmp_path, {"acme/config.py": PREFIXED})

    assert details(findings, "JIRA_SSL_VERIFY") == ["line 10 (template)"]
    assert "JIRA" not in findings.variables


def test_prefix_template_does_not_expand_for_a_prefix_with_a_smaller_family(tmp_path):
    findings = scan_environment(tmp_path, {"acme/config.py": PREFIXED})

    assert "CONF_SSL_VERIFY" not in findings.variables


def test_javascript_template_literal_prefix_expands_too(tmp_path):
    source = """\
        const names = [process.env.ACME_URL, process.env.ACME_USER, process.env.ACME_TOKEN];
        const verify = sslFromEnv("ACME");
        function sslFromEnv(prefix) { return process.env[`${prefix}_SSL_VERIFY`]; }
    """
    findings = scan_environment(tmp_path, {"src/config.ts": source})

    assert details(findings, "ACME_SSL_VERIFY") == ["line 3 (template)"]


# Transports


MCP_IMPORT = 'import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";\n'


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("await server.connect(new StdioServerTransport());", "stdio"),
        ("const t = new StreamableHTTPServerTransport({});", "streamable-http"),
        ('const t = new SSEServerTransport("/messages", res);', "sse"),
    ],
)
def test_transport_sign_in_mcp_code_names_the_transport(tmp_path, code, kind):
    findings = Findings()
    transport.scan(checkout(tmp_path, {"src/index.ts": MCP_IMPORT + code + "\n"}), findings)

    assert findings.transports == {kind: [Source(STATIC, "src/index.ts", "line 2")]}


def test_python_fastmcp_transport_argument_names_the_transport(tmp_path):
    source = 'from fastmcp import FastMCP\nmcp = FastMCP("acme")\nmcp.run(transport="sse")\n'
    findings = Findings()
    transport.scan(checkout(tmp_path, {"acme/server.py": source}), findings)

    assert findings.transports == {"sse": [Source(STATIC, "acme/server.py", "line 3")]}


def test_transport_sign_outside_mcp_code_is_ignored(tmp_path):
    findings = Findings()
    transport.scan(checkout(tmp_path, {"src/pipe.ts": "new StdioServerTransport();\n"}), findings)

    assert findings.transports == {}


# Command-line options


def scan_arguments(root: Path, files: dict[str, str]) -> Findings:
    findings = Findings()
    arguments.scan(checkout(root, files), findings)
    return findings


def test_argparse_long_option_with_help_text(tmp_path):
    source = 'parser.add_argument("-p", "--port", type=int, help="Port to listen on")\n'
    findings = scan_arguments(tmp_path, {"acme/cli.py": source})

    port = findings.arguments["--port"]
    assert (port.description, port.required, port.positional) == ("Port to listen on", False, False)
    assert port.sources == [Source(STATIC, "acme/cli.py", "line 1")]


def test_click_option_with_help_text(tmp_path):
    source = '@click.option("--log-level", default="INFO", help="Logging level")\ndef main(): ...\n'
    findings = scan_arguments(tmp_path, {"acme/cli.py": source})

    assert findings.arguments["--log-level"].description == "Logging level"


def test_commander_option_with_value_placeholder_and_help(tmp_path):
    source = """\
        program
          .option("-r, --region <region>", "AWS region to use")
          .requiredOption("--profile <name>", `Profile name`);
    """
    findings = scan_arguments(tmp_path, {"src/cli.ts": source})

    assert {name: s.description for name, s in findings.arguments.items()} == {
        "--region": "AWS region to use",
        "--profile": "Profile name",
    }


def test_help_and_version_options_are_not_arguments(tmp_path):
    source = 'parser.add_argument("--version", action="version")\nprogram.option("--help")\n'
    findings = scan_arguments(tmp_path, {"acme/cli.py": source, "src/cli.ts": source})

    assert findings.arguments == {}


def test_hand_rolled_argv_comparison_is_an_option(tmp_path):
    source = 'const args = process.argv.slice(2);\nif (args[0] === "--read-only") {}\n'
    findings = scan_arguments(tmp_path, {"src/index.ts": source})

    assert findings.arguments["--read-only"].sources == [Source(STATIC, "src/index.ts", "line 2")]


def test_node_util_parse_args_options_are_options(tmp_path):
    source = """\
        const { values } = parseArgs({ options: {
          "read-only": { type: "boolean" },
          port: { type: "string" },
        } });
    """
    findings = scan_arguments(tmp_path, {"src/index.ts": source})

    assert list(findings.arguments) == ["--read-only", "--port"]


def test_commander_camel_case_option_keeps_its_whole_name(tmp_path):
    findings = scan_arguments(
        tmp_path, {"src/cli.ts": 'program.option("--apiKey <key>", "The API key");\n'}
    )

    assert list(findings.arguments) == ["--apiKey"]


def test_argparse_option_with_an_underscore_is_found(tmp_path):
    findings = scan_arguments(
        tmp_path, {"acme/cli.py": 'parser.add_argument("--api_key", help="The API key")\n'}
    )

    assert list(findings.arguments) == ["--api_key"]
