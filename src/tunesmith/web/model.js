// One tuned model: progress, the live loss curve, hyperparameters and timings. Everything
// comes from the model and its operation, polled until the operation is done, so a reload
// picks up exactly where the page was.

import {
  cancelOperation,
  deleteTunedModel,
  getCheckpoints,
  getEvaluations,
  getOperation,
  getTunedModel,
  mayWriteTunedModel,
  selectCheckpoint,
  tuningOperation,
} from "./api.js";
import { LossChart } from "./chart.js";
import { between, errorBox, formatDuration, formatLoss, formatTime, h, poll, stateBadge } from "./ui.js";

const REFRESH_MS = 1000;
const CANCELLED = 1; // google.rpc.Code.CANCELLED

function definitions(title, entries) {
  return h(
    "section",
    { class: "card" },
    h("h2", {}, title),
    h(
      "dl",
      { class: "facts" },
      entries
        .filter(([, value]) => value !== undefined && value !== null && value !== "")
        .map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]),
    ),
  );
}

function progressText(model, metadata, done) {
  const total = metadata.totalSteps ?? 0;
  const completed = metadata.completedSteps ?? 0;
  const last = metadata.snapshots?.at(-1);
  if (done) return `${completed} of ${total} steps`;
  if (!completed) {
    return model.tuningTask?.startTime
      ? `Starting: loading the base model (${total} steps to go)`
      : `Queued: waiting for a training worker (${total} steps to go)`;
  }
  const percent = Math.floor(metadata.completedPercent ?? 0);
  return `Step ${completed} of ${total} · epoch ${last?.epoch ?? 0} completed · ${percent}%`;
}

function emptyChartMessage(model, done) {
  if (done) return "No steps were recorded.";
  return model.tuningTask?.startTime
    ? "Training is starting: the first point appears after step 1."
    : "Queued: the curve starts when a worker picks up the job.";
}

function timings(model, snapshots) {
  const task = model.tuningTask ?? {};
  const perStep =
    snapshots.length > 1
      ? between(snapshots[0].computeTime, snapshots.at(-1).computeTime) / (snapshots.length - 1)
      : null;
  return [
    ["Created", formatTime(model.createTime)],
    ["Started", task.startTime ? formatTime(task.startTime) : "not yet"],
    [
      "Completed",
      task.completeTime ? formatTime(task.completeTime) : model.state === "CREATING" ? "not yet" : "—",
    ],
    ["Waited in queue", formatDuration(between(model.createTime, task.startTime))],
    [
      model.state === "CREATING" ? "Training for" : "Training time",
      formatDuration(
        between(
          task.startTime,
          task.completeTime ?? (model.state === "CREATING" ? new Date().toISOString() : model.updateTime),
        ),
      ),
    ],
    ["Time per step", perStep === null ? null : formatDuration(perStep)],
    ["Last updated", formatTime(model.updateTime)],
  ];
}

function percent(share) {
  return share === undefined ? "" : `${Math.round(share * 100)}%`;
}

function table(columns, rows) {
  return h(
    "div",
    { class: "table-scroll" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))),
    ),
  );
}

/**
 * Validation loss and exact-match accuracy at each epoch end. An evaluation's `epoch` counts
 * the epochs complete at its step, so the epoch-end one is the first of each count: later
 * ones (with an evaluation interval) are from the middle of the next epoch.
 */
function accuracyTable(evaluations) {
  const byEpoch = new Map();
  for (const e of [...evaluations].sort((a, b) => a.step - b.step)) {
    if (!byEpoch.has(e.epoch ?? 0)) byEpoch.set(e.epoch ?? 0, e);
  }
  const rows = [...byEpoch.values()]
    .filter((e) => (e.epoch ?? 0) > 0)
    .map((e) => [String(e.epoch), String(e.step), formatLoss(e.validationLoss), percent(e.exactMatch)]);
  return table(["Epoch", "Step", "Validation loss", "Exact match"], rows);
}

