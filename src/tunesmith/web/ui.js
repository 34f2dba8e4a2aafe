// Small DOM and formatting helpers shared by the views. Text always goes in as text nodes,
// never as HTML, so names and outputs from the API cannot inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, props, children) {
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

/** An HTML element: h("a", {href: "#/models", class: "link"}, "Models"). */
export function h(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

/** An SVG element, the same way. */
export function svg(tag, props, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

/** "1 step", "3 steps". */
export function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

export function modelId(name) {
  return name.replace(/^tunedModels\//, "");
}

const STATE_LABELS = { CREATING: "Creating", ACTIVE: "Active", FAILED: "Failed" };

export function stateBadge(state) {
  const known = state in STATE_LABELS ? state : "STATE_UNSPECIFIED";
  return h("span", { class: `badge state-${known.toLowerCase()}` }, STATE_LABELS[state] ?? "Unknown");
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function formatTime(iso) {
  return iso ? dateTime.format(new Date(iso)) : "—";
}

export function formatDuration(milliseconds) {
  if (milliseconds === null || milliseconds === undefined || Number.isNaN(milliseconds)) return "—";
  const seconds = milliseconds / 1000;
  if (seconds < 1) return `${Math.round(milliseconds)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function between(startIso, endIso) {
  return startIso && endIso ? new Date(endIso) - new Date(startIso) : null;
}

/** Four significant digits, without trailing zeros. */
export function formatLoss(value) {
  return String(Number(Number(value).toPrecision(4)));
}

/**
 * A google.rpc error, readably: its status, then either its message or, when the server
 * listed field violations, each of them with the field named in words (`describeField`
 * maps API paths to the form's labels; the message only repeats the violations).
 */
export function errorBox(error, { title, describeField = (field) => field } = {}) {
  const heading = title ?? (error.httpStatus ? "The server refused the request" : "Something went wrong");
  const violations = error.violations ?? [];
  return h(
    "div",
    { class: "error-box", role: "alert", tabindex: "-1" },
    h("p", { class: "error-title" }, heading, " ", h("span", { class: "error-status" }, error.status)),
    violations.length === 0
      ? h("p", { class: "error-message" }, error.message)
      : h(
          "ul",
          { class: "violations" },
          violations.map((v) =>
            h(
              "li",
              {},
              v.field ? [h("span", { class: "violation-field" }, describeField(v.field)), ": "] : null,
              v.description,
            ),
          ),
        ),
  );
}

const RETRY_MS = 3000;

/**
 * Runs `task` now and again after the delay (ms) it answers, until it answers null or
 * `signal` aborts (the view was left). A failed run is shown through `onError`, which is
 * called with null once a run succeeds again, and retried.
 */
export function poll(task, signal, onError) {
  let timer;
  const run = async () => {
    let delay;
    try {
      delay = await task();
      onError(null);
    } catch (error) {
      if (signal.aborted) return;
      onError(error);
      delay = RETRY_MS;
    }
    if (delay !== null && !signal.aborted) timer = setTimeout(run, delay);
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  run();
}
