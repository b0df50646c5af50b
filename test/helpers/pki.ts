/**
 * Certificates made by openssl for TLS tests (a CA, a server certificate for
 * 127.0.0.1, client certificates), so tests need no checked-in keys. Tests
 * skip with a message when openssl is missing ({@link hasOpenssl}).
 */
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

/** Whether the openssl binary runs. */
export const hasOpenssl: boolean = spawnSync("openssl", ["version"]).status === 0;

function openssl(args: string[], cwd: string): void {
  const r = spawnSync("openssl", args, { cwd, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
}

/**
 * A CA, a server certificate for 127.0.0.1, and one client certificate per
 * client: `name` gives the files (`name.pem`, `name.key`), `cn` the subject's
 * Common Name (the name itself when a string is given). Files land in `dir`:
 * `ca.pem`, `ca.key`, `server.pem`, `server.key`.
 *
 * @throws when openssl fails
 */
export function makePki(dir: string, clients: readonly (string | { name: string; cn: string })[]): void {
  openssl(
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "2",
      "-subj",
      "/CN=quantd test CA",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
    ],
    dir,
  );
  const sign = (name: string, cn: string, ext: string): void => {
    writeFileSync(join(dir, `${name}.ext`), ext);
    openssl(
      [
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        `/CN=${cn.replaceAll("/", "\\/")}`,
        "-keyout",
        `${name}.key`,
        "-out",
        `${name}.csr`,
      ],
      dir,
    );
    openssl(
      [
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        `${name}.ext`,
        "-out",
        `${name}.pem`,
      ],
      dir,
    );
  };
  sign("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  for (const c of clients) {
    const { name, cn } = typeof c === "string" ? { name: c, cn: c } : c;
    sign(name, cn, "extendedKeyUsage=clientAuth\n");
  }
}
