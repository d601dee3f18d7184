"""The bridge: one stdio MCP server served as MCP Streamable HTTP (and legacy HTTP+SSE).

It imports nothing from Django or the rest of Catwalk: the same code runs beside the
gateway on this host and alone inside a Fly machine image.

Serving. A raw ASGI callable (`app.BridgeApp`) under uvicorn with uvloop and httptools,
access log, `server` and `date` headers off. A hand-written httptools protocol was not
built: uvicorn's per-request overhead is a small part of a relayed call (two JSON
parses and two pipe hops dominate), and uvicorn brings correct HTTP/1.1 handling.
The hot path per request: one `json.loads` of the body, an envelope check, one
`json.dumps` to the child; one `json.loads` of the child's line and one `json.dumps`
back. No typed models, so unknown fields pass through.

Modules: `config` (CLI), `child` (process, pipes, stop/kill), `stderr_log`,
`protocol` (versions, envelope checks, errors), `upstream` (id rewriting and routing
for one child), `sessions`, `channels` (exchanges and SSE streams), `core` (process
models, supervision, session life cycle), `app` (HTTP).

Ids. Every client request gets a fresh integer id at the child, and a
`params._meta.progressToken` is replaced by that same integer; both are restored on
the way out, and a client's `notifications/cancelled` is translated. Ids are
rewritten in both process models (it costs nothing and keeps one code path).

Where child messages go:
- a response: to the POST (or legacy stream) of the call it answers;
- `notifications/progress`: to the call that owns the token;
- `notifications/message` (logging): to the only call in flight if there is exactly
  one; otherwise, like every other notification (list_changed, resources/updated, …),
  to the GET stream of every session on that child;
- a server→client request (sampling, elicitation, roots/list): to the only call in
  flight; else, when all calls in flight belong to one session, to that session's GET
  stream (or its most recent call's stream); with no call in flight, to the only
  session, or the most recently active session with a GET stream. When the target is
  ambiguous (calls in flight from several sessions) the child gets a JSON-RPC error
  rather than risk sending one user's request to another. `ping` from the child is
  answered by the bridge.

Shared mode (one child for all sessions) — what it cannot do:
- the child sees one client: the bridge, which declares sampling, elicitation
  (form and url) and roots; the child's capability checks pass even for a client that
  declared none (such a client then answers those requests with an error);
- `logging/setLevel`, resource subscriptions and roots are child-global: one session
  setting them affects all; out-of-call notifications are broadcast to every session;
- log messages emitted while calls from several sessions run go to every session.
Use isolated mode when sessions must not see each other's traffic.

Version negotiation (shared mode). The bridge initialises the child at the newest
revision it knows (2025-11-25). A client gets the version it asked for when the child's
negotiated version is at least as new, else the child's version — exactly what the
child would have answered it directly. Transport rules (batching only at 2025-03-26)
follow the session's negotiated version. In isolated mode the client's own initialize
goes to its child and the child's answer is relayed unchanged.

The 2026-07-28 stateless probe. The SDK's default client first POSTs
`server/discover` without a session and with `MCP-Protocol-Version: 2026-07-28`. The
bridge answers 400 with a plain JSON-RPC -32600 error naming the unsupported version
(deliberately not the modern -32022, whose `supported` list some clients read as
"modern-only server"), and the client falls back to `initialize`.

Session cap. Shared mode evicts the least recently used session; isolated mode
refuses a new initialize with HTTP 503 and JSON-RPC error -32005 (each session there
is a process, and killing a working user's process to admit another is worse).

SSE. POST streams carry no event ids: a client disconnecting mid-call cancels that
call (`notifications/cancelled` to the child), so there is nothing to resume, and the
SDK then fails fast instead of retrying a resume. The GET stream numbers its events
(`0-N`), keeps the last 256 for `Last-Event-ID` replay (also those sent while no
client was connected), starts 2025-11-25 sessions with a priming event carrying a
`retry` hint, and sends a comment every 15 s to keep proxies from timing out.

Failures. A child that exits (or closes stdout) fails every pending call at once with
-32000 and ends every session tied to it (their next request gets 404, so clients
re-initialise). Shared mode restarts the child with exponential backoff; 5 failures
within 60 s stop retrying with status "crashed" and `last_error` holding the last
stderr lines. Non-JSON stdout lines go to the stderr log, never to clients.
"""
