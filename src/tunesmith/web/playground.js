// The playground: a prompt to generateContent on a tuned (or base) model, with temperature
// and output length controls. Answers stay listed, newest first, until the page is left.

import { generateContent, listBaseModels, listTunedModels } from "./api.js";
import { errorBox, h, modelId } from "./ui.js";

const DEFAULT_MAX_TOKENS = 64;

export function playgroundView(container, { signal, params: [chosenId] }) {
  const defaults = new Map(); // model name -> its default temperature
  const modelSelect = h("select", { id: "playground-model" }, h("option", { value: "" }, "Loading…"));
  const prompt = h("textarea", { id: "prompt", rows: "4", "aria-describedby": "prompt-help" });
  const temperature = h("input", {
    id: "temperature",
    type: "range",
    min: "0",
    max: "2",
    step: "0.05",
    value: "1",
  });
  const temperatureValue = h("output", { for: "temperature", id: "temperature-value" }, "1.00");
  const maxTokens = h("input", {
    id: "max-tokens",
    type: "number",
    min: "1",
    step: "1",
    value: String(DEFAULT_MAX_TOKENS),
    inputmode: "numeric",
  });
  const submit = h("button", { type: "submit", class: "primary" }, "Generate");
  const feedback = h("div", { class: "feedback" });
  const answers = h("ol", { class: "answers", "aria-live": "polite", reversed: true });

  function showTemperature() {
    temperatureValue.textContent = Number(temperature.value).toFixed(2);
  }

  function useModelDefaults() {
    const value = defaults.get(modelSelect.value);
    if (value !== undefined) {
      temperature.value = String(value);
      showTemperature();
    }
  }

  async function loadModels() {
    try {
      const [tuned, base] = await Promise.all([listTunedModels({ signal }), listBaseModels({ signal })]);
      const active = tuned.filter((m) => m.state === "ACTIVE");
      for (const m of [...active, ...base]) defaults.set(m.name, m.temperature);
      const chosen = chosenId ? `tunedModels/${chosenId}` : null;
      modelSelect.replaceChildren(
        h(
          "optgroup",
          { label: active.length ? "Tuned models" : "Tuned models (none is active yet)" },
          active.map((m) =>
            h(
              "option",
              { value: m.name, selected: m.name === chosen },
              m.displayName ? `${m.displayName} (${modelId(m.name)})` : modelId(m.name),
            ),
          ),
        ),
        h(
          "optgroup",
          { label: "Base models" },
          base.map((m) => h("option", { value: m.name }, `${m.displayName} (${m.name})`)),
        ),
      );
      if (chosen && modelSelect.value !== chosen) {
        feedback.replaceChildren(
          h(
            "p",
            { class: "notice", role: "status" },
            `${chosen} is not an active tuned model you can use, so another model is selected.`,
          ),
        );
      }
      useModelDefaults();
    } catch (error) {
      if (!signal.aborted) feedback.replaceChildren(errorBox(error, { title: "Could not load the models" }));
    }
  }

  async function onSubmit(event) {
    event.preventDefault();
    feedback.replaceChildren();
    const text = prompt.value;
    const tokens = Number(maxTokens.value);
    if (!text.trim()) {
      feedback.replaceChildren(h("p", { class: "field-error", role: "alert" }, "Write a prompt first."));
      prompt.focus();
      return;
    }
    if (!Number.isInteger(tokens) || tokens < 1) {
      feedback.replaceChildren(
        h(
          "p",
          { class: "field-error", role: "alert" },
          "Max output tokens must be a whole number of at least 1.",
        ),
      );
      maxTokens.focus();
      return;
    }
    const model = modelSelect.value;
    const generationConfig = { temperature: Number(temperature.value), maxOutputTokens: tokens };
    submit.disabled = true;
    submit.textContent = "Generating…";
    const started = performance.now();
    try {
      const response = await generateContent(
        model,
        { contents: [{ role: "user", parts: [{ text }] }], generationConfig },
        { signal },
      );
      const seconds = (performance.now() - started) / 1000;
      const candidate = response.candidates?.[0];
      const answer = (candidate?.content?.parts ?? []).map((p) => p.text ?? "").join("");
      const usage = response.usageMetadata ?? {};
      answers.prepend(
        h(
          "li",
          { class: "answer card" },
          h(
            "p",
            { class: "answer-meta" },
            h("code", {}, model),
            ` · temperature ${generationConfig.temperature} · max ${tokens} tokens`,
          ),
          h("p", { class: "answer-prompt" }, h("span", { class: "visually-hidden" }, "Prompt: "), text),
          answer
            ? h("p", { class: "answer-text" }, answer)
            : h("p", { class: "answer-text muted" }, "(empty answer)"),
          h(
            "p",
            { class: "answer-meta" },
            `finish reason ${candidate?.finishReason ?? "unknown"} · `,
            `${usage.promptTokenCount ?? "?"} prompt + ${usage.candidatesTokenCount ?? "?"} answer tokens · `,
            `${seconds.toFixed(2)} s`,
          ),
        ),
      );
    } catch (error) {
      if (!signal.aborted) feedback.replaceChildren(errorBox(error, { title: "Generation failed" }));
    } finally {
      submit.disabled = false;
      submit.textContent = "Generate";
    }
  }

  temperature.addEventListener("input", showTemperature);
  modelSelect.addEventListener("change", () => {
    useModelDefaults();
    // The address names the chosen tuned model, so a reload keeps it (no hashchange fires).
    const tuned = modelSelect.value.startsWith("tunedModels/");
    history.replaceState(null, "", tuned ? `#/playground/${modelId(modelSelect.value)}` : "#/playground");
  });
  const form = h(
    "form",
    { class: "card playground", novalidate: true, onsubmit: onSubmit },
    h("div", { class: "field" }, h("label", { for: "playground-model" }, "Model"), modelSelect),
    h(
      "div",
      { class: "field" },
      h("label", { for: "prompt" }, "Prompt"),
      prompt,
      h(
        "p",
        { class: "help", id: "prompt-help" },
        "Ctrl+Enter (⌘+Enter) sends it. " +
          "Tuned models answer best to prompts shaped like their training inputs.",
      ),
    ),
    h(
      "div",
      { class: "row" },
      h(
        "div",
        { class: "field" },
        h("label", { for: "temperature" }, "Temperature"),
        h("div", { class: "range" }, temperature, temperatureValue),
      ),
      h("div", { class: "field" }, h("label", { for: "max-tokens" }, "Max output tokens"), maxTokens),
    ),
    feedback,
    h("div", { class: "form-actions" }, submit),
  );
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  container.append(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Playground")),
    form,
    answers,
  );
  loadModels();
}
