// The create form: examples from an uploaded JSONL/CSV file or pasted text, checked line
// by line in the browser; then tunedModels.create, whose field violations land next to
// the fields they name.

import { createTunedModel, listBaseModels } from "./api.js";
import { SHOWN_PROBLEMS, parseExamples, readUtf8 } from "./dataset.js";
import { errorBox, h, modelId, plural } from "./ui.js";

const TUNED_MODEL_ID = /^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$/;
const MAX_DISPLAY_NAME = 40;
const BASE_MODEL_STORAGE = "tunesmith.baseModel";
const EXAMPLE_PATH = /^tuningTask\.trainingData\.examples\.examples\[(\d+)\]/;
// Where the server's field paths point in this form.
const FIELD_OF_PATH = {
  tunedModelId: "model-id",
  displayName: "display-name",
  description: "description",
  baseModel: "base-model",
  "tuningTask.hyperparameters.epochCount": "epochs",
  "tuningTask.hyperparameters.batchSize": "batch-size",
  "tuningTask.hyperparameters.learningRate": "learning-rate",
  "tuningTask.trainingData": "dataset",
  "tuningTask.trainingData.examples.examples": "dataset",
};
const PASTE_PLACEHOLDER = `{"text_input": "1", "output": "2"}
{"text_input": "three", "output": "four"}

or CSV:
input,output
1,2
three,four`;

/** A labelled control with its help and, unless it shares one, its own error line. */
function field(id, label, control, { help, ownError = true } = {}) {
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    control,
    help ? h("p", { class: "help", id: `${id}-help` }, help) : null,
    ownError ? h("p", { class: "field-error", id: `${id}-error`, hidden: true }) : null,
  );
}

function truncate(text, length = 80) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

