/**
 * `quantd completion bash|zsh`: prints a shell completion script generated
 * from the command registry.
 */
import { COMPLETION_SHELLS, completionScript } from "../completion.ts";
import type { Command } from "../command.ts";
import { usageError } from "../parse.ts";

/** The `completion` command. */
export const completionCommand: Command = {
  name: "completion",
  summary: "print a bash or zsh completion script",
  usage: "bash|zsh",
  actions: COMPLETION_SHELLS,
  description:
    "Prints a completion script for the shell, generated from quantd's commands and flags: commands, " +
    "actions (agent models, job list, fleet serve…), flags, and files or directories for flags that take them.\n\n" +
    "bash: `source <(quantd completion bash)` in ~/.bashrc, or " +
    "`quantd completion bash > ~/.local/share/bash-completion/completions/quantd`.\n\n" +
    "zsh: `quantd completion zsh > ~/.zfunc/_quantd` with ~/.zfunc in $fpath before compinit, or " +
    "`source <(quantd completion zsh)` after compinit.",
  flags: [],
  async run(ctx) {
    const [shell, ...rest] = ctx.positionals;
    const known = COMPLETION_SHELLS.find((s) => s === shell);
    if (known === undefined) {
      throw usageError(
        shell === undefined
          ? `quantd completion needs a shell: ${COMPLETION_SHELLS.join(" or ")}`
          : `no completion for shell "${shell}" (${COMPLETION_SHELLS.join(", ")})`,
      );
    }
    if (rest.length > 0) throw usageError(`unexpected argument "${rest[0]}"`);
    // Loaded here: the registry lists this command too.
    const { commands } = await import("./index.ts");
    ctx.out(completionScript(known, commands).trimEnd());
    return 0;
  },
};
