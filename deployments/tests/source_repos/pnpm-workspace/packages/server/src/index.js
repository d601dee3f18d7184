import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";
import { add, echo } from "@acme/echo-core";

const server = new McpServer({ name: "echo-server", version: "0.1.0" });

server.registerTool(
  "echo",
  { description: "Return the message.", inputSchema: { message: z.string() } },
  async ({ message }) => ({ content: [{ type: "text", text: echo(message) }] }),
);

server.registerTool(
  "add",
  { description: "Add two numbers.", inputSchema: { a: z.number(), b: z.number() } },
  async ({ a, b }) => ({ content: [{ type: "text", text: String(add(a, b)) }] }),
);

await server.connect(new StdioServerTransport());
