// A user's tour of the web console in Debian's Chromium, against a running server:
// sign in, upload a dataset (a bad one first), see the model wait in the queue, cancel
// the job that blocks it, watch the loss curve get points, reload, and try the playground;
// then the page of a model tuned with validation examples, as its owner and as a reader.
// tests/browser/test_console.py starts the server and runs this; the settings come in the
// environment, and the last line of stdout is a JSON report that the test checks.

import { mkdir } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";

const settings = {
  url: process.env.CONSOLE_URL,
  apiKey: process.env.CONSOLE_API_KEY,
  blocker: process.env.BLOCKER_MODEL_ID, // a long job that keeps the only worker busy
  goodFile: process.env.EXAMPLES_FILE,
  epochs: process.env.TOUR_EPOCHS, // with batch size 1: enough steps to watch the curve grow
  badFile: process.env.BAD_EXAMPLES_FILE,
  artifacts: process.env.ARTIFACTS_DIR,
  chromium: process.env.CHROMIUM ?? "/usr/bin/chromium",
  validated: process.env.VALIDATED_MODEL_ID, // trained with validation examples, shared with:
  readerKey: process.env.READER_API_KEY, // a user with the READER role on it
};
const MODEL_ID = "console-tour";
const TIMEOUT_MS = 90_000;

const report = { screenshots: [], consoleErrors: [], pointCounts: [] };
const browser = await chromium.launch({ executablePath: settings.chromium });

/** A page whose errors land in `errors`. */
async function newPage(errors) {
  const opened = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  opened.setDefaultTimeout(TIMEOUT_MS);
  opened.on("pageerror", (error) => errors.push(`page error: ${error.message}`));
  opened.on("console", (message) => {
    // Chromium logs every 4xx answer as "Failed to load resource"; the tour causes some on
    // purpose, and the model page asks for the permissions a reader may not list.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      errors.push(message.text());
    }
  });
  return opened;
}

const page = await newPage(report.consoleErrors);

async function screenshot(name, target = page) {
  const file = path.join(settings.artifacts, `${name}.png`);
  await target.screenshot({ path: file, fullPage: true });
  report.screenshots.push(file);
}

async function signIn(target, key) {
  await target.goto(settings.url);
  await target.getByLabel("API key").fill(key);
  await target.getByRole("button", { name: "Sign in" }).click();
  await target.getByRole("heading", { name: "Tuned models" }).waitFor();
}

const points = () => page.locator("svg.loss-chart").getAttribute("data-points").then(Number);
const readout = () => page.locator(".chart-readout").textContent();
const cellTexts = (rows) =>
  rows.evaluateAll((trs) => trs.map((tr) => [...tr.cells].map((cell) => cell.textContent)));
const checkpointRows = (target) => target.locator(".card.checkpoints tbody tr");
const servingEpoch = (target) =>
  checkpointRows(target)
    .filter({ has: target.locator(".badge", { hasText: "Serving" }) })
    .locator("td")
    .first()
    .textContent();

/** What the validated model's page shows, once its checkpoint list is there. */
async function validationView(target) {
  await checkpointRows(target).first().waitFor();
  const chart = target.locator("svg.loss-chart");
  return {
    trainingCurves: await chart.locator("path.loss-line").count(),
    validationCurves: await chart.locator("path.validation-line").count(),
    points: Number(await chart.getAttribute("data-points")),
    validationPoints: await chart.locator("circle.validation-point").count(),
    legend: await target.locator(".chart-legend span").allTextContents(),
    legendVisible: await target.locator(".chart-legend").isVisible(),
    epochRows: await cellTexts(target.locator(".card.evaluations tbody tr")),
    checkpointEpochs: await checkpointRows(target).locator("td:first-child").allTextContents(),
  };
}

