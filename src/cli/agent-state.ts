/**
 * The agent's configuration and store as the local commands (`collect`, `job`)
 * see them: the same state directory and pool bounds as `quantd agent` with the
 * same config file, environment and board profile, so that what one command
 * writes the agent reads.
 */
import { detectDevice } from "../device/detect.ts";
import { type AgentConfig, type ConfigFlags, loadAgentConfig } from "../agent/config.ts";
import { join } from "node:path";
import { versionTokenizerDir } from "../agent/version-tokenizer.ts";
import { isQuantdError, QuantdError } from "../errors.ts";
import { readGraphOutline } from "../onnx/graph-outline.ts";
import { taskOfModel } from "../quant/task-validate.ts";
import { findModelFiles } from "../runtime/model-files.ts";
import type { TaskSpec } from "../runtime/task.ts";
import { loadTokenizer, type Tokenizer } from "../runtime/tokenizer.ts";
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
 * lengths, untruncated and with special tokens, from the tokenizer the agent
 * would serve with: `pool.tokenizerDir` when given; the configured one when
 * the model is configured (the agent serves that one) or the store has no
 * active version; else the one the active version was registered with.
 *
 * @throws TOKENIZER_NOT_FOUND when the active version's tokenizer copy is gone (naming it)
 */
export async function openAgentStore(
  config: AgentConfig,
  pool: { maxRows?: number; maxBytes?: number; tokenizerDir?: string } = {},
): Promise<Store> {
  let tokenizer: Tokenizer | undefined;
  // Counts are asked for only by writes, after the tokenizer below is loaded.
  const counted = (): Tokenizer => {
    if (tokenizer === undefined) throw new QuantdError("INTERNAL", "the store's tokenizer is not loaded yet");
    return tokenizer;
  };
  const store = await openStore(databasePath(config.stateDir), {
    samples: {
      maxRows: pool.maxRows ?? config.samplePool.maxRows,
      maxBytes: pool.maxBytes ?? config.samplePool.maxBytes,
      countTokens: (text, pair) => {
        const t = counted();
        return pair === undefined
          ? t.tokenIds(text).length + t.specialsSingle
          : t.tokenIds(text).length + t.tokenIds(pair).length + t.specialsPair;
      },
    },
  });
  try {
    tokenizer = await loadTokenizer(pool.tokenizerDir ?? servingTokenizerDir(config, store));
  } catch (err) {
    store.close();
    throw err;
  }
  return store;
}

/**
 * The task of the model an agent of `config` serves (the active version, or
 * the configured model as in {@link openAgentStore}), read from its graph's
 * outline and the files served beside it, with the config's task override;
 * `undefined` when there is no readable model (the agent could not serve one either).
 */
export async function servedTask(
  config: AgentConfig,
  store: Store,
): Promise<{ task: TaskSpec; model: string } | undefined> {
  const active = store.models.active();
  const model = config.modelExplicit || active === undefined ? config.model : active.path;
  try {
    const files = findModelFiles(model, servingTokenizerDir(config, store));
    const outline = await readGraphOutline(files.model);
    if (outline === undefined) return undefined;
    return { task: taskOfModel(outline, files, config.task), model: files.model };
  } catch (err) {
    // No model, no tokenizer, no task read from them: the agent names that when it loads the model.
    if (isQuantdError(err)) return undefined;
    throw err;
  }
}

/** The tokenizer directory an agent of `config` serves with (see {@link openAgentStore}). */
function servingTokenizerDir(config: AgentConfig, store: Store): string {
  const active = store.models.active();
  if (config.modelExplicit || active === undefined) return config.tokenizerDir;
  return versionTokenizerDir(active, {
    models: store.models,
    modelsDir: join(config.stateDir, "models"),
    tokenizerDir: config.tokenizerDir,
    tokenizerExplicit: config.tokenizerDirExplicit === true,
  });
}
