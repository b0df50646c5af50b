/**
 * `bun run build`: single-executable release tarballs for the boards.
 *
 *   bun scripts/build.ts [--target linux-arm64|linux-x64]… [--out DIR] [--no-tarball]
 *
 * For each target (default: both) it writes `DIR/quantd-<target>/` and
 * `DIR/quantd-<target>.tar.gz` (DIR defaults to `dist/`) holding:
 *
 *   quantd                     the `bun build --compile` executable of src/cli/main.ts
 *   lib/                       onnxruntime_binding.node + libonnxruntime.so.1 for that platform
 *   calib/models/sst2-bert-mini/, calib/samples/*.tsv   the shipped model and SST-2 samples (demo, eval)
 *   quantd.service, config.default.json, install.sh, sysusers.conf   from deploy/
 *
 * Cross-compiling needs Bun's runtime for the other platform. Bun would
 * download it; we take the same binary from npm (`@oven/bun-linux-aarch64` /
 * `@oven/bun-linux-x64` at this Bun's version) with `npm pack` into a cache
 * directory (`$QUANTD_CACHE_DIR`, else `~/.cache/quantd`) and hand it to Bun as
 * `compile.executablePath`. `QUANTD_BUN_RUNTIME_ARM64` / `_X64` name a runtime
 * to use instead.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, rmSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { basename, join, resolve } from "node:path";
import type { BunPlugin } from "bun";
import { NATIVE_LIB_DIR, ORT_NATIVE_FILES } from "../src/runtime/native-path.ts";

/** Release targets. */
export type BuildTarget = "linux-arm64" | "linux-x64";

/** All targets, in build order. */
export const BUILD_TARGETS: readonly BuildTarget[] = ["linux-arm64", "linux-x64"];

const REPO_ROOT = resolve(import.meta.dir, "..");

/** Node-style architecture of a target, as onnxruntime-node names its folders. */
function nodeArch(target: BuildTarget): "arm64" | "x64" {
  switch (target) {
    case "linux-arm64":
      return "arm64";
    case "linux-x64":
      return "x64";
  }
}

/** npm package shipping Bun's runtime for a target. */
function runtimePackage(target: BuildTarget): string {
  return target === "linux-arm64" ? "@oven/bun-linux-aarch64" : "@oven/bun-linux-x64";
}

/** Where downloaded Bun runtimes are cached. */
export function cacheDir(): string {
  const fromEnv = process.env["QUANTD_CACHE_DIR"];
  return fromEnv !== undefined && fromEnv !== "" ? fromEnv : join(homedir(), ".cache", "quantd");
}

/**
 * Bun's runtime executable for `target`, at the running Bun's version: this
 * Bun itself when the target is the host, else the npm package's binary
 * (fetched once with `npm pack` into {@link cacheDir}).
 *
 * @throws Error when npm cannot fetch the package
 */
export function bunRuntime(target: BuildTarget): string {
  const arch = nodeArch(target);
  const override = process.env[`QUANTD_BUN_RUNTIME_${arch.toUpperCase()}`];
  if (override !== undefined && override !== "") return override;
  if (arch === process.arch) return process.execPath;
  const pkg = runtimePackage(target);
  const dir = join(cacheDir(), `${basename(pkg)}-${Bun.version}`);
  const exe = join(dir, "package", "bin", "bun");
  if (existsSync(exe)) return exe;
  mkdirSync(dir, { recursive: true });
  console.error(`fetching ${pkg}@${Bun.version} from npm into ${dir}`);
  const tgz = execFileSync("npm", ["pack", "--silent", `${pkg}@${Bun.version}`], {
    cwd: dir,
    encoding: "utf8",
  })
    .trim()
    .split("\n")
    .at(-1);
  if (tgz === undefined || tgz === "") throw new Error(`npm pack ${pkg}@${Bun.version} printed no file name`);
  execFileSync("tar", ["-xzf", tgz], { cwd: dir });
  rmSync(join(dir, tgz));
  if (!existsSync(exe)) throw new Error(`${pkg}@${Bun.version} holds no package/bin/bun`);
  chmodSync(exe, 0o755);
  return exe;
}

/**
 * Makes onnxruntime-node load its binding from `lib/` beside the executable
 * (see src/runtime/native-path.ts for why the embedded copy cannot work).
 */
function ortBindingFromLibDir(): BunPlugin {
  const nativePath = join(REPO_ROOT, "src/runtime/native-path.ts");
  return {
    name: "quantd-ort-binding-from-lib-dir",
    setup(build) {
      build.onLoad({ filter: /onnxruntime-node[\\/]dist[\\/]binding\.js$/ }, async (args) => {
        const source = await Bun.file(args.path).text();
        const pattern =
          /require\(`\.\.\/bin\/napi-v6\/\$\{process\.platform\}\/\$\{process\.arch\}\/onnxruntime_binding\.node`\)/;
        if (!pattern.test(source)) {
          throw new Error(
            `${args.path}: onnxruntime-node's binding loader changed; update the rewrite in scripts/build.ts`,
          );
        }
        const contents = source.replace(
          pattern,
          `require(require(${JSON.stringify(nativePath)}).ortBindingPath())`,
        );
        return { contents, loader: "js" };
      });
    },
  };
}

