// The console's shell: sign-in, the header, and hash routes to the views. Every view reads
// its state from the API when it mounts, so a reload (or a shared link) shows the same
// thing; only the API key is remembered, in localStorage, until "Sign out".

import { SIGNED_OUT_EVENT, forgetKey, storedKey } from "./api.js";
import { createView } from "./create.js";
import { modelView } from "./model.js";
import { modelsView } from "./models.js";
import { playgroundView } from "./playground.js";
import { signInView } from "./signin.js";
import { h } from "./ui.js";

const ROUTES = [
  { pattern: /^#\/models\/?$/, nav: "models", view: modelsView },
  { pattern: /^#\/models\/([a-z0-9-]+)$/, nav: "models", view: modelView },
  { pattern: /^#\/new$/, nav: "new", view: createView },
  { pattern: /^#\/playground(?:\/([a-z0-9-]+))?$/, nav: "playground", view: playgroundView },
];

const header = document.querySelector("header.topbar");
const main = document.querySelector("#view");
let leaveView = new AbortController();

function notFound(container) {
  container.append(
    h("h1", { tabindex: "-1" }, "Page not found"),
    h(
      "p",
      {},
      "Nothing lives at this address. ",
      h("a", { href: "#/models" }, "Go to your tuned models"),
      ".",
    ),
  );
}

/**
 * Shows the view for the current address, after the previous view stops its work; the
 * sign-in form while there is no key (`signedOutReason` says why the last one was dropped).
 */
function route({ focus = true, signedOutReason } = {}) {
  leaveView.abort();
  leaveView = new AbortController();
  main.replaceChildren();
  if (!storedKey()) {
    header.hidden = true;
    signInView(main, { signal: leaveView.signal, onSignedIn: () => route(), reason: signedOutReason });
    return;
  }
  header.hidden = false;
  if (!location.hash || location.hash === "#" || location.hash === "#/") {
    history.replaceState(null, "", "#/models");
  }
  const match = ROUTES.map((r) => ({ ...r, params: r.pattern.exec(location.hash) })).find((r) => r.params);
  for (const link of header.querySelectorAll("nav a")) {
    if (match && link.dataset.nav === match.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (match) match.view(main, { signal: leaveView.signal, params: match.params.slice(1) });
  else notFound(main);
  if (focus) main.querySelector("h1")?.focus({ preventScroll: true });
}

document.querySelector("#sign-out").addEventListener("click", () => {
  forgetKey();
  route();
});

window.addEventListener(SIGNED_OUT_EVENT, (event) => route({ signedOutReason: event.detail }));

window.addEventListener("hashchange", () => route());
route({ focus: false });
