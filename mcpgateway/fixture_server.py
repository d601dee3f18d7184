"""A deterministic MCP server over stdio: the upstream for Catwalk's own tests.

It implements every fixture the official conformance suite's server scenarios
ask for (tools ``test_*``, resources ``test://…``, prompts ``test_*``,
completion, logging, subscriptions), so running the suite through Catwalk's
bridge and gateway in front of this process measures Catwalk rather than some
third-party server. It adds the tools Catwalk's tests and benchmarks need:

* ``echo`` - returns its ``message`` argument as text;
* ``get-env`` - returns the process environment as JSON text, to prove that
  none of Catwalk's own secrets reach a child;
* ``sleep`` - waits ``seconds``, for timeout, cancellation and disconnect tests;
* ``crash`` - exits the process with status 3 in the middle of the call;
* ``touch-watched-resource`` - changes ``test://watched-resource`` and sends
  ``notifications/resources/updated`` to a subscribed client, a server-initiated
  message that belongs to no request.

Built on the low-level ``mcp.server.lowlevel.Server`` rather than ``MCPServer``
because the fixture must control the wire exactly: hand-written JSON Schemas
(including a JSON Schema 2020-12 one), ``resources/subscribe`` and
``logging/setLevel`` handlers, which the high-level API does not expose.

``python -m mcpgateway.fixture_server`` serves stdio. ``--transport
streamable-http --port N`` serves the SDK's own Streamable HTTP transport on
127.0.0.1, only to check the fixture itself against the conformance suite.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import struct
import sys
import warnings
import wave
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, get_args

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import (
    INVALID_PARAMS,
    AudioContent,
    BlobResourceContents,
    CallToolRequestParams,
    CallToolResult,
    ClientCapabilities,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    ContentBlock,
    ElicitationCapability,
    EmbeddedResource,
    EmptyResult,
    GetPromptRequestParams,
    GetPromptResult,
    ImageContent,
    JSONRPCMessage,
    ListPromptsResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    LoggingLevel,
    PaginatedRequestParams,
    Prompt,
    PromptArgument,
    PromptMessage,
    PromptReference,
    ReadResourceRequestParams,
    ReadResourceResult,
    Resource,
    ResourceTemplate,
    SamplingCapability,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    Tool,
    UnsubscribeRequestParams,
)

SERVER_NAME: Final = "catwalk-fixture"
SERVER_VERSION: Final = "1.0.0"

CRASH_EXIT_CODE: Final = 3
MAX_SLEEP_SECONDS: Final = 3600.0
SSE_RETRY_MILLISECONDS: Final = 500

LOG_LEVELS: Final[tuple[LoggingLevel, ...]] = get_args(LoggingLevel)

Context = ServerRequestContext[Any, Any]
ToolHandler = Callable[[Context, Mapping[str, Any]], Awaitable[CallToolResult]]


def _png_1x1_red() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte, then one red pixel
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\x00\x00" * 80)  # 10 ms
    return buffer.getvalue()


PNG_BASE64: Final = base64.b64encode(_png_1x1_red()).decode()
WAV_BASE64: Final = base64.b64encode(_wav_silence()).decode()

STATIC_TEXT: Final = "This is the content of the static text resource."
WATCHED_URI: Final = "test://watched-resource"
TEMPLATE_PREFIX: Final = "test://template/"
TEMPLATE_SUFFIX: Final = "/data"

NO_ARGUMENTS: Final[dict[str, Any]] = {"type": "object", "properties": {}}


def _string_argument(name: str, description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": "string", "description": description}},
        "required": [name],
    }


# SEP-1613 and SEP-2106: the full 2020-12 vocabulary is allowed in inputSchema,
# and the conformance suite checks that $schema, $defs (with an $anchor),
# additionalProperties, allOf/anyOf and if/then/else all survive tools/list.
JSON_SCHEMA_2020_12: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "postalAddress",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

TOOLS: Final[list[Tool]] = [
    Tool(
        name="echo",
        description="Returns its message argument as text.",
        input_schema=_string_argument("message", "Text to send back"),
    ),
    Tool(
        name="get-env",
        description="Returns this process's environment variables as a JSON object.",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="sleep",
        description="Waits the given number of seconds, then says so.",
        input_schema={
            "type": "object",
            "properties": {
                "seconds": {"type": "number", "minimum": 0, "maximum": MAX_SLEEP_SECONDS}
            },
            "required": ["seconds"],
        },
    ),
    Tool(
        name="crash",
        description=f"Exits the server process with status {CRASH_EXIT_CODE} mid-call.",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="touch-watched-resource",
        description=(
            f"Changes {WATCHED_URI} and notifies a client subscribed to it "
            "with notifications/resources/updated."
        ),
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_simple_text",
        description="Returns a simple text response.",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_image_content",
        description="Returns a 1x1 PNG image.",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_audio_content",
        description="Returns a short WAV clip of silence.",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_embedded_resource",
        description="Returns an embedded text resource.",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_multiple_content_types",
        description="Returns text, image and embedded resource content together.",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_tool_with_logging",
        description="Sends three info log notifications while it runs.",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_tool_with_progress",
        description="Reports progress 0, 50 and 100 out of 100 while it runs.",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_error_handling",
        description="Always fails with a tool error (isError: true).",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_reconnection",
        description=(
            "Closes the SSE stream of this call (Streamable HTTP with an event store), "
            "then answers after the client reconnects (SEP-1699)."
        ),
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_sampling",
        description="Asks the client's LLM to answer a prompt (sampling/createMessage).",
        input_schema=_string_argument("prompt", "The prompt to send to the LLM"),
    ),
    Tool(
        name="test_elicitation",
        description="Asks the user for a username and email (elicitation/create).",
        input_schema=_string_argument("message", "The message to show the user"),
    ),
    Tool(
        name="test_elicitation_sep1034_defaults",
        description="Elicits a form whose fields all carry default values (SEP-1034).",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="test_elicitation_sep1330_enums",
        description="Elicits a form with every enum variant of SEP-1330.",
        input_schema=NO_ARGUMENTS,
    ),
    Tool(
        name="json_schema_2020_12_tool",
        description="Declares its input with JSON Schema 2020-12 features (SEP-1613).",
        input_schema=JSON_SCHEMA_2020_12,
    ),
]

ELICITATION_SEP1034_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verified", "default": True},
    },
}

ELICITATION_SEP1330_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Untitled single-select",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Titled single-select",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Legacy titled enum",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Untitled multi-select",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Titled multi-select",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
}

RESOURCES: Final[list[Resource]] = [
    Resource(
        uri="test://static-text",
        name="static-text",
        description="A static text resource.",
        mime_type="text/plain",
    ),
    Resource(
        uri="test://static-binary",
        name="static-binary",
        description="A static binary resource (a 1x1 PNG).",
        mime_type="image/png",
    ),
    Resource(
        uri=WATCHED_URI,
        name="watched-resource",
        description="A resource that changes when the touch-watched-resource tool is called.",
        mime_type="text/plain",
    ),
]

RESOURCE_TEMPLATES: Final[list[ResourceTemplate]] = [
    ResourceTemplate(
        uri_template=f"{TEMPLATE_PREFIX}{{id}}{TEMPLATE_SUFFIX}",
        name="template-data",
        description="JSON data for any id substituted into the URI.",
        mime_type="application/json",
    )
]

PROMPTS: Final[list[Prompt]] = [
    Prompt(name="test_simple_prompt", description="A simple prompt without arguments."),
    Prompt(
        name="test_prompt_with_arguments",
        description="A prompt that substitutes two arguments.",
        arguments=[
            PromptArgument(name="arg1", description="First test argument", required=True),
            PromptArgument(name="arg2", description="Second test argument", required=True),
        ],
    ),
    Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that embeds a resource.",
        arguments=[
            PromptArgument(
                name="resourceUri", description="URI of the resource to embed", required=True
            )
        ],
    ),
    Prompt(name="test_prompt_with_image", description="A prompt that includes an image."),
]

COMPLETIONS: Final[dict[tuple[str, str], list[str]]] = {
    ("test_prompt_with_arguments", "arg1"): ["paris", "park", "party", "test", "testing"],
    ("test_prompt_with_arguments", "arg2"): ["world", "wonder", "work"],
    (f"{TEMPLATE_PREFIX}{{id}}{TEMPLATE_SUFFIX}", "id"): ["1", "2", "3", "42", "123"],
}


@dataclass
class _ConnectionState:
    """What a client has asked of this server over one connection."""

    log_level: LoggingLevel = "debug"
    subscriptions: set[str] = field(default_factory=set)


@dataclass
class FixtureState:
    """Per-connection state, keyed by the Streamable HTTP session id.

    Over stdio there is exactly one connection per process, so it gets the
    empty key; over HTTP each session keeps its own log level and subscriptions,
    never forgotten, which suits a short-lived self-check and nothing more.
    """

    connections: dict[str, _ConnectionState] = field(default_factory=dict)
    watched_version: int = 0

    def for_request(self, ctx: Context) -> _ConnectionState:
        headers: Mapping[str, str] | None = getattr(ctx.request, "headers", None)
        key = (headers or {}).get("mcp-session-id", "")
        return self.connections.setdefault(key, _ConnectionState())


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


def _tool_error(message: str) -> CallToolResult:
    return CallToolResult(content=[_text(message)], is_error=True)


def _invalid_params(message: str) -> MCPError:
    return MCPError(code=INVALID_PARAMS, message=message)


def _require_string(arguments: Mapping[str, Any], name: str, tool: str) -> str:
    value = arguments.get(name)
    if not isinstance(value, str):
        raise _invalid_params(f"{tool}: argument {name!r} must be a string")
    return value


class FixtureServer:
    """The handlers, bound to one ``FixtureState``."""

    def __init__(self) -> None:
        self.state = FixtureState()
        self._tools: dict[str, ToolHandler] = {
            "echo": self._echo,
            "get-env": self._get_env,
            "sleep": self._sleep,
            "crash": self._crash,
            "touch-watched-resource": self._touch_watched_resource,
            "test_simple_text": self._simple_text,
            "test_image_content": self._image_content,
            "test_audio_content": self._audio_content,
            "test_embedded_resource": self._embedded_resource,
            "test_multiple_content_types": self._multiple_content_types,
            "test_tool_with_logging": self._tool_with_logging,
            "test_tool_with_progress": self._tool_with_progress,
            "test_error_handling": self._error_handling,
            "test_reconnection": self._reconnection,
            "test_sampling": self._sampling,
            "test_elicitation": self._elicitation,
            "test_elicitation_sep1034_defaults": self._elicitation_sep1034_defaults,
            "test_elicitation_sep1330_enums": self._elicitation_sep1330_enums,
            "json_schema_2020_12_tool": self._json_schema_2020_12,
        }

    def build(self) -> Server[Any]:
        return Server(
            SERVER_NAME,
            version=SERVER_VERSION,
            instructions="Catwalk's test fixture: deterministic tools, resources and prompts.",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_completion=self.complete,
            on_set_logging_level=self.set_logging_level,
        )

    # --- tools -------------------------------------------------------------

    async def list_tools(
        self, ctx: Context, params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=TOOLS)

    async def call_tool(self, ctx: Context, params: CallToolRequestParams) -> CallToolResult:
        handler = self._tools.get(params.name)
        if handler is None:
            raise _invalid_params(f"Unknown tool: {params.name}")
        return await handler(ctx, params.arguments or {})

    async def _echo(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        return CallToolResult(content=[_text(_require_string(arguments, "message", "echo"))])

    async def _get_env(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        return CallToolResult(content=[_text(json.dumps(dict(os.environ), sort_keys=True))])

    async def _sleep(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        seconds = arguments.get("seconds")
        # bool is an int subclass, and True seconds is a caller bug, not one second.
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise _invalid_params("sleep: argument 'seconds' must be a number")
        if not 0 <= seconds <= MAX_SLEEP_SECONDS:
            raise _invalid_params(f"sleep: 'seconds' must be between 0 and {MAX_SLEEP_SECONDS:g}")
        await anyio.sleep(seconds)
        return CallToolResult(content=[_text(f"Slept {seconds:g} seconds")])

    async def _crash(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        print(f"{SERVER_NAME}: crash tool called, exiting with {CRASH_EXIT_CODE}", file=sys.stderr)
        sys.stderr.flush()
        # os._exit skips cleanup on purpose: the point is a child that dies mid-call.
        os._exit(CRASH_EXIT_CODE)

    async def _touch_watched_resource(
        self, ctx: Context, arguments: Mapping[str, Any]
    ) -> CallToolResult:
        self.state.watched_version += 1
        notified = WATCHED_URI in self.state.for_request(ctx).subscriptions
        if notified:
            await ctx.session.send_resource_updated(WATCHED_URI)
        return CallToolResult(
            content=[
                _text(
                    f"{WATCHED_URI} is now version {self.state.watched_version}"
                    + ("; subscriber notified" if notified else "; no subscriber")
                )
            ]
        )

    async def _simple_text(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        return CallToolResult(content=[_text("This is a simple text response for testing.")])

    async def _image_content(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        return CallToolResult(
            content=[ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")]
        )

    async def _audio_content(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        return CallToolResult(
            content=[AudioContent(type="audio", data=WAV_BASE64, mime_type="audio/wav")]
        )

    async def _embedded_resource(
        self, ctx: Context, arguments: Mapping[str, Any]
    ) -> CallToolResult:
        resource = TextResourceContents(
            uri="test://embedded-resource",
            mime_type="text/plain",
            text="This is an embedded resource content.",
        )
        return CallToolResult(content=[EmbeddedResource(type="resource", resource=resource)])

    async def _multiple_content_types(
        self, ctx: Context, arguments: Mapping[str, Any]
    ) -> CallToolResult:
        resource = TextResourceContents(
            uri="test://mixed-content-resource",
            mime_type="application/json",
            text=json.dumps({"test": "data", "value": 123}),
        )
        content: list[ContentBlock] = [
            _text("Multiple content types test:"),
            ImageContent(type="image", data=PNG_BASE64, mime_type="image/png"),
            EmbeddedResource(type="resource", resource=resource),
        ]
        return CallToolResult(content=content)

    async def _tool_with_logging(
        self, ctx: Context, arguments: Mapping[str, Any]
    ) -> CallToolResult:
        # The pauses let a client see the notifications arrive one by one, before the result.
        for index, message in enumerate(
            ("Tool execution started", "Tool processing data", "Tool execution completed")
        ):
            if index:
                await anyio.sleep(0.05)
            await self._log(ctx, "info", message)
        return CallToolResult(content=[_text("Tool with logging executed successfully")])

    async def _tool_with_progress(
        self, ctx: Context, arguments: Mapping[str, Any]
    ) -> CallToolResult:
        for index, progress in enumerate((0, 50, 100)):
            if index:
                await anyio.sleep(0.05)
            await ctx.session.report_progress(progress, 100, f"Completed step {index + 1} of 3")
        return CallToolResult(content=[_text("Tool with progress executed successfully")])

    async def _error_handling(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        return _tool_error("This tool intentionally returns an error for testing")

    async def _reconnection(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        # Over stdio there is no stream to close; the transport in front (Catwalk's
        # bridge, or the SDK's HTTP transport in self-check mode) owns that.
        if ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()
        await anyio.sleep(0.1)
        return CallToolResult(content=[_text("Reconnection test completed successfully.")])

    async def _sampling(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        prompt = _require_string(arguments, "prompt", "test_sampling")
        if not ctx.session.check_client_capability(
            ClientCapabilities(sampling=SamplingCapability())
        ):
            return _tool_error("The client does not support sampling")
        result = await ctx.session.create_message(
            [SamplingMessage(role="user", content=_text(prompt))],
            max_tokens=100,
            related_request_id=ctx.request_id,
        )
        answer = result.content.text if isinstance(result.content, TextContent) else "(non-text)"
        return CallToolResult(content=[_text(f"LLM response: {answer}")])

    async def _elicit(self, ctx: Context, message: str, schema: dict[str, Any]) -> CallToolResult:
        if not ctx.session.check_client_capability(
            ClientCapabilities(elicitation=ElicitationCapability())
        ):
            return _tool_error("The client does not support elicitation")
        result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        return CallToolResult(
            content=[
                _text(
                    f"Elicitation completed: action={result.action}, "
                    f"content={json.dumps(result.content, sort_keys=True)}"
                )
            ]
        )

    async def _elicitation(self, ctx: Context, arguments: Mapping[str, Any]) -> CallToolResult:
        message = _require_string(arguments, "message", "test_elicitation")
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        return await self._elicit(ctx, message, schema)

    async def _elicitation_sep1034_defaults(
        self, ctx: Context, arguments: Mapping[str, Any]
    ) -> CallToolResult:
        return await self._elicit(
            ctx, "Please review the form; every field has a default", ELICITATION_SEP1034_SCHEMA
        )

    async def _elicitation_sep1330_enums(
        self, ctx: Context, arguments: Mapping[str, Any]
    ) -> CallToolResult:
        return await self._elicit(
            ctx, "Please select options from the enum fields", ELICITATION_SEP1330_SCHEMA
        )

    async def _json_schema_2020_12(
        self, ctx: Context, arguments: Mapping[str, Any]
    ) -> CallToolResult:
        return CallToolResult(
            content=[_text(f"JSON Schema 2020-12 tool called with: {json.dumps(arguments)}")]
        )

    # --- logging -----------------------------------------------------------

    async def set_logging_level(self, ctx: Context, params: SetLevelRequestParams) -> EmptyResult:
        self.state.for_request(ctx).log_level = params.level
        return EmptyResult()

    async def _log(self, ctx: Context, level: LoggingLevel, message: str) -> None:
        threshold = self.state.for_request(ctx).log_level
        if LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold):
            await ctx.session.send_log_message(
                level, message, logger=SERVER_NAME, related_request_id=ctx.request_id
            )

    # --- resources ---------------------------------------------------------

    async def list_resources(
        self, ctx: Context, params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        return ListResourcesResult(resources=RESOURCES)

    async def list_resource_templates(
        self, ctx: Context, params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        return ListResourceTemplatesResult(resource_templates=RESOURCE_TEMPLATES)

    async def read_resource(
        self, ctx: Context, params: ReadResourceRequestParams
    ) -> ReadResourceResult:
        uri = params.uri
        contents: TextResourceContents | BlobResourceContents
        if uri == "test://static-text":
            contents = TextResourceContents(uri=uri, mime_type="text/plain", text=STATIC_TEXT)
        elif uri == "test://static-binary":
            contents = BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG_BASE64)
        elif uri == WATCHED_URI:
            contents = TextResourceContents(
                uri=uri,
                mime_type="text/plain",
                text=f"Watched resource, version {self.state.watched_version}",
            )
        elif (item_id := _template_id(uri)) is not None:
            data = {"id": item_id, "templateTest": True, "data": f"Data for ID: {item_id}"}
            contents = TextResourceContents(
                uri=uri, mime_type="application/json", text=json.dumps(data)
            )
        else:
            raise _resource_not_found(uri)
        return ReadResourceResult(contents=[contents])

    async def subscribe(self, ctx: Context, params: SubscribeRequestParams) -> EmptyResult:
        if params.uri not in {resource.uri for resource in RESOURCES}:
            raise _resource_not_found(params.uri)
        self.state.for_request(ctx).subscriptions.add(params.uri)
        return EmptyResult()

    async def unsubscribe(self, ctx: Context, params: UnsubscribeRequestParams) -> EmptyResult:
        self.state.for_request(ctx).subscriptions.discard(params.uri)
        return EmptyResult()

    # --- prompts -----------------------------------------------------------

    async def list_prompts(
        self, ctx: Context, params: PaginatedRequestParams | None
    ) -> ListPromptsResult:
        return ListPromptsResult(prompts=PROMPTS)

    async def get_prompt(self, ctx: Context, params: GetPromptRequestParams) -> GetPromptResult:
        arguments = params.arguments or {}
        messages: list[PromptMessage]
        if params.name == "test_simple_prompt":
            messages = [_user(_text("This is a simple prompt for testing."))]
        elif params.name == "test_prompt_with_arguments":
            arg1 = _require_prompt_argument(arguments, "arg1")
            arg2 = _require_prompt_argument(arguments, "arg2")
            messages = [_user(_text(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"))]
        elif params.name == "test_prompt_with_embedded_resource":
            uri = _require_prompt_argument(arguments, "resourceUri")
            resource = TextResourceContents(
                uri=uri, mime_type="text/plain", text="Embedded resource content for testing."
            )
            messages = [
                _user(EmbeddedResource(type="resource", resource=resource)),
                _user(_text("Please process the embedded resource above.")),
            ]
        elif params.name == "test_prompt_with_image":
            messages = [
                _user(ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")),
                _user(_text("Please analyze the image above.")),
            ]
        else:
            raise _invalid_params(f"Unknown prompt: {params.name}")
        description = next(prompt.description for prompt in PROMPTS if prompt.name == params.name)
        return GetPromptResult(description=description, messages=messages)

    # --- completion --------------------------------------------------------

    async def complete(self, ctx: Context, params: CompleteRequestParams) -> CompleteResult:
        target = params.ref.name if isinstance(params.ref, PromptReference) else params.ref.uri
        candidates = COMPLETIONS.get((target, params.argument.name), [])
        values = [value for value in candidates if value.startswith(params.argument.value)]
        return CompleteResult(
            completion=Completion(values=values, total=len(values), has_more=False)
        )


def _template_id(uri: str) -> str | None:
    if not (uri.startswith(TEMPLATE_PREFIX) and uri.endswith(TEMPLATE_SUFFIX)):
        return None
    item_id = uri[len(TEMPLATE_PREFIX) : -len(TEMPLATE_SUFFIX)]
    return item_id if item_id and "/" not in item_id else None


def _resource_not_found(uri: str) -> MCPError:
    # SEP-2164: -32602 with the URI in data, rather than an empty contents list.
    return MCPError(code=INVALID_PARAMS, message=f"Resource not found: {uri}", data={"uri": uri})


def _require_prompt_argument(arguments: Mapping[str, str], name: str) -> str:
    value = arguments.get(name)
    if value is None:
        raise _invalid_params(f"Missing required prompt argument: {name}")
    return value


def _user(content: ContentBlock) -> PromptMessage:
    return PromptMessage(role="user", content=content)


def build_server() -> Server[Any]:
    """A fresh fixture server with its own state."""
    return FixtureServer().build()


async def _serve_stdio(server: Server[Any]) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


class InMemoryEventStore(EventStore):
    """Keeps the last events of every SSE stream so a client can resume with Last-Event-ID.

    Only the self-check HTTP mode uses it; it lives as long as the process and
    forgets the oldest events beyond ``capacity``.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._events: deque[tuple[EventId, StreamId, JSONRPCMessage | None]] = deque(
            maxlen=capacity
        )
        self._next_id = 0

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._next_id += 1
        event_id = str(self._next_id)
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        stream_id = next((s for e, s, _ in self._events if e == last_event_id), None)
        if stream_id is None:
            return None
        # Event ids are increasing integers, so "after" is a numeric comparison.
        after = int(last_event_id)
        for event_id, event_stream, message in list(self._events):
            if event_stream == stream_id and message is not None and int(event_id) > after:
                await send_callback(EventMessage(message, event_id))
        return stream_id


async def _serve_streamable_http(server: Server[Any], host: str, port: int) -> None:
    # Imported here: the stdio mode, the one Catwalk deploys, never needs uvicorn.
    import uvicorn

    app = server.streamable_http_app(
        host=host, event_store=InMemoryEventStore(), retry_interval=SSE_RETRY_MILLISECONDS
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mcpgateway.fixture_server",
        description="Catwalk's MCP test fixture (stdio by default).",
    )
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="streamable-http only")
    parser.add_argument("--port", type=int, default=8000, help="streamable-http only")
    args = parser.parse_args(argv)

    # Logging, sampling and setLevel are deprecated in 2026-07-28 but are exactly
    # what a 2025-11-25 fixture must exercise; the warnings would only add stderr noise.
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    server = build_server()
    if args.transport == "stdio":
        anyio.run(_serve_stdio, server)
    else:
        anyio.run(_serve_streamable_http, server, args.host, args.port)


if __name__ == "__main__":
    main()