export function createView(container, { signal }) {
  const sources = { file: null, paste: null }; // the parsed dataset of each source
  let source = "file";

  const fileInput = h("input", {
    id: "dataset-file",
    type: "file",
    accept: ".jsonl,.ndjson,.json,.csv,.txt",
    "aria-describedby": "dataset-file-help dataset-error",
  });
  const pasteInput = h("textarea", {
    id: "dataset-text",
    rows: "8",
    spellcheck: "false",
    placeholder: PASTE_PLACEHOLDER,
    "aria-describedby": "dataset-text-help dataset-error",
  });
  // The two sources share the dataset's error line.
  const filePanel = field("dataset-file", "Examples file", fileInput, {
    help:
      'JSONL: one {"text_input": …, "output": …} object per line ("input" works too). ' +
      "CSV: two columns, input then output; the header row is optional.",
    ownError: false,
  });
  const pastePanel = field("dataset-text", "Examples", pasteInput, {
    help: "Paste JSONL or CSV, in the same formats as a file.",
    ownError: false,
  });
  pastePanel.hidden = true;
  const datasetReport = h("div", { class: "dataset-report", id: "dataset-report", "aria-live": "polite" });
  const datasetError = h("p", { class: "field-error", id: "dataset-error", hidden: true });

  const displayName = h("input", {
    id: "display-name",
    type: "text",
    autocomplete: "off",
    "aria-describedby": "display-name-help display-name-error",
  });
  const tunedModelId = h("input", {
    id: "model-id",
    type: "text",
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": "model-id-help model-id-error",
  });
  const description = h("textarea", {
    id: "description",
    rows: "2",
    "aria-describedby": "description-error",
  });
  const baseModel = h(
    "select",
    { id: "base-model", "aria-describedby": "base-model-error" },
    h("option", { value: "" }, "Loading…"),
  );
  const epochs = h("input", {
    id: "epochs",
    type: "number",
    min: "1",
    step: "1",
    value: "5",
    inputmode: "numeric",
    "aria-describedby": "epochs-error",
  });
  const batchSize = h("input", {
    id: "batch-size",
    type: "number",
    min: "1",
    step: "1",
    value: "4",
    inputmode: "numeric",
    "aria-describedby": "batch-size-error",
  });
  const learningRate = h("input", {
    id: "learning-rate",
    type: "text",
    inputmode: "decimal",
    placeholder: "server default",
    "aria-describedby": "learning-rate-help learning-rate-error",
  });
  const estimate = h("p", { class: "estimate", id: "steps-estimate", "aria-live": "polite" });
  const summary = h("div", { class: "feedback", id: "form-errors" });
  const submit = h("button", { type: "submit", class: "primary" }, "Start tuning");

  // Each field's control, by the field's id; the dataset's is the visible source's.
  const controls = {
    dataset: () => (source === "file" ? fileInput : pasteInput),
    "model-id": () => tunedModelId,
    "display-name": () => displayName,
    description: () => description,
    "base-model": () => baseModel,
    epochs: () => epochs,
    "batch-size": () => batchSize,
    "learning-rate": () => learningRate,
  };

  function labelOf(fieldId) {
    if (fieldId === "dataset") return "Training data";
    return container.querySelector(`label[for="${controls[fieldId]().id}"]`)?.textContent ?? fieldId;
  }

  function setFieldError(fieldId, message) {
    const error = container.querySelector(`#${fieldId}-error`);
    error.textContent = message ?? "";
    error.hidden = !message;
    const control = controls[fieldId]();
    if (message) control.setAttribute("aria-invalid", "true");
    else control.removeAttribute("aria-invalid");
  }

  function clearErrors() {
    summary.replaceChildren();
    for (const fieldId of Object.keys(controls)) setFieldError(fieldId, null);
  }

  function dataset() {
    return sources[source];
  }

  function showDataset() {
    const parsed = dataset();
    updateEstimate();
    if (!parsed) {
      datasetReport.replaceChildren();
      return;
    }
    const from = parsed.name ? ` in ${parsed.name}` : "";
    if (parsed.problems.length) {
      const shown = parsed.problems.slice(0, SHOWN_PROBLEMS);
      const more = parsed.problems.length - shown.length;
      datasetReport.replaceChildren(
        h(
          "div",
          { class: "dataset-problems" },
          h("p", {}, `${plural(parsed.problems.length, "problem")}${from} (${parsed.format}):`),
          h(
            "ul",
            {},
            shown.map((p) => h("li", {}, p.line ? h("strong", {}, `line ${p.line}: `) : null, p.message)),
            more ? h("li", {}, `… and ${more} more`) : null,
          ),
        ),
      );
      return;
    }
    const count = parsed.examples.length;
    datasetReport.replaceChildren(
      h("p", { class: "dataset-ok" }, `✓ ${plural(count, "example")}${from} (${parsed.format})`),
      h(
        "table",
        { class: "preview" },
        h("caption", {}, count > 3 ? "The first 3 examples" : "The examples"),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, "Line"),
            h("th", { scope: "col" }, "Input"),
            h("th", { scope: "col" }, "Output"),
          ),
        ),
        h(
          "tbody",
          {},
          parsed.examples
            .slice(0, 3)
            .map((e) =>
              h(
                "tr",
                {},
                h("td", {}, String(e.line)),
                h("td", {}, truncate(e.textInput)),
                h("td", {}, truncate(e.output)),
              ),
            ),
        ),
      ),
    );
  }

  function updateEstimate() {
    const parsed = dataset();
    const examples = parsed && !parsed.problems.length ? parsed.examples.length : 0;
    const epochCount = Number(epochs.value);
    const batch = Number(batchSize.value);
    const known = examples && [epochCount, batch].every((n) => Number.isInteger(n) && n > 0);
    // totalSteps = ceil(examples × epochs / batch size), as the server counts them.
    estimate.textContent = known
      ? `${examples} examples × ${epochCount} epochs ÷ batch ${batch} = ` +
        `${Math.ceil((examples * epochCount) / batch)} steps`
      : "";
  }

  async function readFile() {
    const file = fileInput.files[0];
    if (!file) {
      sources.file = null;
    } else {
      const { text, problem } = await readUtf8(file);
      sources.file = problem
        ? { name: file.name, format: "file", examples: [], problems: [problem] }
        : { name: file.name, ...parseExamples(text, file.name) };
    }
    setFieldError("dataset", null);
    showDataset();
  }

  let pasteTimer;
  function readPaste() {
    clearTimeout(pasteTimer);
    pasteTimer = setTimeout(() => {
      sources.paste = pasteInput.value.trim() ? parseExamples(pasteInput.value) : null;
      setFieldError("dataset", null);
      showDataset();
    }, 250);
  }
  signal.addEventListener("abort", () => clearTimeout(pasteTimer));

  function chooseSource(value) {
    source = value;
    filePanel.hidden = value !== "file";
    pastePanel.hidden = value !== "paste";
    setFieldError("dataset", null);
    showDataset();
  }

  /** Problems the browser can see before asking the server: [{fieldId, message}]. */
  function localProblems() {
    const problems = [];
    const parsed = dataset();
    if (!parsed) {
      problems.push({
        fieldId: "dataset",
        message: source === "file" ? "choose a JSONL or CSV file of examples" : "paste some examples",
      });
    } else if (parsed.problems.length) {
      const first = parsed.problems[0];
      const where = first.line ? `line ${first.line}: ` : "";
      problems.push({
        fieldId: "dataset",
        message: `${plural(parsed.problems.length, "problem")} to fix; the first: ${where}${first.message}`,
      });
    }
    const id = tunedModelId.value.trim();
    if (id && !TUNED_MODEL_ID.test(id)) {
      problems.push({
        fieldId: "model-id",
        message:
          "use up to 40 lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen",
      });
    }
    if ([...displayName.value].length > MAX_DISPLAY_NAME) {
      problems.push({
        fieldId: "display-name",
        message: `at most ${MAX_DISPLAY_NAME} characters (now ${[...displayName.value].length})`,
      });
    }
    for (const [fieldId, input] of [
      ["epochs", epochs],
      ["batch-size", batchSize],
    ]) {
      const value = input.value.trim();
      if (value && !(Number.isInteger(Number(value)) && Number(value) >= 1)) {
        problems.push({ fieldId, message: `must be a whole number of at least 1, not “${value}”` });
      }
    }
    const rate = learningRate.value.trim();
    if (rate && !(Number(rate) > 0)) {
      problems.push({
        fieldId: "learning-rate",
        message: `must be a number above 0, like 0.001, not “${rate}”`,
      });
    }
    if (!baseModel.value) problems.push({ fieldId: "base-model", message: "choose a base model" });
    return problems;
  }

  function showLocalProblems(problems) {
    for (const p of problems) {
      // The dataset's own problems are already listed line by line under it.
      setFieldError(
        p.fieldId,
        p.fieldId === "dataset" && dataset() ? "Fix the lines listed below." : p.message,
      );
    }
    summary.replaceChildren(
      h(
        "div",
        { class: "error-box", role: "alert", tabindex: "-1" },
        h(
          "p",
          { class: "error-title" },
          problems.length === 1
            ? "One thing to fix before tuning:"
            : `${problems.length} things to fix before tuning:`,
        ),
        h(
          "ul",
          { class: "violations" },
          problems.map((p) =>
            h(
              "li",
              {},
              h(
                "a",
                {
                  href: `#${controls[p.fieldId]().id}`,
                  onclick: (event) => {
                    event.preventDefault();
                    controls[p.fieldId]().focus();
                  },
                },
                labelOf(p.fieldId),
              ),
              `: ${p.message}`,
            ),
          ),
        ),
      ),
    );
    summary.firstChild.focus();
  }

  /** The server's violations, each under its field; example indexes become file lines. */
  function showServerError(error) {
    const examples = dataset()?.examples ?? [];
    const describe = (path) => {
      const example = EXAMPLE_PATH.exec(path);
      if (example) {
        const line = examples[Number(example[1])]?.line;
        return `Training data, ${line ? `line ${line}` : `example ${Number(example[1]) + 1}`}`;
      }
      const fieldId = FIELD_OF_PATH[path];
      return fieldId ? labelOf(fieldId) : path;
    };
    for (const { field: path, description } of error.violations) {
      const fieldId = EXAMPLE_PATH.test(path) ? "dataset" : FIELD_OF_PATH[path];
      // Next to its field, a violation need not repeat the field's API path.
      const problem = description.startsWith(`${path} `) ? description.slice(path.length + 1) : description;
      if (fieldId) setFieldError(fieldId, fieldId === "dataset" ? `${describe(path)}: ${problem}` : problem);
    }
    summary.replaceChildren(
      errorBox(error, { title: "The server did not start tuning", describeField: describe }),
    );
    summary.firstChild.focus();
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearErrors();
    const problems = localProblems();
    if (problems.length) {
      showLocalProblems(problems);
      return;
    }
    const hyperparameters = {};
    if (epochs.value.trim()) hyperparameters.epochCount = Number(epochs.value);
    if (batchSize.value.trim()) hyperparameters.batchSize = Number(batchSize.value);
    if (learningRate.value.trim()) hyperparameters.learningRate = Number(learningRate.value);
    const tunedModel = {
      baseModel: baseModel.value,
      tuningTask: {
        hyperparameters,
        trainingData: {
          examples: { examples: dataset().examples.map(({ textInput, output }) => ({ textInput, output })) },
        },
      },
    };
    if (displayName.value.trim()) tunedModel.displayName = displayName.value.trim();
    if (description.value.trim()) tunedModel.description = description.value.trim();
    submit.disabled = true;
    submit.textContent = "Starting…";
    try {
      const operation = await createTunedModel(tunedModel, tunedModelId.value.trim() || undefined);
      localStorage.setItem(BASE_MODEL_STORAGE, baseModel.value);
      location.hash = `#/models/${modelId(operation.metadata.tunedModel)}`;
    } catch (error) {
      if (signal.aborted) return;
      showServerError(error);
      submit.disabled = false;
      submit.textContent = "Start tuning";
    }
  }

  async function loadBaseModels() {
    try {
      const models = (await listBaseModels({ signal })).filter((m) =>
        (m.supportedGenerationMethods ?? []).includes("createTunedModel"),
      );
      const remembered = localStorage.getItem(BASE_MODEL_STORAGE);
      baseModel.replaceChildren(
        ...models.map((m) =>
          h("option", { value: m.name, selected: m.name === remembered }, `${m.displayName} (${m.name})`),
        ),
      );
    } catch (error) {
      if (signal.aborted) return;
      baseModel.replaceChildren(h("option", { value: "" }, "Could not load the base models"));
      summary.replaceChildren(errorBox(error, { title: "Could not load the base models" }));
    }
  }

  fileInput.addEventListener("change", readFile);
  pasteInput.addEventListener("input", readPaste);
  epochs.addEventListener("input", updateEstimate);
  batchSize.addEventListener("input", updateEstimate);

  const sourceChoice = (value, label) =>
    h(
      "label",
      { class: "choice" },
      h("input", {
        type: "radio",
        name: "source",
        value,
        checked: value === source,
        onchange: () => chooseSource(value),
      }),
      label,
    );

  container.append(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "New tuned model")),
    h(
      "form",
      { class: "create", novalidate: true, onsubmit: onSubmit },
      summary,
      h(
        "fieldset",
        { class: "card" },
        h("legend", {}, "Training data"),
        h(
          "div",
          { class: "choices", role: "radiogroup", "aria-label": "Where the examples come from" },
          sourceChoice("file", "Upload a file"),
          sourceChoice("paste", "Paste examples"),
        ),
        filePanel,
        pastePanel,
        datasetError,
        datasetReport,
      ),
      h(
        "fieldset",
        { class: "card" },
        h("legend", {}, "Model"),
        field("display-name", "Display name", displayName, {
          help: `Optional, up to ${MAX_DISPLAY_NAME} characters.`,
        }),
        field("model-id", "Model ID", tunedModelId, {
          help: "Optional; generated from the display name when empty. Lowercase letters, digits and hyphens.",
        }),
        field("description", "Description", description),
        field("base-model", "Base model", baseModel),
      ),
      h(
        "fieldset",
        { class: "card" },
        h("legend", {}, "Hyperparameters"),
        h(
          "div",
          { class: "row" },
          field("epochs", "Epochs", epochs),
          field("batch-size", "Batch size", batchSize),
          field("learning-rate", "Learning rate", learningRate, {
            help: "Empty: 0.001 or 0.0002 by dataset size.",
          }),
        ),
        estimate,
      ),
      h("div", { class: "form-actions" }, submit),
    ),
  );
  loadBaseModels();
}
