/**
 * The layer order of `src/` (README, "Architecture"), checked on every import:
 * a file may import its own layer and layers of a lower rank, never a sibling
 * or one above it; each native driver is imported by its one file; and a new
 * folder in `src/` fails here until it is given a place in the table.
 *
 * Imports are read by a small scanner (type-only and dynamic imports count: a
 * type from above is still a dependency on above), cross-checked against Bun's
 * own transpiler so a scanner that misses imports fails instead of passing.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "../..");

/**
 * Every production folder or file and its rank, lowest first. Longest prefix
 * wins, so `src/fleet/controller/` is its own layer above `src/fleet/`.
 */
const LAYERS: readonly { layer: string; rank: number; prefix: string }[] = [
  // Leaves: imported by every layer, importing nothing of quantd but each other.
  { layer: "leaf", rank: 0, prefix: "src/core/" },
  { layer: "leaf", rank: 0, prefix: "src/errors.ts" },
  { layer: "leaf", rank: 0, prefix: "src/json.ts" },
  { layer: "leaf", rank: 0, prefix: "src/log.ts" },
  { layer: "leaf", rank: 0, prefix: "src/redact.ts" },
  { layer: "onnx", rank: 1, prefix: "src/onnx/" },
  // Board detection and profiles.
  { layer: "device", rank: 1, prefix: "src/device/" },
  { layer: "runtime", rank: 2, prefix: "src/runtime/" },
  { layer: "quant", rank: 3, prefix: "src/quant/" },
  { layer: "bench", rank: 3, prefix: "src/bench/" },
  { layer: "store", rank: 3, prefix: "src/store/" },
  // The one job engine over the store's job table: the agent's jobs and a fleet link's run in it.
  { layer: "jobs", rank: 4, prefix: "src/jobs/" },
  // The socket server, and what every side of the fleet shares: the protocol, signing, the MQTT client,
  // release manifests.
  { layer: "server", rank: 4, prefix: "src/server/" },
  { layer: "fleet", rank: 4, prefix: "src/fleet/" },
  // The two ends that send commands and the one that answers them, on the shared fleet layer: the
  // device's link (never the operator's requester) and the operator's requester (never the link).
  { layer: "fleet/device", rank: 5, prefix: "src/fleet/device/" },
  { layer: "fleet/operator", rank: 5, prefix: "src/fleet/operator/" },
  // The agent composes server and device link; the controller sits on the protocol and the operator side.
  { layer: "agent", rank: 6, prefix: "src/agent/" },
  { layer: "fleet/controller", rank: 6, prefix: "src/fleet/controller/" },
  { layer: "cli", rank: 7, prefix: "src/cli/" },
];

/** Files outside the layers that any layer may read: the package's own metadata. */
const OUTSIDE_ALLOWED = new Set(["package.json"]);

/** Each package that binds native code or a protocol, and the only files that import it. */
const DRIVERS: Readonly<Record<string, readonly string[]>> = {
  "onnxruntime-node": ["src/runtime/ort-session.ts"],
  "better-sqlite3": ["src/store/sqlite/node.ts"],
  "bun:sqlite": ["src/store/sqlite/bun.ts"],
  // Bun's built-in PostgreSQL client (`SQL`).
  bun: ["src/fleet/controller/postgres-store.ts"],
  mqtt: ["src/fleet/mqtt-client.ts"],
  aedes: ["src/fleet/embedded-broker.ts"],
  protobufjs: ["src/onnx/onnx-schema.ts"],
  "@huggingface/tokenizers": ["src/runtime/tokenizer.ts"],
  // libc.ts is the general libc binding; sd-notify.ts binds socket/sendto before
  // the agent has anything else, ort-session.ts binds the native setenv the
  // onnxruntime addon reads. May only shrink toward libc.ts.
  "bun:ffi": ["src/agent/libc.ts", "src/agent/sd-notify.ts", "src/runtime/ort-session.ts"],
};

