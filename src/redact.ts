/**
 * Secrets out of log lines and error messages: a URL's password
 * (`mqtt://user:password@host`, `postgres://…`) and any known secret quoted
 * back by a library's error.
 */

/** `url` with the password of its user-info replaced by `***` (the user stays). */
export function redactUrl(url: string): string {
  return url.replace(/(\/\/[^:@/]*):[^@/]*@/, "$1:***@");
}

/** `text` with every occurrence of `secret` replaced by `***`. */
export function maskSecret(text: string, secret: string | undefined): string {
  return secret === undefined || secret === "" ? text : text.split(secret).join("***");
}