async function tour() {
  await mkdir(settings.artifacts, { recursive: true });

  // Sign in: a wrong key is refused with the server's message, the right one is kept.
  await page.goto(settings.url);
  await page.getByLabel("API key").fill("not-a-key");
  await page.getByRole("button", { name: "Sign in" }).click();
  report.rejectedKey = await page.locator(".error-box").textContent();
  await screenshot("01-sign-in-refused");
  await page.getByLabel("API key").fill(settings.apiKey);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Tuned models" }).waitFor();
  report.storedKey = await page.evaluate(() => localStorage.getItem("tunesmith.apiKey"));

  // A file with bad lines: each problem is named with its line.
  await page.getByRole("link", { name: "New model" }).click();
  await page
    .getByLabel("Base model")
    .locator("option[value='models/tiny-random']")
    .waitFor({ state: "attached" });
  await page.getByLabel("Examples file").setInputFiles(settings.badFile);
  await page.locator(".dataset-problems").waitFor();
  report.datasetProblems = await page.locator(".dataset-problems li").allTextContents();
  await page.getByRole("button", { name: "Start tuning" }).click();
  report.localSummary = await page.locator("#form-errors").textContent();
  await screenshot("02-dataset-problems");

  // Pasted examples are read the same way.
  await page.getByLabel("Paste examples").check();
  await page.getByLabel("Examples", { exact: true }).fill('input,output\n1,2\n"three, or so",four\n');
  await page.locator(".dataset-ok").waitFor();
  report.pasted = await page.locator(".dataset-ok").textContent();

  // The good file, with too many epochs: the server's field violation lands on the field.
  await page.getByLabel("Upload a file").check();
  await page.getByLabel("Examples file").setInputFiles(settings.goodFile);
  await page.locator(".dataset-ok").waitFor();
  report.uploaded = await page.locator(".dataset-ok").textContent();
  await page.getByLabel("Display name").fill("Console tour");
  await page.getByLabel("Model ID").fill(MODEL_ID);
  await page.getByLabel("Base model").selectOption("models/tiny-random");
  await page.getByLabel("Epochs").fill("5000");
  await page.getByLabel("Batch size").fill("1");
  await page.getByRole("button", { name: "Start tuning" }).click();
  await page.locator("#form-errors .error-box").waitFor();
  report.serverError = await page.locator("#form-errors").textContent();
  report.epochsFieldError = await page.locator("#epochs-error").textContent();
  report.epochsInvalid = await page.getByLabel("Epochs").getAttribute("aria-invalid");
  await screenshot("03-server-field-violation");

  // Created while the only worker is busy: the page says it is queued, with an empty curve.
  await page.getByLabel("Epochs").fill(settings.epochs);
  report.estimate = await page.locator("#steps-estimate").textContent();
  await page.getByRole("button", { name: "Start tuning" }).click();
  await page.waitForURL(`**/#/models/${MODEL_ID}`);
  await page.getByText("Queued: the curve starts when a worker picks up the job.").first().waitFor();
  report.queuedPoints = await points();
  report.queuedProgress = await page.locator(".progress-text").textContent();
  await screenshot("04-queued");

  // Cancel the blocking job from its own page.
  await page.goto(`${settings.url}/#/models/${settings.blocker}`);
  page.once("dialog", (dialog) => dialog.accept());
  await page.getByRole("button", { name: "Cancel tuning" }).click();
  await page.locator(".notice", { hasText: "Cancelled" }).waitFor();
  report.blockerState = await page.locator(".title-line .badge").textContent();

  // The list shows the new model's progress once it trains.
  await page.getByRole("link", { name: "Tuned models" }).first().click();
  const row = page.locator(`tr[data-model="${MODEL_ID}"]`);
  await row.locator("progress").waitFor();
  report.listProgress = await row.locator(".progress-cell").textContent();
  await screenshot("05-models-training");

  // The curve grows while the job trains.
  await row.getByRole("link", { name: "Console tour" }).click();
  await page.waitForFunction(() => Number(document.querySelector("svg.loss-chart")?.dataset.points) > 0);
  const seen = new Set();
  while (seen.size < 3 && (await page.locator(".title-line .badge").textContent()) === "Creating") {
    const count = await points();
    if (count > 0 && !seen.has(count)) {
      seen.add(count);
      report.pointCounts.push(count);
    }
    await page.waitForTimeout(150);
  }
  await screenshot("06-training");

  // A reload keeps the page, the key and every point so far.
  report.pointsBeforeReload = await points();
  await page.reload();
  await page.waitForFunction(() => Number(document.querySelector("svg.loss-chart")?.dataset.points) > 0);
  report.pointsAfterReload = await points();
  report.urlAfterReload = page.url();
  await screenshot("07-reloaded");

  // Done: a point per step, epoch ends marked, hyperparameters and timings shown.
  await page.locator(".title-line .badge", { hasText: "Active" }).waitFor();
  report.finalPoints = await points();
  report.epochMarkers = await page.locator("svg.loss-chart .epoch-end").count();
  report.progressText = await page.locator(".progress-text").textContent();
  report.facts = await page.locator(".facts").allInnerTexts();
  await page.locator("svg.loss-chart").focus();
  await page.keyboard.press("Home");
  report.firstPointReadout = await readout();
  await page.locator("svg.loss-chart").hover({ position: { x: 700, y: 150 } });
  report.hoverReadout = await readout();
  await screenshot("08-trained");
  await page.setViewportSize({ width: 390, height: 844 });
  await screenshot("09-trained-narrow");
  report.narrowOverflow = await page.evaluate(() => document.documentElement.scrollWidth > innerWidth);
  await page.setViewportSize({ width: 1280, height: 900 });

  // The playground answers with the tuned model, at the chosen temperature and length.
  await page.getByRole("link", { name: "Try in playground" }).click();
  await page.waitForURL(`**/#/playground/${MODEL_ID}`);
  await page
    .getByLabel("Model")
    .locator(`option[value='tunedModels/${MODEL_ID}']`)
    .waitFor({ state: "attached" });
  report.playgroundModel = await page.getByLabel("Model").inputValue();
  await page.getByLabel("Temperature").fill("1.2");
  await page.getByLabel("Max output tokens").fill("8");
  await page.getByLabel("Prompt").fill("7");
  await page.getByLabel("Prompt").press("Control+Enter");
  await page.locator(".answers li").first().waitFor();
  report.playgroundMeta = await page.locator(".answers li .answer-meta").allTextContents();
  await screenshot("10-playground");

  // The model tuned with validation examples: training and validation loss as two curves
  // with a legend, a row per epoch, and a checkpoint per epoch, the last one serving.
  await page.goto(`${settings.url}/#/models/${settings.validated}`);
  const validated = await validationView(page);
  validated.servingBefore = await servingEpoch(page);
  validated.serveButtonsBefore = await page.getByRole("button", { name: "Serve this" }).count();
  await screenshot("11-validation");
  // "Serve this" on the first epoch moves the mark there, and a reload shows it still there.
  await checkpointRows(page).first().getByRole("button", { name: "Serve this" }).click();
  await checkpointRows(page).first().locator(".badge", { hasText: "Serving" }).waitFor();
  validated.servingAfter = await servingEpoch(page);
  await screenshot("12-validation-served");
  await page.reload();
  await checkpointRows(page).first().waitFor();
  validated.servingAfterReload = await servingEpoch(page);
  report.validated = validated;

  // A reader sees the same page without the button (the server would refuse it).
  const readerErrors = [];
  const readerPage = await newPage(readerErrors);
  await signIn(readerPage, settings.readerKey);
  await readerPage.goto(`${settings.url}/#/models/${settings.validated}`);
  const asReader = await validationView(readerPage);
  asReader.serving = await servingEpoch(readerPage);
  asReader.serveButtons = await readerPage.getByRole("button", { name: "Serve this" }).count();
  asReader.consoleErrors = readerErrors;
  report.validatedAsReader = asReader;
  await screenshot("13-validation-reader", readerPage);
  await readerPage.close();

  // Deleting the cancelled job takes it off the list.
  await page.goto(`${settings.url}/#/models/${settings.blocker}`);
  page.once("dialog", (dialog) => dialog.accept());
  await page.getByRole("button", { name: "Delete" }).click();
  await page.getByRole("heading", { name: "Tuned models" }).waitFor();
  await page.locator(`tr[data-model="${MODEL_ID}"]`).waitFor();
  report.listedAfterDelete = await page
    .locator("tr[data-model]")
    .evaluateAll((rows) => rows.map((row) => row.dataset.model));

  // Signing out forgets the key.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API key").waitFor();
  report.keyAfterSignOut = await page.evaluate(() => localStorage.getItem("tunesmith.apiKey"));
}

let failed = false;
try {
  await tour();
} catch (error) {
  failed = true;
  report.failure = String(error.stack ?? error);
  await screenshot("failure").catch(() => {});
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
process.exit(failed ? 1 : 0);
