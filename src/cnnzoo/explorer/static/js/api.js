// Requests to the server: JSON in and out, the server's one-line errors as ApiError, and the
// API key (when the server asks for one) kept for this browser tab.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

const KEY = "cnnzoo-api-key";
let onUnauthorized = () => {};

export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function parse(response) {
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  if (response.ok) return body;
  if (response.status === 401) onUnauthorized();
  let message = body && (body.error || body.detail);
  if (Array.isArray(message)) message = message.map((d) => d.msg || String(d)).join("; ");
  if (!message) message = `${response.status} ${response.statusText || "error"}`;
  throw new ApiError(String(message), response.status);
}

export async function getJSON(path, params = {}) {
  const query = new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ""),
  );
  const url = query.toString() ? `${path}?${query}` : path;
  let response;
  try {
    response = await fetch(url, { headers: headers() });
  } catch (error) {
    throw new ApiError(`the server did not answer (${error.message})`, 0);
  }
  return parse(response);
}

export async function postBody(path, body, contentType) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      body,
      headers: headers(contentType ? { "Content-Type": contentType } : {}),
    });
  } catch (error) {
    throw new ApiError(`the server did not answer (${error.message})`, 0);
  }
  return parse(response);
}

export function postJSON(path, data) {
  return postBody(path, JSON.stringify(data), "application/json");
}

export const enc = encodeURIComponent;