/** The layer a repository path belongs to, or undefined outside every layer. */
function layerOf(path: string): { layer: string; rank: number } | undefined {
  let best: (typeof LAYERS)[number] | undefined;
  for (const l of LAYERS) {
    if (path === l.prefix || (l.prefix.endsWith("/") && path.startsWith(l.prefix))) {
      if (!best || l.prefix.length > best.prefix.length) best = l;
    }
  }
  return best && { layer: best.layer, rank: best.rank };
}

/** Whether a token before `/` means the slash starts a regular expression, not a division. */
function regexCanFollow(prev: string): boolean {
  return prev === "" || /^[(,=:[!&|?{};+\-*%<>~^]$/.test(prev) || prev === "return" || prev === "typeof";
}

/**
 * Every module specifier in TypeScript source: `import … from`, `export … from`,
 * `import type`, side-effect `import "x"` and `import("x")`. Comments, string
 * contents, template literals and regular expressions are skipped, so text that
 * only looks like an import is not one.
 */
function importSpecifiers(code: string): string[] {
  const out: string[] = [];
  let prev = "";
  let prev2 = "";
  const push = (token: string) => {
    prev2 = prev;
    prev = token;
  };
  let i = 0;
  while (i < code.length) {
    const c = code[i] as string;
    const next = code[i + 1];
    if (c === "/" && next === "/") {
      const end = code.indexOf("\n", i);
      i = end < 0 ? code.length : end;
    } else if (c === "/" && next === "*") {
      const end = code.indexOf("*/", i + 2);
      i = end < 0 ? code.length : end + 2;
    } else if (c === '"' || c === "'" || c === "`") {
      let j = i + 1;
      while (j < code.length && code[j] !== c) j += code[j] === "\\" ? 2 : 1;
      if (c !== "`" && (prev === "from" || prev === "import" || (prev === "(" && prev2 === "import"))) {
        out.push(code.slice(i + 1, j));
      }
      push("string");
      i = j + 1;
    } else if (c === "/" && regexCanFollow(prev)) {
      let j = i + 1;
      let inClass = false;
      while (j < code.length && (inClass || code[j] !== "/") && code[j] !== "\n") {
        if (code[j] === "\\") j++;
        else if (code[j] === "[") inClass = true;
        else if (code[j] === "]") inClass = false;
        j++;
      }
      push("regex");
      i = j + 1;
    } else if (/\s/.test(c)) {
      i++;
    } else if (/[\w$]/.test(c)) {
      let j = i;
      while (j < code.length && /[\w$]/.test(code[j] as string)) j++;
      push(code.slice(i, j));
      i = j;
    } else {
      push(c);
      i++;
    }
  }
  return out;
}

/** The production files: everything under `src/`. */
function productionFiles(): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith(".ts")) out.push(relative(ROOT, path));
    }
  };
  walk(join(ROOT, "src"));
  return out.sort();
}

/** Every broken rule in one source file, one line each. */
function violationsIn(file: string, code: string): string[] {
  const from = layerOf(file);
  if (!from) return [`${file}: in no layer; give its folder a rank in test/unit/layers.test.ts`];
  const found: string[] = [];
  for (const spec of importSpecifiers(code)) {
    if (spec.startsWith(".")) {
      const target = relative(ROOT, resolve(ROOT, dirname(file), spec));
      const to = layerOf(target);
      if (!to) {
        if (!OUTSIDE_ALLOWED.has(target)) found.push(`${file} → ${target}: outside every layer`);
      } else if (to.layer !== from.layer && to.rank >= from.rank) {
        found.push(`${file} (${from.layer}, rank ${from.rank}) → ${target} (${to.layer}, rank ${to.rank})`);
      }
    } else if (!spec.startsWith("node:")) {
      const owners = DRIVERS[spec];
      if (!owners) found.push(`${file} → ${spec}: a package with no owning file in DRIVERS`);
      else if (!owners.includes(file))
        found.push(`${file} → ${spec}: only ${owners.join(", ")} may import it`);
    }
  }
  return found;
}