/** Options of {@link buildExecutable}. */
export interface BuildExecutableOptions {
  target: BuildTarget;
  outfile: string;
}

/**
 * Compiles src/cli/main.ts into a single executable for `target`.
 *
 * @throws Error with Bun's build messages when compilation fails
 */
export async function buildExecutable(opts: BuildExecutableOptions): Promise<void> {
  let result: Bun.BuildOutput;
  try {
    result = await Bun.build({
      // The inference thread's entry is bundled beside the CLI's (a worker is loaded by path).
      entrypoints: [join(REPO_ROOT, "src/cli/main.ts"), join(REPO_ROOT, "src/runtime/session-thread.ts")],
      compile: {
        target: `bun-${opts.target}`,
        executablePath: bunRuntime(opts.target),
        outfile: opts.outfile,
        // A service must not pick up a stray .env or bunfig.toml from its working directory.
        autoloadDotenv: false,
        autoloadBunfig: false,
      },
      minify: { syntax: true, whitespace: true },
      plugins: [ortBindingFromLibDir()],
    });
  } catch (err) {
    // Bun throws an AggregateError whose `errors` hold the build messages.
    const messages = err instanceof AggregateError ? err.errors.map((e) => String(e)) : [String(err)];
    throw new Error(`bun build failed:\n${messages.join("\n")}`);
  }
  if (!result.success) {
    throw new Error(`bun build failed:\n${result.logs.map((l) => String(l)).join("\n")}`);
  }
}

/** Options of {@link buildRelease}. */
export interface BuildReleaseOptions {
  target: BuildTarget;
  /** @defaultValue `dist/` in the repository */
  outDir?: string;
  /** Also write `quantd-<target>.tar.gz`. @defaultValue true */
  tarball?: boolean;
}

/** What {@link buildRelease} wrote. */
export interface BuiltRelease {
  /** The staged folder `quantd-<target>/`. */
  dir: string;
  executable: string;
  tarball: string | undefined;
}

/**
 * Builds the staged folder (and tarball) of one target.
 *
 * @throws Error when a shipped file is missing or a step fails
 */
export async function buildRelease(opts: BuildReleaseOptions): Promise<BuiltRelease> {
  const outDir = resolve(opts.outDir ?? join(REPO_ROOT, "dist"));
  const name = `quantd-${opts.target}`;
  const dir = join(outDir, name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, NATIVE_LIB_DIR), { recursive: true });

  const executable = join(dir, "quantd");
  await buildExecutable({ target: opts.target, outfile: executable });

  const ortDir = join(REPO_ROOT, "node_modules/onnxruntime-node/bin/napi-v6/linux", nodeArch(opts.target));
  for (const f of ORT_NATIVE_FILES) copyFileSync(join(ortDir, f), join(dir, NATIVE_LIB_DIR, f));

  const modelDir = "calib/models/sst2-bert-mini";
  for (const f of ["model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json"]) {
    cpSync(join(REPO_ROOT, modelDir, f), join(dir, modelDir, f));
  }
  cpSync(join(REPO_ROOT, "calib/samples"), join(dir, "calib/samples"), {
    recursive: true,
    filter: (src) => src.endsWith(".tsv") || statSync(src).isDirectory(),
  });
  for (const f of ["quantd.service", "config.default.json", "sysusers.conf"]) {
    copyFileSync(join(REPO_ROOT, "deploy", f), join(dir, f));
  }
  copyFileSync(join(REPO_ROOT, "deploy/install.sh"), join(dir, "install.sh"));
  chmodSync(join(dir, "install.sh"), 0o755);

  let tarball: string | undefined;
  if (opts.tarball !== false) {
    tarball = join(outDir, `${name}.tar.gz`);
    execFileSync(
      "tar",
      ["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-czf", tarball, "-C", outDir, name],
      { stdio: "inherit" },
    );
  }
  return { dir, executable, tarball };
}

function mib(path: string): string {
  return `${(statSync(path).size / 1048576).toFixed(1)} MiB`;
}

async function main(argv: readonly string[]): Promise<void> {
  const targets: BuildTarget[] = [];
  let outDir: string | undefined;
  let tarball = true;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--target") {
      const t = argv[++i];
      if (t !== "linux-arm64" && t !== "linux-x64")
        throw new Error(`--target must be linux-arm64 or linux-x64, got ${t}`);
      targets.push(t);
    } else if (a === "--out") {
      outDir = argv[++i];
      if (outDir === undefined) throw new Error("--out needs a directory");
    } else if (a === "--no-tarball") tarball = false;
    else throw new Error(`unknown argument ${a} (usage: build.ts [--target T]… [--out DIR] [--no-tarball])`);
  }
  for (const target of targets.length > 0 ? targets : BUILD_TARGETS) {
    const started = performance.now();
    const built = await buildRelease({ target, ...(outDir === undefined ? {} : { outDir }), tarball });
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    const tgz = built.tarball === undefined ? "" : `, ${built.tarball} ${mib(built.tarball)}`;
    console.log(`${target}: ${built.executable} ${mib(built.executable)}${tgz} (${secs} s)`);
  }
}

if (import.meta.main) {
  try {
    await main(process.argv.slice(2));
  } catch (err) {
    console.error(`build failed: ${(err as Error).message}`);
    process.exit(1);
  }
}
