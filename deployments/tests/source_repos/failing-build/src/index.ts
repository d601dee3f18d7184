import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";

const server = new McpServer({ name: "broken-echo-mcp", version: "0.1.0" });

// The deliberate mistake: a string where a number is declared.
const timeoutSeconds: number = "thirty";

server.registerTool(
  "echo",
  { description: "Return the message.", inputSchema: { message: z.string() } },
  async ({ message }) => ({ content: [{ type: "text", text: `${message} (${timeoutSeconds})` }] }),
);

await server.connect(new StdioServerTransport());