describe("layers", () => {
  const files = productionFiles();

  test("no file imports a layer above its own or a sibling; each driver has one file", () => {
    const found = files.flatMap((f) => violationsIn(f, readFileSync(join(ROOT, f), "utf8")));
    expect(found).toEqual([]);
  });

  test("every driver's owning file exists and still imports it", () => {
    for (const [pkg, owners] of Object.entries(DRIVERS)) {
      for (const owner of owners) {
        expect(existsSync(join(ROOT, owner))).toBe(true);
        expect({
          owner,
          imports: importSpecifiers(readFileSync(join(ROOT, owner), "utf8")).includes(pkg),
        }).toEqual({
          owner,
          imports: true,
        });
      }
    }
  });

  test("the scanner sees every import Bun's transpiler sees", () => {
    const bun = new Bun.Transpiler({ loader: "ts" });
    for (const f of files) {
      const code = readFileSync(join(ROOT, f), "utf8");
      const ours = new Set(importSpecifiers(code));
      const missed = bun
        .scanImports(code)
        .map((i) => i.path)
        .filter((p) => !ours.has(p));
      expect({ file: f, missed }).toEqual({ file: f, missed: [] });
    }
  });

  test("an import up, a sibling import, a stray package and a new folder are each caught", () => {
    const typeUp = `import type { AgentConfig } from "../agent/config.ts";`;
    expect(violationsIn("src/runtime/x.ts", typeUp)).toEqual([
      "src/runtime/x.ts (runtime, rank 2) → src/agent/config.ts (agent, rank 6)",
    ]);
    const dynamicSibling = `const m = await import("../store/store.ts");`;
    expect(violationsIn("src/quant/x.ts", dynamicSibling)).toHaveLength(1);
    expect(violationsIn("src/errors.ts", `export { x } from "./onnx/types.ts";`)).toHaveLength(1);
    expect(violationsIn("src/fleet/device/link.ts", `import "../controller/store.ts";`)).toHaveLength(1);
    // The device and operator sides of the fleet are siblings: neither reads the other.
    expect(violationsIn("src/fleet/device/link.ts", `import "../operator/requester.ts";`)).toEqual([
      "src/fleet/device/link.ts (fleet/device, rank 5) → src/fleet/operator/requester.ts (fleet/operator, rank 5)",
    ]);
    expect(violationsIn("src/fleet/protocol.ts", `import "./device/link.ts";`)).toHaveLength(1);
    // The job engine sits below every fleet side and the agent: it knows no topic and no registry.
    expect(violationsIn("src/jobs/engine.ts", `import "../fleet/protocol.ts";`)).toHaveLength(1);
    expect(violationsIn("src/jobs/engine.ts", `import type { A } from "../agent/services.ts";`)).toHaveLength(
      1,
    );
    expect(
      violationsIn("src/fleet/device/link.ts", `import { JobEngine } from "../../jobs/engine.ts";`),
    ).toEqual([]);
    expect(violationsIn("src/cli/x.ts", `import { InferenceSession } from "onnxruntime-node";`)).toHaveLength(
      1,
    );
    expect(violationsIn("src/cli/x.ts", `import x from "../../test/helpers/x.ts";`)).toHaveLength(1);
    expect(violationsIn("src/widgets/x.ts", "")).toHaveLength(1);
    // Downward, same-layer and look-alikes in comments and strings are fine.
    const fine = [
      `import { QuantdError } from "../errors.ts";`,
      `import type { Graph } from "../onnx/types.ts";`,
      `import { a } from "./passes/rewrite.ts";`,
      `// import { b } from "../cli/main.ts";`,
      `const s = 'import c from "../cli/main.ts"'; const r = /["']/g;`,
    ].join("\n");
    expect(violationsIn("src/quant/x.ts", fine)).toEqual([]);
  });
});