/** The kept adapters; `serve` is null when the caller may not pick one (or not yet). */
function checkpointTable(checkpoints, serve) {
  const evaluated = checkpoints.some((c) => c.validationLoss !== undefined);
  const scores = (c) => [
    c.validationLoss === undefined ? "" : formatLoss(c.validationLoss),
    percent(c.exactMatch),
  ];
  const rows = checkpoints.map((c) => [
    String(c.epoch),
    String(c.step),
    ...(evaluated ? scores(c) : []),
    c.serving
      ? h("span", { class: "badge state-active" }, "Serving")
      : serve
        ? h("button", { type: "button", onclick: (event) => serve(c, event.currentTarget) }, "Serve this")
        : "",
  ]);
  const columns = ["Epoch", "Step", ...(evaluated ? ["Validation loss", "Exact match"] : []), ""];
  return table(columns, rows);
}

export function modelView(container, { signal, params: [id] }) {
  const chart = new LossChart();
  const title = h("h1", { tabindex: "-1" }, id);
  const badge = h("span");
  const actions = h("div", { class: "actions" });
  const outcome = h("div");
  const actionProblem = h("div", { class: "feedback" });
  const refreshProblem = h("div", { class: "feedback" });
  const progress = h("progress", { max: "100", value: "0", "aria-labelledby": "progress-text" });
  const progressLabel = h("p", { id: "progress-text", class: "progress-text" }, "Loading…");
  const facts = h("div", { class: "fact-grid" });
  const evaluationCard = h("section", { class: "card evaluations", hidden: true });
  const checkpointCard = h("section", { class: "card checkpoints", hidden: true });
  const chartHelp = h("p", { class: "help" });
  let operationName = null;
  let mayWrite = null; // whether the caller may cancel or pick a checkpoint: asked once
  let active = false; // only an ACTIVE model can serve another checkpoint

  async function serve(checkpoint, button) {
    button.disabled = true;
    try {
      const checkpoints = await selectCheckpoint(checkpoint.name);
      actionProblem.replaceChildren();
      renderCheckpoints(checkpoints);
    } catch (error) {
      button.disabled = false;
      actionProblem.replaceChildren(errorBox(error, { title: "Could not serve that checkpoint" }));
    }
  }

  function renderEvaluations(evaluations) {
    evaluationCard.hidden = !evaluations.length;
    evaluationCard.replaceChildren(
      h("h2", {}, "Validation"),
      h(
        "p",
        { class: "help" },
        "Validation loss and exact-match accuracy of greedy answers at each epoch end.",
      ),
      accuracyTable(evaluations),
    );
  }

  function renderCheckpoints(checkpoints) {
    checkpointCard.hidden = !checkpoints.length;
    checkpointCard.replaceChildren(
      h("h2", {}, "Checkpoints"),
      h("p", { class: "help" }, "The adapters kept at epoch ends; the serving one answers generateContent."),
      checkpointTable(checkpoints, mayWrite && active ? serve : null),
    );
  }

  async function stop() {
    if (!confirm("Stop tuning this model? It will end up FAILED (cancelled).")) return;
    try {
      await cancelOperation(operationName);
      await refresh();
    } catch (error) {
      actionProblem.replaceChildren(errorBox(error, { title: "Could not cancel" }));
    }
  }

  async function remove() {
    if (!confirm(`Delete tunedModels/${id}? This cannot be undone.`)) return;
    try {
      await deleteTunedModel(id);
      location.hash = "#/models";
    } catch (error) {
      actionProblem.replaceChildren(errorBox(error, { title: "Could not delete" }));
    }
  }

  function render(model, operation, evaluations) {
    const metadata = operation?.metadata ?? {};
    const snapshots = metadata.snapshots ?? [];
    const done = Boolean(operation?.done) || model.state !== "CREATING";
    title.textContent = model.displayName || id;
    badge.replaceChildren(stateBadge(model.state));
    actions.replaceChildren(
      ...[
        model.state === "ACTIVE"
          ? h("a", { href: `#/playground/${id}`, class: "button primary" }, "Try in playground")
          : null,
        model.state === "CREATING" && operationName && mayWrite
          ? h("button", { type: "button", onclick: stop }, "Cancel tuning")
          : null,
        h("button", { type: "button", class: "danger", onclick: remove }, "Delete"),
      ].filter(Boolean),
    );
    const total = metadata.totalSteps ?? 0;
    progress.value = total ? (100 * (metadata.completedSteps ?? 0)) / total : 0;
    progressLabel.textContent = progressText(model, metadata, done);
    if (operation?.error) {
      const cancelled = operation.error.code === CANCELLED;
      outcome.replaceChildren(
        h(
          "div",
          { class: cancelled ? "notice" : "error-box", role: "status" },
          h("p", { class: "error-title" }, cancelled ? "Cancelled" : "Tuning failed"),
          h("p", {}, operation.error.message),
        ),
      );
    }
    chart.update(snapshots, total, emptyChartMessage(model, done), evaluations);
    chartHelp.textContent = evaluations.length
      ? "Mean loss of each step's examples, and the validation loss of each evaluation (dashed); " +
        "dashed grey lines mark where an epoch ends."
      : "Mean loss of each step's examples; dashed lines mark where an epoch ends.";
    renderEvaluations(evaluations);
    const hyperparameters = model.tuningTask?.hyperparameters ?? {};
    facts.replaceChildren(
      definitions("Hyperparameters", [
        ["Epochs", hyperparameters.epochCount],
        ["Batch size", hyperparameters.batchSize],
        ["Learning rate", hyperparameters.learningRate],
        ["Total steps", total || null],
      ]),
      definitions("Model", [
        ["Name", h("code", {}, model.name)],
        ["Base model", h("code", {}, model.baseModel ?? model.tunedModelSource?.baseModel ?? "")],
        [
          "Tuned from",
          model.tunedModelSource?.tunedModel ? h("code", {}, model.tunedModelSource.tunedModel) : null,
        ],
        ["Description", model.description],
        ["Temperature", model.temperature],
        ["Top P", model.topP],
        ["Top K", model.topK],
      ]),
      definitions("Timings", timings(model, snapshots)),
    );
  }

  async function refresh() {
    let model;
    let operation = null;
    try {
      // The operation first: once it is done, the model read after it is final too.
      operationName ??= (await tuningOperation(id, { signal }))?.name ?? null;
      if (operationName) operation = await getOperation(operationName, { signal });
      model = await getTunedModel(id, { signal });
    } catch (error) {
      if (error.httpStatus !== 404 && error.httpStatus !== 403) throw error;
      container.replaceChildren(
        h("p", { class: "breadcrumb" }, h("a", { href: "#/models" }, "← Tuned models")),
        h("h1", { tabindex: "-1" }, error.httpStatus === 404 ? "Tuned model not found" : "Not allowed"),
        errorBox(error),
      );
      return null;
    }
    // The extras: read in parallel, and (like the rest) no more once the model is done.
    const [evaluations, checkpoints, writer] = await Promise.all([
      getEvaluations(id, { signal }),
      getCheckpoints(id, { signal }),
      mayWrite ?? mayWriteTunedModel(id, { signal }),
    ]);
    mayWrite = writer;
    active = model.state === "ACTIVE";
    render(model, operation, evaluations);
    renderCheckpoints(checkpoints);
    return model.state === "CREATING" ? REFRESH_MS : null;
  }

  container.append(
    h("p", { class: "breadcrumb" }, h("a", { href: "#/models" }, "← Tuned models")),
    h("div", { class: "page-head" }, h("div", { class: "title-line" }, title, badge), actions),
    actionProblem,
    refreshProblem,
    outcome,
    h("section", { class: "card" }, h("h2", {}, "Progress"), progress, progressLabel),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Training loss"),
      chartHelp,
      chart.element,
    ),
    evaluationCard,
    checkpointCard,
    facts,
  );
  poll(refresh, signal, (error) =>
    refreshProblem.replaceChildren(
      ...(error ? [errorBox(error, { title: "Could not refresh; retrying" })] : []),
    ),
  );
}
