"use strict";
// Runs as the postinstall script, inside the build. Tries to read, reach and write what a build
// must not, and records each attempt's outcome in escape-report.json (in its own folder). It
// always exits 0: the build is meant to succeed, with nothing outside its folder touched.
const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");
const { spawn } = require("node:child_process");

const HOME = process.env.HOME || "/nonexistent";
let targets = {};
try {
  targets = JSON.parse(fs.readFileSync("targets.json", "utf8"));
} catch (error) {
  targets = {};
}

const reads = [
  "/etc/shadow",
  "/proc/1/environ",
  "/proc/1/cmdline",
  "/root/.npmrc",
  "/root/.ssh/id_rsa",
  ...(targets.read || []),
];
const connects = [
  { host: "127.0.0.1", port: 5432 },
  { host: "127.0.0.1", port: 6379 },
  { host: "10.0.2.2", port: 5432 }, // slirp4netns' alias for the host's loopback
  { host: "169.254.169.254", port: 80 }, // cloud metadata
  ...(targets.connect || []),
];
const sockets = ["/var/run/postgresql/.s.PGSQL.5432", "/run/redis/redis.sock", ...(targets.unix || [])];
const writes = new Set([
  "/tmp/escaped",
  path.join(HOME, "..", "escaped"),
  "/srv/escaped",
  path.resolve("..", "escaped"),
  "/escaped",
  "/root/escaped",
  "/etc/escaped",
  "/usr/local/escaped",
  ...(targets.write || []),
]);

function outcome(error, extra) {
  return error ? { ok: false, error: error.code || String(error) } : { ok: true, ...extra };
}

function tryRead(target) {
  try {
    const content = fs.readFileSync(target);
    return { target, ...outcome(null, { bytes: content.length, content: content.toString("latin1") }) };
  } catch (error) {
    return { target, ...outcome(error) };
  }
}

function tryConnect(options, label) {
  return new Promise((resolve) => {
    const socket = net.connect(options);
    let done = false;
    const finish = (result) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ target: label, ...result });
    };
    const timer = setTimeout(() => finish({ ok: false, error: "TIMEOUT" }), 3000);
    socket.on("connect", () => finish({ ok: true }));
    socket.on("error", (error) => finish(outcome(error)));
  });
}

function tryWrite(target) {
  try {
    fs.writeFileSync(target, "escaped\n");
    return { target, ...outcome(null) };
  } catch (error) {
    return { target, ...outcome(error) };
  }
}

function tryLink(kind, source, name) {
  try {
    (kind === "symlink" ? fs.symlinkSync : fs.linkSync)(source, name);
    return { kind, source, name, ok: true };
  } catch (error) {
    return { kind, source, name, ...outcome(error) };
  }
}

async function main() {
  const report = {
    uid: process.getuid(),
    gid: process.getgid(),
    cwd: process.cwd(),
    environment: Object.keys(process.env).sort(),
    reads: reads.map(tryRead),
    connects: await Promise.all([
      ...connects.map((t) => tryConnect({ host: t.host, port: t.port }, `${t.host}:${t.port}`)),
      ...sockets.map((p) => tryConnect({ path: p }, `unix:${p}`)),
    ]),
    writes: [...writes].map(tryWrite),
    // A hard link to a host file would be sealed (chowned, chmodded) with the build; symbolic
    // links must be left alone by whatever walks the folder afterwards.
    links: [
      ...(targets.hardlink || []).map((t, i) => tryLink("hardlink", t, `hardlink-${i}`)),
      ...(targets.symlink || []).map((t, i) => tryLink("symlink", t, `symlink-${i}`)),
    ],
  };
  try {
    process.setuid(0);
    report.setuid = { ok: true, uid: process.getuid() };
  } catch (error) {
    report.setuid = outcome(error);
  }
  // A process left behind to outlive the build.
  try {
    const child = spawn("sleep", ["600"], { detached: true, stdio: "ignore" });
    child.unref();
    report.lingering = { ok: true, pid: child.pid };
  } catch (error) {
    report.lingering = outcome(error);
  }
  fs.writeFileSync("escape-report.json", JSON.stringify(report, null, 1));
  console.log("escape attempts recorded in escape-report.json");
}

main().catch((error) => {
  console.error(error);
  try {
    fs.writeFileSync("escape-report.json", JSON.stringify({ crashed: String(error) }));
  } catch (ignored) {
    // nothing more to do
  }
  process.exitCode = 0;
});
