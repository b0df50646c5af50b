/**
 * The agent's configuration and store as the local commands (`collect`, `job`)
 * see them: the same state directory and pool bounds as `quantd agent` with the
 * same config file, environment and board profile, so that what one command
 * writes the agent reads.
 */
import { detectDevice } from "../device/detect.ts";
import { type AgentConfig, type ConfigFlags, loadAgentConfig } from "../agent/config.ts";
import { loadTokenizer } from "../runtime/tokenizer.ts";
import { databasePath, openStore, type Store } from "../store/store.ts";
import type { FlagSpec, ParsedFlags } from "./command.ts";
import { flagString } from "./parse.ts";
import { SHIPPED_MODEL } from "./paths.ts";

/** Where the state directory is when `--state-dir` is not given, as the agent's config resolves it. */
export const STATE_DIR_DEFAULT =
  "$QUANTD_STATE_DIR, else $STATE_DIRECTORY, else $XDG_STATE_HOME/quantd, else ~/.local/state/quantd";

/** `--config` and `--state-dir`, as `quantd agent` takes them. */
export const AGENT_STATE_FLAGS: readonly FlagSpec[] = [
  { name: "config", type: "string", value: "FILE", description: "agent config file (TOML or JSON)" },
  {
    name: "state-dir",
    type: "string",
    value: "DIR",
    description: "state directory holding quantd.db and the models",
    default: STATE_DIR_DEFAULT,
  },
];

/**
 * The agent's configuration for these flags.
 * @throws CONFIG_INVALID for a bad config file or environment value
 */
export function agentConfigFromFlags(flags: ParsedFlags): AgentConfig {
  const configFlags: ConfigFlags = {};
  const config = flagString(flags, "config");
  const stateDir = flagString(flags, "state-dir");
  if (config !== undefined) configFlags.config = config;
  if (stateDir !== undefined) configFlags.stateDir = stateDir;
  return loadAgentConfig({
    profile: detectDevice().profile,
    defaultModel: SHIPPED_MODEL,
    flags: configFlags,
  });
}

/**
 * Opens the agent's store with its sample-pool bounds (overridable) and token
 * lengths from the configured tokenizer, untruncated and with special tokens.
 */
export async function openAgentStore(
  config: AgentConfig,
  pool: { maxRows?: number; maxBytes?: number; tokenizerDir?: string } = {},
): Promise<Store> {
  const tokenizer = await loadTokenizer(pool.tokenizerDir ?? config.tokenizerDir);
  return openStore(databasePath(config.stateDir), {
    samples: {
      maxRows: pool.maxRows ?? config.samplePool.maxRows,
      maxBytes: pool.maxBytes ?? config.samplePool.maxBytes,
      countTokens: (text, pair) =>
        pair === undefined
          ? tokenizer.tokenIds(text).length + tokenizer.specialsSingle
          : tokenizer.tokenIds(text).length + tokenizer.tokenIds(pair).length + tokenizer.specialsPair,
    },
  });
}
