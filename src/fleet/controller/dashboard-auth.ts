/**
 * Who may use the dashboard. With credentials configured (a token, or a
 * username and password) every route but the login page needs either a
 * session cookie (HttpOnly, SameSite=Strict, Secure behind TLS) or an
 * `Authorization: Bearer TOKEN` header. Writes made with a cookie must also
 * carry the session's CSRF token in `x-quantd-csrf` (a page of another origin
 * can neither read it nor send that header without a preflight this server
 * never approves). Without credentials the dashboard is for loopback only;
 * it then refuses a Host header that is not loopback, so a DNS-rebound page
 * cannot reach it either, and writes still need the server's CSRF token.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

/** Credentials of the dashboard (none: loopback only). */
export interface DashboardCredentials {
  /** A shared token: typed on the login page or sent as a bearer token by scripts. */
  token?: string;
  /** One operator account. */
  user?: { name: string; password: string };
}

/** Who a request is, once authenticated. */
export interface Principal {
  /** The operator's name (`token` for the token), for the controller's log. */
  name: string;
  /** The CSRF token writes must carry; null for a bearer token (browsers never send one on their own). */
  csrf: string | null;
}

/** The dashboard's authentication. */
export interface DashboardAuth {
  /** Whether credentials are configured. */
  readonly required: boolean;
  /** Which ways of logging in are configured (for the login form). */
  readonly methods: { token: boolean; user: boolean };
  /** The principal of a request, or undefined when it is not authenticated (or its Host is refused). */
  identify(req: Request): Principal | undefined;
  /** Checks a login form; the session cookie's header on success. */
  login(form: URLSearchParams): Promise<{ name: string; cookie: string } | undefined>;
  /** Ends the request's session; the header that clears the cookie. */
  logout(req: Request): string;
}

/** Options of {@link createDashboardAuth}. */
export interface DashboardAuthOptions {
  credentials: DashboardCredentials;
  /** Mark the cookie Secure (TLS here, or at the reverse proxy). */
  secureCookies: boolean;
  /** Session lifetime. @defaultValue 12 hours */
  sessionTtlMs?: number;
  /** Clock. @defaultValue Date.now */
  now?: () => number;
}

const COOKIE = "quantd_session";
/** Most sessions kept at once: the oldest goes first (a login flood must not grow memory). */
const MAX_SESSIONS = 1000;
/** Delay of a failed login: slows guessing without locking anyone out. */
const FAILED_LOGIN_DELAY_MS = 400;
/** Failed logins per minute beyond which every login is refused until the minute has passed (parallel guessing). */
const MAX_FAILED_LOGINS_PER_MINUTE = 30;
const LOOPBACK_HOST = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[::1\])(:\d+)?$/i;

/** Compares secrets in constant time (digests first, so lengths do not leak either). */
function sameSecret(a: string, b: string): boolean {
  const da = createHash("sha256").update(a).digest();
  const db = createHash("sha256").update(b).digest();
  return timingSafeEqual(da, db);
}

function cookieValue(req: Request, name: string): string | undefined {
  const header = req.headers.get("cookie");
  if (header === null) return undefined;
  for (const part of header.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return v.join("=");
  }
  return undefined;
}

/** The dashboard's authentication from its credentials. */
export function createDashboardAuth(options: DashboardAuthOptions): DashboardAuth {
  const { credentials } = options;
  const now = options.now ?? Date.now;
  const ttl = options.sessionTtlMs ?? 12 * 3600_000;
  const required = credentials.token !== undefined || credentials.user !== undefined;
  const sessions = new Map<string, { name: string; csrf: string; expires: number }>();
  // Without credentials (loopback only) one CSRF token for the server's life.
  const openCsrf = randomBytes(24).toString("base64url");
  const attrs = `Path=/; HttpOnly; SameSite=Strict${options.secureCookies ? "; Secure" : ""}`;

  const bearer = (req: Request): string | undefined => {
    const h = req.headers.get("authorization");
    return h?.startsWith("Bearer ") ? h.slice(7).trim() : undefined;
  };

  let failures: number[] = [];
  return {
    required,
    methods: { token: credentials.token !== undefined, user: credentials.user !== undefined },
    identify(req) {
      if (!required) {
        return LOOPBACK_HOST.test(req.headers.get("host") ?? "")
          ? { name: "local", csrf: openCsrf }
          : undefined;
      }
      const b = bearer(req);
      if (b !== undefined) {
        return credentials.token !== undefined && sameSecret(b, credentials.token)
          ? { name: "token", csrf: null }
          : undefined;
      }
      const id = cookieValue(req, COOKIE);
      const s = id === undefined ? undefined : sessions.get(id);
      if (id === undefined || s === undefined) return undefined;
      if (s.expires < now()) {
        sessions.delete(id);
        return undefined;
      }
      return { name: s.name, csrf: s.csrf };
    },
    async login(form) {
      const t = now();
      failures = failures.filter((at) => at > t - 60_000);
      if (failures.length >= MAX_FAILED_LOGINS_PER_MINUTE) {
        await Bun.sleep(FAILED_LOGIN_DELAY_MS);
        return undefined;
      }
      const token = form.get("token");
      const user = form.get("username");
      const password = form.get("password");
      let name: string | undefined;
      if (token !== null && token !== "" && credentials.token !== undefined) {
        if (sameSecret(token, credentials.token)) name = "token";
      } else if (user !== null && password !== null && credentials.user !== undefined) {
        const okUser = sameSecret(user, credentials.user.name);
        const okPassword = sameSecret(password, credentials.user.password);
        if (okUser && okPassword) name = credentials.user.name;
      }
      if (name === undefined) {
        failures.push(t);
        await Bun.sleep(FAILED_LOGIN_DELAY_MS);
        return undefined;
      }
      if (sessions.size >= MAX_SESSIONS) sessions.delete(sessions.keys().next().value as string);
      const id = randomBytes(32).toString("base64url");
      sessions.set(id, { name, csrf: randomBytes(24).toString("base64url"), expires: now() + ttl });
      return { name, cookie: `${COOKIE}=${id}; ${attrs}; Max-Age=${Math.floor(ttl / 1000)}` };
    },
    logout(req) {
      const id = cookieValue(req, COOKIE);
      if (id !== undefined) sessions.delete(id);
      return `${COOKIE}=; ${attrs}; Max-Age=0`;
    },
  };
}
