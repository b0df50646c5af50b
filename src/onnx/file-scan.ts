/**
 * A structural check of an ONNX file that reads only the framing of its
 * top-level fields (by positioned reads through one window), never the file
 * whole: what the agent uses to say why onnxruntime refused a model of any
 * size without holding it in memory (an 800 MB junk file must not cost 800 MB
 * of RSS to diagnose).
 */
import { type FileHandle, open } from "node:fs/promises";
import { QuantdError } from "../errors.ts";
import { MalformedProto, ProtoFileReader } from "./proto-reader.ts";

/** What the framing walk found. */
export interface ModelFileScan {
  bytes: number;
  irVersion: number | undefined;
  hasGraph: boolean;
  hasOpsetImport: boolean;
}

/** ModelProto's top-level field numbers the scan looks for. */
const IR_VERSION = 1;
const GRAPH = 7;
const OPSET_IMPORT = 8;
/** Highest IR version a plausible model carries (ONNX is at 10–11 today). */
const MAX_IR_VERSION = 64;
/** A ModelProto has a handful of top-level fields; far more means the bytes are not one. */
const MAX_TOP_LEVEL_FIELDS = 100_000;

/** The varint at `pos` and the bytes it takes; `undefined` at end of file or when it runs past 10 bytes. */
async function readVarint(r: ProtoFileReader, pos: number): Promise<[number, number] | undefined> {
  try {
    return await r.varint(pos);
  } catch (err) {
    if (err instanceof MalformedProto) return undefined;
    throw err;
  }
}

/**
 * Walks the top-level fields of the ModelProto in `path`.
 *
 * @throws MODEL_TRUNCATED when the file is empty or a field runs past its end while it starts like a model
 * @throws MODEL_NOT_ONNX when the framing is not a ModelProto's (bad wire type, field 0, no graph)
 * @throws FILE_NOT_FOUND | FILE_UNREADABLE when it cannot be read
 */
export async function scanModelFile(path: string): Promise<ModelFileScan> {
  let fh: FileHandle;
  try {
    fh = await open(path, "r");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code === "ENOENT" ? "FILE_NOT_FOUND" : "FILE_UNREADABLE";
    throw new QuantdError(code, `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const size = (await fh.stat()).size;
    if (size === 0) throw new QuantdError("MODEL_TRUNCATED", `${path} is empty, not an ONNX model`);
    const r = new ProtoFileReader(fh, size);
    const scan: ModelFileScan = { bytes: size, irVersion: undefined, hasGraph: false, hasOpsetImport: false };
    let startsLikeModel = false;
    const bad = (why: string): QuantdError =>
      startsLikeModel
        ? new QuantdError("MODEL_TRUNCATED", `${path} ends early: the ONNX model is truncated (${why})`, {
            details: { bytes: size },
          })
        : new QuantdError("MODEL_NOT_ONNX", `${path} is not an ONNX model (${why})`);
    let pos = 0;
    for (let fields = 0; pos < size; fields++) {
      if (fields >= MAX_TOP_LEVEL_FIELDS) throw bad("too many top-level fields");
      const tag = await readVarint(r, pos);
      if (tag === undefined) throw bad(`unreadable field tag at byte ${pos}`);
      pos += tag[1];
      const field = Math.floor(tag[0] / 8);
      const wire = tag[0] % 8;
      if (field === 0) throw bad(`field number 0 at byte ${pos - tag[1]}`);
      switch (wire) {
        case 0: {
          const v = await readVarint(r, pos);
          if (v === undefined) throw bad(`varint past the end at byte ${pos}`);
          pos += v[1];
          if (field === IR_VERSION) {
            scan.irVersion = v[0];
            if (fields === 0 && v[0] >= 1 && v[0] <= MAX_IR_VERSION) startsLikeModel = true;
          }
          break;
        }
        case 1:
          pos += 8;
          break;
        case 2: {
          const len = await readVarint(r, pos);
          if (len === undefined) throw bad(`length past the end at byte ${pos}`);
          pos += len[1] + len[0];
          if (field === GRAPH) scan.hasGraph = true;
          if (field === OPSET_IMPORT) scan.hasOpsetImport = true;
          break;
        }
        case 5:
          pos += 4;
          break;
        default:
          throw bad(`wire type ${wire} at byte ${pos - tag[1]}`);
      }
      if (pos > size) throw bad(`field ${field} runs ${pos - size} bytes past the end`);
    }
    if (!scan.hasGraph || !scan.hasOpsetImport) {
      throw bad(`no ${scan.hasGraph ? "opset imports" : "graph"}`);
    }
    if (scan.irVersion === undefined || scan.irVersion < 1 || scan.irVersion > MAX_IR_VERSION) {
      throw new QuantdError("MODEL_NOT_ONNX", `${path}: not an ONNX model (IR version ${scan.irVersion})`);
    }
    return scan;
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/**
 * Why onnxruntime refused a model file, when its framing says: onnxruntime
 * reports a truncated file and one that is no model alike ("Protobuf parsing
 * failed"). Cheap at any size: only the framing is read.
 *
 * @returns the scan's MODEL_TRUNCATED or MODEL_NOT_ONNX error, else `refused` itself
 */
export async function explainRefusedModel(path: string, refused: QuantdError): Promise<QuantdError> {
  if (refused.code !== "MODEL_LOAD_FAILED") return refused;
  try {
    await scanModelFile(path);
  } catch (err) {
    if (err instanceof QuantdError && (err.code === "MODEL_TRUNCATED" || err.code === "MODEL_NOT_ONNX"))
      return err;
  }
  return refused;
}
