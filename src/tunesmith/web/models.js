// The tuned models table: state and tuning progress, refreshed while anything trains.

import { listTunedModels, tuningOperation } from "./api.js";
import { errorBox, formatTime, h, modelId, poll, stateBadge } from "./ui.js";

const TRAINING_REFRESH_MS = 1500;
const IDLE_REFRESH_MS = 10000;

function progressCell(model, operation) {
  if (model.state === "ACTIVE") return h("span", { class: "muted" }, "Done");
  if (model.state === "FAILED") return h("span", { class: "muted" }, "Stopped");
  const metadata = operation?.metadata;
  if (!metadata?.completedSteps) {
    return h("span", { class: "muted" }, model.tuningTask?.startTime ? "Starting…" : "Queued");
  }
  const percent = metadata.completedPercent ?? 0;
  return h(
    "div",
    { class: "progress-cell" },
    h("progress", { max: "100", value: String(percent), "aria-label": `${Math.floor(percent)}% tuned` }),
    h("span", {}, `${metadata.completedSteps} / ${metadata.totalSteps} steps`),
  );
}

function row(model, operation) {
  const id = modelId(model.name);
  return h(
    "tr",
    { "data-model": id },
    h(
      "th",
      { scope: "row" },
      h("a", { href: `#/models/${id}` }, model.displayName || id),
      model.displayName ? h("div", { class: "muted mono" }, id) : null,
    ),
    h("td", { class: "mono" }, model.baseModel ?? model.tunedModelSource?.baseModel ?? ""),
    h("td", {}, stateBadge(model.state)),
    h("td", {}, progressCell(model, operation)),
    h("td", {}, formatTime(model.createTime)),
    h(
      "td",
      {},
      model.state === "ACTIVE"
        ? h("a", { href: `#/playground/${id}`, class: "button small" }, "Try it")
        : null,
    ),
  );
}

export function modelsView(container, { signal }) {
  let filter = "";
  const status = h("div", { class: "feedback" });
  const body = h(
    "div",
    { class: "models-body", "aria-busy": "true" },
    h("p", { class: "muted" }, "Loading…"),
  );
  const search = h("input", {
    id: "model-filter",
    type: "search",
    placeholder: "Words in the name or description",
  });

  async function refresh() {
    const models = await listTunedModels({ filter, signal });
    const training = models.filter((m) => m.state === "CREATING");
    const operations = new Map(
      await Promise.all(
        training.map(async (m) => [m.name, await tuningOperation(modelId(m.name), { signal })]),
      ),
    );
    body.setAttribute("aria-busy", "false");
    if (!models.length) {
      body.replaceChildren(
        filter
          ? h("p", { class: "empty-state" }, `No tuned model matches “${filter}”.`)
          : h(
              "div",
              { class: "empty-state" },
              h("p", {}, "No tuned models yet."),
              h(
                "p",
                {},
                h("a", { href: "#/new", class: "button primary" }, "Tune a model"),
                " from your own examples.",
              ),
            ),
      );
    } else {
      body.replaceChildren(
        h(
          "div",
          { class: "table-scroll" },
          h(
            "table",
            { class: "models" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["Model", "Base model", "State", "Progress", "Created"].map((t) =>
                  h("th", { scope: "col" }, t),
                ),
                h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")),
              ),
            ),
            h(
              "tbody",
              {},
              models.map((m) => row(m, operations.get(m.name))),
            ),
          ),
        ),
      );
    }
    // Fast while something trains; slowly otherwise, for models made elsewhere.
    return training.length ? TRAINING_REFRESH_MS : IDLE_REFRESH_MS;
  }

  container.append(
    h(
      "div",
      { class: "page-head" },
      h("h1", { tabindex: "-1" }, "Tuned models"),
      h("a", { href: "#/new", class: "button primary" }, "New tuned model"),
    ),
    h(
      "form",
      {
        class: "filter",
        role: "search",
        onsubmit: (event) => {
          event.preventDefault();
          filter = search.value.trim();
          refresh().catch((error) => status.replaceChildren(errorBox(error)));
        },
      },
      h("label", { for: "model-filter" }, "Search"),
      search,
      h("button", { type: "submit" }, "Search"),
    ),
    status,
    body,
  );
  poll(refresh, signal, (error) =>
    status.replaceChildren(...(error ? [errorBox(error, { title: "Could not load the tuned models" })] : [])),
  );
}
