// biome-ignore-all lint/suspicious/noTemplateCurlyInString: these strings are shell code, whose ${…} is bash syntax
/**
 * `quantd completion bash|zsh`: the scripts come from the command registry and
 * complete in the real shells — commands, a command's actions, its flags, and
 * files for flags that take a file. bash runs the completion function directly;
 * zsh runs it in an interactive shell on a pseudo-terminal (zpty), recording
 * what the completion system offers. Without zsh, its test skips.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCommand, runQuantd } from "../helpers/run-cli.ts";

const hasZsh = Bun.which("zsh") !== null;
if (!hasZsh) console.warn("zsh not found (apt-get install zsh); the zsh completion test skips");

let dir: string;
let bashScript: string;
let zshScript: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "quantd-completion-"));
  for (const shell of ["bash", "zsh"]) {
    const r = await runQuantd(["completion", shell]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    writeFileSync(join(dir, `quantd.${shell}`), r.stdout);
  }
  bashScript = join(dir, "quantd.bash");
  zshScript = join(dir, "quantd.zsh");
  mkdirSync(join(dir, "work"));
  writeFileSync(join(dir, "work", "model.onnx"), "");
  mkdirSync(join(dir, "work", "state"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** What bash's completion offers for `line` (the cursor at its end). */
async function bashComplete(line: string): Promise<string[]> {
  const script = [
    `source ${JSON.stringify(bashScript)}`,
    `COMP_LINE=${JSON.stringify(line)}`,
    'read -ra COMP_WORDS <<< "$COMP_LINE"',
    '[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")',
    "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))",
    "_quantd",
    'printf "%s\\n" "${COMPREPLY[@]}"',
  ].join("\n");
  const r = await runCommand(["bash", "-c", script], { cwd: join(dir, "work") });
  expect(r.stderr).toBe("");
  return r.stdout.split("\n").filter((l) => l !== "");
}

describe("completion", () => {
  test("bash: commands, actions, flags, and files or directories where a flag takes them", async () => {
    expect(await bashComplete("quantd ag")).toEqual(["agent"]);
    expect(await bashComplete("quantd j")).toEqual(["job"]);
    expect(await bashComplete("quantd agent ")).toEqual(["models", "promote", "rollback"]);
    expect(await bashComplete("quantd fleet re")).toEqual(["recalibrate", "report", "release"]);
    expect((await bashComplete("quantd bench --se")).sort()).toEqual(["--seed", "--seq"]);
    expect(await bashComplete("quantd classify --model m")).toEqual(["model.onnx"]);
    expect(await bashComplete("quantd job list --state-dir ")).toEqual(["state"]);
    // A flag's value is not an action: after `--state-dir state` the action is still to come.
    expect(await bashComplete("quantd job --state-dir state c")).toEqual(["cancel"]);
    // After the action, arguments are files (`agent promote FILE`).
    expect(await bashComplete("quantd agent promote mo")).toEqual(["model.onnx"]);
    expect(await bashComplete("quantd completion ")).toEqual(["bash", "zsh"]);
  });

  test.skipIf(!hasZsh)(
    "zsh: the same completions through compinit",
    async () => {
      const driver = join(dir, "drive.zsh");
      // compadd is wrapped to record every match the completion functions add.
      writeFileSync(
        driver,
        [
          "zmodload zsh/zpty",
          "zpty z zsh -f -i",
          `zpty -w z "PROMPT=''; autoload -Uz compinit; compinit -u -D; source $1; cd $3"`,
          'zpty -w z \'compadd () { if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\\ * ]]; then builtin compadd "$@"; return $?; fi; typeset -a hits; builtin compadd -A hits "$@"; (( $#hits )) && print -l -- ${hits} >> \'"$4"\'; builtin compadd "$@" }\'',
          `zpty -n -w z "$2"$'\\t'`,
          "for i in {1..100}; do [[ -s $4 ]] && break; sleep 0.1; done",
          "sleep 0.3",
          "zpty -d z",
        ].join("\n"),
      );
      let n = 0;
      const zshComplete = async (line: string): Promise<string[]> => {
        const out = join(dir, `z${n++}.txt`);
        const r = await runCommand(["zsh", "-f", driver, zshScript, line, join(dir, "work"), out]);
        expect(r.code).toBe(0);
        const file = Bun.file(out);
        return (await file.exists()) ? (await file.text()).split("\n").filter((l) => l !== "") : [];
      };
      expect(await zshComplete("quantd ag")).toEqual(["agent"]);
      expect(await zshComplete("quantd agent ")).toEqual(
        expect.arrayContaining(["models", "promote", "rollback"]),
      );
      expect((await zshComplete("quantd bench --se")).sort()).toEqual(["--seed", "--seq"]);
      expect(await zshComplete("quantd classify --model m")).toEqual(["model.onnx"]);
    },
    60_000,
  );

  test("an unknown shell is a usage error", async () => {
    const r = await runQuantd(["completion", "fish"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('no completion for shell "fish" (bash, zsh)');
  });
});
