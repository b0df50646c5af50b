import { afterAll, describe, expect, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  INT64_MAX,
  INT64_MIN,
  makeGraph,
  makeModel,
  makeNode,
  makeValueInfo,
} from "../../src/onnx/builder.ts";
import { decodeModel, encodeModel, inlineExternalData, loadModel, saveModel } from "../../src/onnx/codec.ts";
import { makeTensor, type TensorArray, tensorToArray } from "../../src/onnx/tensor.ts";
import type { DataType as DataTypeT, ModelProto } from "../../src/onnx/types.ts";
import { AttributeType, DataType } from "../../src/onnx/types.ts";
import { codeOf, codeOfAsync } from "../helpers/error-code.ts";
import { shippedModelPath } from "../helpers/paths.ts";

const tmp = mkdtempSync(join(tmpdir(), "quantd-onnx-codec-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function modelWith(initializers: ReturnType<typeof makeTensor>[]): ModelProto {
  return makeModel({
    graph: makeGraph({
      name: "g",
      nodes: [makeNode("Identity", ["x"], ["y"])],
      inputs: [makeValueInfo("x", DataType.FLOAT, ["n"])],
      outputs: [makeValueInfo("y", DataType.FLOAT, ["n"])],
      initializers,
    }),
  });
}

describe("tensor storage round trip", () => {
  const cases: [string, DataTypeT, TensorArray][] = [
    ["float", DataType.FLOAT, Float32Array.of(0, -1.5, 3.25e-8, 65504, Number.NEGATIVE_INFINITY, -0)],
    ["double", DataType.DOUBLE, Float64Array.of(Math.PI, -1e300, 5e-324)],
    ["float16", DataType.FLOAT16, Uint16Array.of(0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x7c00)],
    ["int64", DataType.INT64, BigInt64Array.of(0n, -1n, 2n ** 63n - 1n, -(2n ** 63n), 1234567890123n)],
    ["int32", DataType.INT32, Int32Array.of(0, -1, 2147483647, -2147483648)],
    ["int8", DataType.INT8, Int8Array.of(-128, -1, 0, 1, 127)],
    ["uint8", DataType.UINT8, Uint8Array.of(0, 1, 128, 255)],
    ["bool", DataType.BOOL, Uint8Array.of(1, 0, 1, 1)],
  ];
  for (const [label, dt, data] of cases) {
    for (const raw of [false, true]) {
      test(`${label} in ${raw ? "raw_data" : "its typed field"}`, () => {
        const t = makeTensor(`w_${label}`, dt, [data.length], data, { raw });
        const back = decodeModel(encodeModel(modelWith([t]))).graph.initializer[0]!;
        expect(back.name).toBe(`w_${label}`);
        expect(back.dataType).toBe(dt);
        expect(back.dims).toEqual([data.length]);
        // The storage form is kept, so a round trip is faithful.
        expect(back.rawData !== undefined).toBe(raw);
        expect(tensorToArray(back)).toEqual(data);
      });
    }
  }

  test("raw payload is a view into the decoded bytes, and an encoded model shares nothing with the model", () => {
    const t = makeTensor("w", DataType.FLOAT, [4], Float32Array.of(1, 2, 3, 4));
    const bytes = encodeModel(modelWith([t]));
    const m = decodeModel(bytes);
    const raw = m.graph.initializer[0]!.rawData!;
    expect(raw.buffer).toBe(bytes.buffer);
    const again = encodeModel(m);
    raw.fill(0);
    expect(tensorToArray(decodeModel(again).graph.initializer[0]!)).toEqual(Float32Array.of(1, 2, 3, 4));
  });

  test("a Buffer decodes like a Uint8Array (payloads are plain Uint8Array views)", () => {
    const t = makeTensor("w", DataType.FLOAT, [2], Float32Array.of(1, 2));
    const m = decodeModel(Buffer.from(encodeModel(modelWith([t]))));
    expect(m.graph.initializer[0]!.rawData!.constructor).toBe(Uint8Array);
    expect(m).toEqual(decodeModel(encodeModel(modelWith([t]))));
  });
});

describe("int64 sentinels", () => {
  test("Slice ends INT64_MAX / starts INT64_MIN and dims survive exactly", () => {
    const node = makeNode("Slice", ["x", "s", "e"], ["y"], {
      ends_attr: [INT64_MAX],
      starts_attr: [INT64_MIN, -1, 0],
      big: INT64_MAX,
      small: INT64_MIN,
    });
    const m = modelWith([]);
    m.graph.node = [node];
    const bytes = encodeModel(m);
    // INT64_MAX as a varint: eight 0xff then 0x7f.
    const hex = Buffer.from(bytes).toString("hex");
    expect(hex).toContain("ffffffffffffffff7f");
    const attrs = decodeModel(bytes).graph.node[0]!.attribute;
    expect(attrs.map((a) => a.name)).toEqual(["ends_attr", "starts_attr", "big", "small"]);
    expect(attrs[0]!.ints).toEqual([INT64_MAX]);
    expect(attrs[1]!.ints).toEqual([INT64_MIN, -1, 0]);
    expect(attrs[2]!.i).toBe(INT64_MAX);
    expect(attrs[3]!.i).toBe(INT64_MIN);
    // And again: the second encoding is identical.
    expect(Buffer.from(encodeModel(decodeModel(bytes))).equals(Buffer.from(bytes))).toBe(true);
  });

  test("uint64 payloads keep their full range", () => {
    const t = makeTensor("u", DataType.UINT64, [2], BigUint64Array.of(2n ** 64n - 1n, 7n), { raw: false });
    const back = decodeModel(encodeModel(modelWith([t]))).graph.initializer[0]!;
    expect(back.uint64Data).toEqual([2n ** 64n - 1n, 7n]);
  });
});

describe("every field round-trips", () => {
  test("a model using the whole schema decodes to what was encoded", () => {
    const sub = makeGraph({
      name: "body",
      nodes: [makeNode("Identity", ["outer"], ["inner_out"], {}, { name: "inner" })],
      inputs: [],
      outputs: [makeValueInfo("inner_out", DataType.FLOAT)],
    });
    const node = makeNode(
      "If",
      ["cond"],
      ["y"],
      { then_branch: sub, else_branch: sub, names: ["a", "b"], scales: { floats: [1, 2.5] }, mode: "linear" },
      { name: "branch", domain: "" },
    );
    node.overload = "ov";
    node.metadataProps = [{ key: "k", value: "v" }];
    node.docString = "doc";
    node.attribute.push(
      { name: "tp", type: AttributeType.TYPE_PROTO, tp: { tensorType: { elemType: DataType.INT8 } } },
      { name: "ref", type: AttributeType.FLOAT, refAttrName: "alpha" },
      {
        name: "sp",
        type: AttributeType.SPARSE_TENSOR,
        sparseTensor: {
          values: makeTensor("v", DataType.FLOAT, [1], Float32Array.of(3)),
          indices: makeTensor("i", DataType.INT64, [1], BigInt64Array.of(2n)),
          dims: [4],
        },
      },
    );
    const ext = makeTensor("ext", DataType.FLOAT, [2], Float32Array.of(0, 0));
    delete ext.rawData;
    ext.dataLocation = 1;
    ext.externalData = [
      { key: "location", value: "w.bin" },
      { key: "offset", value: "0" },
      { key: "length", value: "8" },
    ];
    const seg = makeTensor("seg", DataType.INT32, [1], Int32Array.of(5), { raw: false });
    seg.segment = { begin: 0, end: 1 };
    seg.docString = "segment";
    seg.metadataProps = [{ key: "a", value: "b" }];
    const strT = {
      name: "s",
      dataType: DataType.STRING,
      dims: [2],
      stringData: [Uint8Array.of(104, 105), Uint8Array.of()],
    };
    const graph = makeGraph({
      name: "main",
      nodes: [node],
      inputs: [
        makeValueInfo("cond", DataType.BOOL, []),
        { name: "seq", type: { sequenceType: { elemType: { tensorType: { elemType: DataType.FLOAT } } } } },
        {
          name: "map",
          type: {
            mapType: { keyType: DataType.INT64, valueType: { tensorType: { elemType: DataType.FLOAT } } },
          },
        },
        { name: "opt", type: { optionalType: { elemType: { tensorType: { elemType: DataType.INT32 } } } } },
        {
          name: "sparse",
          type: { sparseTensorType: { elemType: DataType.FLOAT, shape: { dim: [{ dimValue: 0 }, {}] } } },
          docString: "d",
          metadataProps: [{ key: "x", value: "y" }],
        },
        { name: "opaque", type: { opaqueType: { domain: "com.x", name: "blob" }, denotation: "IMAGE" } },
      ],
      outputs: [makeValueInfo("y", DataType.FLOAT, ["batch", null, 0, 3])],
      initializers: [ext, seg, strT],
      valueInfo: [makeValueInfo("inner_out", DataType.FLOAT)],
      docString: "graph doc",
    });
    graph.sparseInitializer = [
      {
        values: makeTensor("sv", DataType.FLOAT, [1], Float32Array.of(1)),
        indices: makeTensor("si", DataType.INT64, [1], BigInt64Array.of(0n)),
        dims: [3],
      },
    ];
    graph.quantizationAnnotation = [
      {
        tensorName: "y",
        quantParameterTensorNames: [
          { key: "SCALE_TENSOR", value: "y_scale" },
          { key: "ZERO_POINT_TENSOR", value: "y_zp" },
        ],
      },
    ];
    graph.metadataProps = [{ key: "g", value: "1" }];
    const model = makeModel({
      graph,
      opsets: [
        { domain: "", version: 21 },
        { domain: "com.microsoft", version: 1 },
      ],
      producerVersion: "1.2",
      docString: "model doc",
      metadataProps: [{ key: "author", value: "quantd" }],
    });
    model.modelVersion = 3;
    model.domain = "ai.quantd";
    model.trainingInfo = [
      { initialization: sub, initializationBinding: [{ key: "a", value: "b" }], updateBinding: [] },
    ];
    model.functions = [
      {
        name: "F",
        domain: "local",
        overload: "x",
        input: ["a"],
        output: ["b"],
        attribute: ["alpha"],
        attributeProto: [{ name: "beta", type: AttributeType.INT, i: 2 }],
        node: [makeNode("Relu", ["a"], ["b"])],
        opsetImport: [{ domain: "", version: 21 }],
        valueInfo: [makeValueInfo("b", DataType.FLOAT)],
        docString: "fn",
        metadataProps: [{ key: "f", value: "g" }],
      },
    ];
    const back = decodeModel(encodeModel(model));
    expect(back).toEqual(model);
  });
});

describe("errors", () => {
  const shipped = new Uint8Array(readFileSync(shippedModelPath));

  test("empty and truncated bytes are MODEL_TRUNCATED", () => {
    expect(codeOf(() => decodeModel(new Uint8Array(0)))).toBe("MODEL_TRUNCATED");
    for (const cut of [2, 100, 5000, shipped.length >> 1, shipped.length - 1]) {
      expect(codeOf(() => decodeModel(shipped.subarray(0, cut)))).toBe("MODEL_TRUNCATED");
    }
  });

  test("bytes that are not a ModelProto are MODEL_NOT_ONNX", () => {
    const text = new TextEncoder().encode("label\tsentence\n1\ta great movie\n");
    const json = new TextEncoder().encode(JSON.stringify({ irVersion: 8, graph: { node: [] } }));
    const png = Uint8Array.of(
      0x89,
      0x50,
      0x4e,
      0x47,
      0x0d,
      0x0a,
      0x1a,
      0x0a,
      0,
      0,
      0,
      13,
      73,
      72,
      68,
      82,
      0,
      0,
      1,
      0,
    );
    let s = 12345;
    const random = Uint8Array.from({ length: 4096 }, () => {
      s = (s * 1103515245 + 12345) >>> 0;
      return s >>> 24;
    });
    random[0] = 0x42; // not the ir_version tag, so not mistaken for a truncated model
    for (const bytes of [text, json, png, random, Uint8Array.of(0x0a, 0x00)]) {
      expect(codeOf(() => decodeModel(bytes))).toBe("MODEL_NOT_ONNX");
    }
  });

  test("file errors", async () => {
    expect(await codeOfAsync(() => loadModel(join(tmp, "missing.onnx")))).toBe("FILE_NOT_FOUND");
    expect(await codeOfAsync(() => loadModel(tmp))).toBe("FILE_UNREADABLE");
    writeFileSync(join(tmp, "empty.onnx"), "");
    expect(await codeOfAsync(() => loadModel(join(tmp, "empty.onnx")))).toBe("MODEL_TRUNCATED");
    writeFileSync(join(tmp, "notes.onnx"), "this is a text file\n");
    expect(await codeOfAsync(() => loadModel(join(tmp, "notes.onnx")))).toBe("MODEL_NOT_ONNX");
    writeFileSync(join(tmp, "half.onnx"), shipped.subarray(0, 1 << 20));
    expect(await codeOfAsync(() => loadModel(join(tmp, "half.onnx")))).toBe("MODEL_TRUNCATED");
  });

  test("error messages name the file", async () => {
    try {
      await loadModel(join(tmp, "notes.onnx"));
      throw new Error("expected a failure");
    } catch (err) {
      expect((err as Error).message).toContain("notes.onnx");
    }
  });
});

describe("external data references", () => {
  function externalModel(location: string, offset: number, length: number): ModelProto {
    const t = makeTensor("w", DataType.FLOAT, [4], new Float32Array(4));
    delete t.rawData;
    t.dataLocation = 1;
    t.externalData = [
      { key: "location", value: location },
      { key: "offset", value: String(offset) },
      { key: "length", value: String(length) },
    ];
    return modelWith([t]);
  }

  test("valid reference loads; escaping, missing and short side files are refused", async () => {
    const dir = join(tmp, "ext");
    mkdirSync(join(dir, "sub"), { recursive: true });
    writeFileSync(join(dir, "sub", "w.bin"), new Uint8Array(Float32Array.of(9, 9, 1, 2, 3, 4).buffer));
    writeFileSync(join(dir, "ok.onnx"), encodeModel(externalModel("sub/w.bin", 8, 16)));
    const ok = await loadModel(join(dir, "ok.onnx"));
    expect(tensorToArray(ok.graph.initializer[0]!)).toEqual(Float32Array.of(1, 2, 3, 4));
    expect(ok.graph.initializer[0]!.dataLocation).toBeUndefined();

    const lazy = await loadModel(join(dir, "ok.onnx"), { loadExternalData: false });
    expect(lazy.graph.initializer[0]!.rawData).toBeUndefined();
    expect(await codeOfAsync(() => saveModel(lazy, join(dir, "copy.onnx")))).toBe("MODEL_INVALID");

    const cases: [string, ModelProto, string][] = [
      ["escape.onnx", externalModel("../w.bin", 0, 16), "MODEL_INVALID"],
      ["abs.onnx", externalModel(join(dir, "sub", "w.bin"), 0, 16), "MODEL_INVALID"],
      ["missing.onnx", externalModel("nope.bin", 0, 16), "FILE_NOT_FOUND"],
      ["short.onnx", externalModel("sub/w.bin", 16, 16), "MODEL_TRUNCATED"],
      ["size.onnx", externalModel("sub/w.bin", 0, 12), "MODEL_INVALID"],
    ];
    for (const [file, model, code] of cases) {
      writeFileSync(join(dir, file), encodeModel(model));
      expect(`${file}: ${await codeOfAsync(() => loadModel(join(dir, file)))}`).toBe(`${file}: ${code}`);
    }
  });

  test("inlineExternalData writes the bytes of saveModel(loadModel(path)) inline, whatever the payloads' sizes; the same refusals, nothing left", async () => {
    const dir = join(tmp, "inline");
    mkdirSync(dir, { recursive: true });
    // Payloads from 8 bytes to over two gather buffers (1 MiB), so copies start and end mid-buffer.
    const sizes = [8, 70_000, 2_500_004, 400];
    const side = new Uint8Array(sizes.reduce((a, n) => a + n + 100, 0)).map((_, i) => (i * 131 + 7) & 0xff);
    writeFileSync(join(dir, "w.bin"), side);
    let offset = 100;
    const external = sizes.map((bytes, i) => {
      const t = makeTensor(`w${i}`, DataType.UINT8, [bytes], new Uint8Array(bytes));
      delete t.rawData;
      t.dataLocation = 1;
      t.externalData = [
        { key: "location", value: "w.bin" },
        { key: "offset", value: String(offset) },
        { key: "length", value: String(bytes) },
      ];
      offset += bytes + 100;
      return t;
    });
    const inline = makeTensor("c", DataType.FLOAT, [3], Float32Array.of(1, 2, 3));
    // An external tensor outside the main graph's initializers: read into memory, as loadModel does.
    const constant = external.pop()!;
    const model = modelWith([external[0]!, inline, ...external.slice(1)]);
    model.graph.node.push(makeNode("Constant", [], ["k"], { value: constant }));
    writeFileSync(join(dir, "model.onnx"), encodeModel(model));

    await saveModel(await loadModel(join(dir, "model.onnx")), join(dir, "expected.onnx"), {
      externalData: false,
    });
    await inlineExternalData(join(dir, "model.onnx"), join(dir, "inlined.onnx"));
    expect(readFileSync(join(dir, "inlined.onnx")).equals(readFileSync(join(dir, "expected.onnx")))).toBe(
      true,
    );
    const back = await loadModel(join(dir, "inlined.onnx"), { loadExternalData: false });
    expect(back.graph.initializer.map((t) => [t.name, t.dataLocation, t.rawData?.byteLength])).toEqual([
      ["w0", undefined, 8],
      ["c", undefined, 12],
      ["w1", undefined, 70_000],
      ["w2", undefined, 2_500_004],
    ]);
    expect(
      Buffer.from(back.graph.initializer[3]!.rawData!).equals(
        Buffer.from(side.subarray(70_308, 70_308 + 2_500_004)),
      ),
    ).toBe(true);
    expect(back.graph.node[1]!.attribute[0]!.t!.rawData?.byteLength).toBe(400);

    const cases: [string, ModelProto, string][] = [
      ["escape.onnx", externalModel("../w.bin", 0, 16), "MODEL_INVALID"],
      ["missing.onnx", externalModel("nope.bin", 0, 16), "FILE_NOT_FOUND"],
      ["short.onnx", externalModel("w.bin", side.byteLength - 8, 16), "MODEL_TRUNCATED"],
      ["size.onnx", externalModel("w.bin", 0, 12), "MODEL_INVALID"],
    ];
    for (const [file, m, code] of cases) {
      writeFileSync(join(dir, file), encodeModel(m));
      const out = join(dir, `out-${file}`);
      expect(`${file}: ${await codeOfAsync(() => inlineExternalData(join(dir, file), out))}`).toBe(
        `${file}: ${code}`,
      );
      expect(existsSync(out)).toBe(false);
    }
    expect(readdirSync(dir).filter((f) => f.startsWith("."))).toEqual([]);
  });

  test("saveModel refuses a side file outside the model's directory", async () => {
    const m = modelWith([makeTensor("w", DataType.FLOAT, [512], new Float32Array(512))]);
    expect(
      await codeOfAsync(() => saveModel(m, join(tmp, "m.onnx"), { externalData: { location: "../w.data" } })),
    ).toBe("USAGE");
  });

  test("a model over protobuf's 2 GiB limit is refused inline, without touching its payload", async () => {
    // Pages of a fresh buffer are not committed until written, so this costs no memory.
    const raw = new Uint8Array(2 ** 31 + 4096);
    const huge = modelWith([{ name: "w", dataType: DataType.FLOAT, dims: [raw.length / 4], rawData: raw }]);
    expect(codeOf(() => encodeModel(huge))).toBe("MODEL_INVALID");
    expect(await codeOfAsync(() => saveModel(huge, join(tmp, "huge.onnx"), { externalData: false }))).toBe(
      "MODEL_INVALID",
    );
  });

  test("saving into a missing directory fails cleanly", async () => {
    const m = modelWith([]);
    expect(await codeOfAsync(() => saveModel(m, join(tmp, "no", "such", "dir", "m.onnx")))).toBe(
      "FILE_WRITE_FAILED",
    );
  });
});
