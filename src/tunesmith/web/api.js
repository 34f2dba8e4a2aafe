// The public v1beta REST API, called exactly as the SDKs call it: the API key travels in
// the x-goog-api-key header, and failures arrive as google.rpc.Status bodies.

const KEY_STORAGE = "tunesmith.apiKey";
export const SIGNED_OUT_EVENT = "tunesmith:signed-out";

export function storedKey() {
  return localStorage.getItem(KEY_STORAGE);
}

export function storeKey(key) {
  localStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
}

/** A failed call: the google.rpc.Status fields, with the field violations pulled out. */
export class ApiError extends Error {
  constructor({ httpStatus, status, message, violations = [], reason = "" }) {
    super(message);
    this.httpStatus = httpStatus;
    this.status = status;
    this.violations = violations;
    this.reason = reason;
  }

  /** Whether the key itself was refused (as opposed to, say, one model being off limits). */
  get rejectsKey() {
    return (
      this.reason === "API_KEY_INVALID" ||
      this.httpStatus === 401 ||
      (this.httpStatus === 403 && this.message.includes("unregistered callers"))
    );
  }
}

function errorFromBody(httpStatus, body) {
  const error = body?.error;
  if (!error) {
    return new ApiError({
      httpStatus,
      status: `HTTP ${httpStatus}`,
      message: "The server answered with something other than a google.rpc error.",
    });
  }
  const details = error.details ?? [];
  const badRequest = details.find((d) => d["@type"]?.endsWith("google.rpc.BadRequest"));
  const errorInfo = details.find((d) => d["@type"]?.endsWith("google.rpc.ErrorInfo"));
  return new ApiError({
    httpStatus,
    status: error.status ?? `HTTP ${httpStatus}`,
    message: error.message ?? "",
    violations: (badRequest?.fieldViolations ?? []).map((v) => ({
      field: v.field ?? "",
      description: v.description ?? "",
    })),
    reason: errorInfo?.reason ?? "",
  });
}

/**
 * Calls one API method and answers its JSON. `key` overrides the stored key (sign-in
 * tries a key before keeping it). A refused stored key signs the console out.
 */
async function call(method, path, { body, query, signal, key } = {}) {
  const apiKey = key ?? storedKey();
  const url = new URL(`/v1beta/${path}`, location.origin);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { "x-goog-api-key": apiKey ?? "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (failure) {
    if (failure.name === "AbortError") throw failure;
    throw new ApiError({
      httpStatus: 0,
      status: "UNAVAILABLE",
      message: "Cannot reach the Tunesmith server. Is it still running?",
    });
  }
  const data = await response.json().catch(() => null);
  if (response.ok) return data ?? {};
  const error = errorFromBody(response.status, data);
  if (key === undefined && error.rejectsKey) {
    forgetKey();
    window.dispatchEvent(new CustomEvent(SIGNED_OUT_EVENT, { detail: error.message }));
  }
  throw error;
}

/** Every page of a list method, concatenated. */
async function listAll(path, field, { query, signal } = {}) {
  const items = [];
  let pageToken;
  do {
    const page = await call("GET", path, {
      query: { ...query, pageSize: 100, pageToken },
      signal,
    });
    items.push(...(page[field] ?? []));
    pageToken = page.nextPageToken;
  } while (pageToken);
  return items;
}

export function listTunedModels({ filter, signal } = {}) {
  return listAll("tunedModels", "tunedModels", { query: { filter }, signal });
}

export function listBaseModels({ signal } = {}) {
  return listAll("models", "models", { signal });
}

/** Tries a key on a read-only call; throws the server's error when it is refused. */
export async function checkKey(key, { signal } = {}) {
  await call("GET", "tunedModels", { query: { pageSize: 1 }, signal, key });
}

export function getTunedModel(id, { signal } = {}) {
  return call("GET", `tunedModels/${id}`, { signal });
}

/** The operation that tunes the model (each tuned model has exactly one). */
export async function tuningOperation(id, { signal } = {}) {
  const { operations = [] } = await call("GET", `tunedModels/${id}/operations`, { signal });
  return operations[0] ?? null;
}

export function getOperation(name, { signal } = {}) {
  return call("GET", name, { signal });
}

export function cancelOperation(name) {
  return call("POST", `${name}:cancel`, { body: {} });
}

export function createTunedModel(tunedModel, tunedModelId) {
  return call("POST", "tunedModels", { body: tunedModel, query: { tunedModelId } });
}

/**
 * Whether the caller may change the model (patch it, cancel its tuning, pick its checkpoint):
 * the API has no "my role" method, but listing a model's permissions needs the same WRITER
 * role, so a reader gets 403 for it. Other failures are thrown.
 */
export async function mayWriteTunedModel(id, { signal } = {}) {
  try {
    await call("GET", `tunedModels/${id}/permissions`, { query: { pageSize: 1 }, signal });
    return true;
  } catch (error) {
    if (error.httpStatus === 403 && !error.rejectsKey) return false;
    throw error;
  }
}

export function deleteTunedModel(id) {
  return call("DELETE", `tunedModels/${id}`);
}

/** generateContent on `tunedModels/{id}` or `models/{id}`. */
export function generateContent(modelName, request, { signal } = {}) {
  return call("POST", `${modelName}:generateContent`, { body: request, signal });
}

/** A tuned model's evaluations on its validation examples (a Tunesmith extension). */
export async function getEvaluations(id, { signal } = {}) {
  const { evaluations = [] } = await call("GET", `tunedModels/${id}/evaluations`, { signal });
  return evaluations;
}

/** The adapters kept at epoch ends; the one marked `serving` answers generateContent. */
export async function getCheckpoints(id, { signal } = {}) {
  const { checkpoints = [] } = await call("GET", `tunedModels/${id}/checkpoints`, { signal });
  return checkpoints;
}

export async function selectCheckpoint(checkpointName) {
  const id = checkpointName.split("/")[1];
  const { checkpoints = [] } = await call("POST", `tunedModels/${id}:selectCheckpoint`, {
    body: { checkpoint: checkpointName },
  });
  return checkpoints;
}
