// The "build": copy src/ to dist/ with a banner, as a bundler would (without one).
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";

mkdirSync("dist", { recursive: true });
for (const name of readdirSync("src")) {
  const source = readFileSync(`src/${name}`, "utf8");
  writeFileSync(`dist/${name}`, `// Built from src/${name}.\n${source}`);
}
console.log("built dist/");
