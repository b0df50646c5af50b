/**
 * `quantd device`: what board quantd detected here and the defaults it chose.
 */
import { statSync } from "node:fs";
import { basename, dirname } from "node:path";
import { defaultStateDir } from "../../agent/config.ts";
import { type AutoChoice, readBoardRecord } from "../../device/auto-choices.ts";
import { detectDevice } from "../../device/detect.ts";
import { QuantdError } from "../../errors.ts";
import type { Command } from "../command.ts";
import { expectNoPositionals, flagBool, flagString } from "../parse.ts";
import { renderTable } from "../render.ts";

/**
 * A recorded board's root must exist: read as-is, a typo would silently describe an
 * empty board (no cores, no memory) instead of failing.
 * @throws FILE_NOT_FOUND when `root` is not a directory
 */
function checkRoot(root: string): void {
  let isDir = false;
  try {
    isDir = statSync(root).isDirectory();
  } catch (err) {
    throw new QuantdError("FILE_NOT_FOUND", `--root: no directory ${root}`, {
      cause: err,
      details: { path: root },
    });
  }
  if (!isDir)
    throw new QuantdError("FILE_NOT_FOUND", `--root: ${root} is not a directory`, {
      details: { path: root },
    });
}

/**
 * One recorded `--mode auto` winner: the model (its directory's name when it is `model.onnx`; for the agent's
 * registry copy, the file the user gave, with the copy's hash to tell versions apart), the winner and why.
 */
function autoRow(c: AutoChoice): string[] {
  const nameOf = (path: string) =>
    basename(path) === "model.onnx" ? basename(dirname(path)) : basename(path);
  const name =
    c.source === undefined ? nameOf(c.model) : `${nameOf(c.source)}, ${basename(c.model).slice(0, 12)}`;
  const vsFp32 = c.vsFp32 === undefined ? "" : `; ${c.vsFp32}`;
  return [`auto winner (${name})`, `${c.decision}${vsFp32} [${c.at.slice(0, 16).replace("T", " ")}]`];
}

/** The `device` command. */
export const deviceCommand: Command = {
  name: "device",
  summary: "show the detected board and the profile quantd uses on it",
  usage: "[--root DIR] [--state-dir DIR] [--json]",
  description:
    "Reads /proc/device-tree/model, /proc/cpuinfo and /proc/meminfo (under --root, for recorded files " +
    "of other boards) and prints the facts and the chosen profile: threads, int8 formats to try first, " +
    "memory limit and sample-pool size, and what `--mode auto` found fastest here for each model (recorded in " +
    "the agent's state directory by `quantd quantize --mode auto` and auto recalibrations). Fails with " +
    "DEVICE_UNSUPPORTED on 32-bit ARM or glibc older than 2.28.",
  flags: [
    { name: "root", type: "string", value: "DIR", description: "read /proc from this prefix", default: "/" },
    {
      name: "state-dir",
      type: "string",
      value: "DIR",
      description: "the agent's state directory, where auto winners are recorded (default: the agent's)",
    },
    { name: "json", type: "boolean", description: "print one JSON object" },
  ],
  async run(ctx) {
    expectNoPositionals(ctx.positionals);
    const root = flagString(ctx.flags, "root");
    if (root !== undefined) checkRoot(root);
    const { facts, profile } = detectDevice(root === undefined ? {} : { root });
    const stateDir =
      flagString(ctx.flags, "state-dir") ?? process.env["QUANTD_STATE_DIR"] ?? defaultStateDir(process.env);
    const record = readBoardRecord(stateDir);
    if (record.problem !== undefined) ctx.err(`warning: ${record.problem}`);
    if (flagBool(ctx.flags, "json")) {
      ctx.out(JSON.stringify({ facts, profile, auto: record.choices }, null, 2));
      return 0;
    }
    const interesting = ["asimddp", "i8mm", "sve", "avx2", "avx512_vnni", "avx_vnni"].filter((f) =>
      facts.features.includes(f),
    );
    const rows: string[][] = [
      ["board", profile.name],
      ["model", facts.model ?? "(no device tree)"],
      ["arch", facts.arch],
      ["cores", String(facts.cores)],
      ["memory", `${facts.memTotalMb} MiB`],
      ["int8 features", interesting.length > 0 ? interesting.join(" ") : "none"],
      ["glibc", facts.glibc ?? "unknown"],
      ["threads", String(profile.threads)],
      ["formats to try", profile.preferredFormats.join(", ")],
      [
        "auto candidates",
        profile.auto.candidates
          .map((c) =>
            c.mode === "dynamic" ? "dynamic" : `${c.format}/${c.activations === "int8" ? "s8s8" : "u8s8"}`,
          )
          .join(", "),
      ],
      ["reduce range", profile.reduceRange ? "yes" : "no"],
      ["memory max", `${profile.memoryMaxMb} MiB`],
      ["sample pool", `${profile.samplePool.maxRows} rows, ${profile.samplePool.maxBytes / 1048576} MiB`],
    ];
    rows.push(...record.choices.map(autoRow));
    for (const line of renderTable(rows)) ctx.out(line);
    return 0;
  },
};
