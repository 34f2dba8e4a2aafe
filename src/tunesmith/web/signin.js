// Sign-in: the console keeps an API key (checked against the server first) and sends it
// with every call. `reason` explains why a signed-in session ended.

import { checkKey, storeKey } from "./api.js";
import { errorBox, h } from "./ui.js";

export function signInView(container, { signal, onSignedIn, reason }) {
  const keyInput = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "api-key-help",
  });
  const feedback = h("div", { class: "feedback" });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");

  const form = h(
    "form",
    {
      class: "card sign-in",
      novalidate: true,
      onsubmit: async (event) => {
        event.preventDefault();
        const key = keyInput.value.trim();
        if (!key) {
          feedback.replaceChildren(h("p", { class: "field-error", role: "alert" }, "Enter your API key."));
          keyInput.focus();
          return;
        }
        submit.disabled = true;
        submit.textContent = "Checking…";
        try {
          await checkKey(key, { signal });
          storeKey(key);
          onSignedIn();
        } catch (error) {
          if (signal.aborted) return;
          feedback.replaceChildren(errorBox(error, { title: "The key was not accepted" }));
          submit.disabled = false;
          submit.textContent = "Sign in";
          keyInput.select();
        }
      },
    },
    h("h1", { tabindex: "-1" }, "Sign in to Tunesmith"),
    reason ? h("p", { class: "notice", role: "status" }, `You were signed out: ${reason}`) : null,
    h("label", { for: "api-key" }, "API key"),
    keyInput,
    h(
      "p",
      { id: "api-key-help", class: "help" },
      "The owner's key is printed by ",
      h("code", {}, "tunesmith auth print-api-key"),
      "; others get theirs from ",
      h("code", {}, "tunesmith keys create"),
      ". It stays in this browser until you sign out.",
    ),
    feedback,
    submit,
  );
  container.append(form);
  keyInput.focus();
}
