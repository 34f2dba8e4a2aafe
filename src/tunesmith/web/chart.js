// The loss curve: one point per step (mean loss of that step's examples), joined by a
// line, with dashed lines where an epoch ends. Drawn in SVG from the operation's snapshots;
// the x axis spans every step of the job, so the curve grows across it as training runs.
// Pointer and arrow keys pick a point; a table under the chart holds every value. With
// validation examples, the validation loss of each evaluation is a second, dashed curve.

import { formatLoss, formatTime, h, plural, svg } from "./ui.js";

const WIDTH = 720;
const HEIGHT = 300;
const PLOT = { left: 64, right: WIDTH - 20, top: 28, bottom: HEIGHT - 44 };
const MAX_EPOCH_LABELS = 10;

/** A round step (1, 2 or 5 times a power of ten) that cuts `span` into about `count` parts. */
function niceStep(span, count) {
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  return (fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10) * power;
}

function lossScale(losses) {
  let low = losses.reduce((a, b) => Math.min(a, b));
  let high = losses.reduce((a, b) => Math.max(a, b));
  if (high - low < 1e-9) {
    const pad = Math.max(Math.abs(high) * 0.05, 0.01);
    low -= pad;
    high += pad;
  }
  const step = niceStep(high - low, 5);
  const start = Math.floor(low / step) * step;
  const end = Math.ceil(high / step) * step;
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  const ticks = [];
  for (let i = 0; start + i * step <= end + step / 2; i++) ticks.push(start + i * step);
  return { low: start, high: end, ticks, label: (value) => value.toFixed(decimals) };
}

function stepTicks(maxStep) {
  if (maxStep <= 12) return Array.from({ length: maxStep }, (_, i) => i + 1);
  const step = niceStep(maxStep, 8);
  const ticks = [1];
  for (let tick = step; tick <= maxStep; tick += step) ticks.push(tick);
  return ticks;
}

/** Where epochs end: the first step whose snapshot counts more completed epochs. */
function epochEnds(snapshots) {
  const ends = [];
  let completed = 0;
  for (const snapshot of snapshots) {
    const epoch = snapshot.epoch ?? 0;
    if (epoch > completed) ends.push({ step: snapshot.step, epoch });
    completed = Math.max(completed, epoch);
  }
  return ends;
}

/** "12 of 40 · epoch 2 · mean loss 1.234": a step's number and values. */
function describe(snapshot, maxStep) {
  const loss = formatLoss(snapshot.meanLoss);
  return `${snapshot.step} of ${maxStep} · epoch ${snapshot.epoch ?? 0} · mean loss ${loss}`;
}

export class LossChart {
  constructor() {
    this.snapshots = [];
    this.evaluations = [];
    this.totalSteps = 0;
    this.emptyMessage = "";
    this.selected = null;
    this.readoutId = `loss-readout-${Math.random().toString(36).slice(2)}`;
    this.svg = svg("svg", {
      class: "loss-chart",
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      tabindex: "0",
      "aria-describedby": this.readoutId,
      onpointermove: (event) => this.pointAt(event),
      onpointerleave: () => this.select(null),
      onkeydown: (event) => this.key(event),
      onblur: () => this.select(null),
    });
    this.readout = h("p", { class: "chart-readout", id: this.readoutId });
    // Says the picked point aloud when the arrow keys move; polls update the readout quietly.
    this.announcer = h("p", { class: "visually-hidden", "aria-live": "polite" });
    this.tableBody = h("tbody");
    this.tableSummary = h("summary");
    this.table = h(
      "details",
      { class: "loss-table", ontoggle: () => this.renderTable() },
      this.tableSummary,
      h(
        "div",
        { class: "table-scroll" },
        h(
          "table",
          {},
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Step", "Epoch", "Mean loss", "Computed at"].map((t) => h("th", { scope: "col" }, t)),
            ),
          ),
          this.tableBody,
        ),
      ),
    );
    this.legend = h("p", { class: "chart-legend", hidden: true });
    this.element = h(
      "figure",
      { class: "chart" },
      this.legend,
      this.svg,
      this.readout,
      this.announcer,
      this.table,
    );
  }

  /** New data from a poll; `emptyMessage` says why there are no points yet. */
  update(snapshots, totalSteps, emptyMessage, evaluations = []) {
    this.snapshots = snapshots;
    this.evaluations = evaluations;
    this.legend.hidden = !evaluations.length;
    this.legend.replaceChildren(
      h("span", { class: "legend-training" }, "training loss (per step)"),
      h("span", { class: "legend-validation" }, "validation loss"),
    );
    this.totalSteps = totalSteps;
    this.emptyMessage = emptyMessage;
    if (this.selected !== null && this.selected >= snapshots.length) this.selected = null;
    this.render();
    this.renderTable();
  }

  select(index) {
    if (index === this.selected) return;
    this.selected = index;
    this.render();
  }

  pointAt(event) {
    if (!this.snapshots.length) return;
    const matrix = this.svg.getScreenCTM();
    if (!matrix) return;
    const local = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse());
    const distance = (snapshot) => Math.abs(this.x(snapshot.step) - local.x);
    let nearest = 0;
    this.snapshots.forEach((snapshot, index) => {
      if (distance(snapshot) < distance(this.snapshots[nearest])) nearest = index;
    });
    this.select(nearest);
  }

  key(event) {
    const last = this.snapshots.length - 1;
    if (last < 0) return;
    const current = this.selected ?? last;
    const moves = {
      ArrowLeft: Math.max(0, current - 1),
      ArrowRight: Math.min(last, current + 1),
      Home: 0,
      End: last,
    };
    if (event.key in moves) {
      event.preventDefault();
      this.select(moves[event.key]);
      this.announcer.textContent = this.readout.textContent;
    } else if (event.key === "Escape") {
      this.select(null);
    }
  }

  get maxStep() {
    return Math.max(this.totalSteps || 0, this.snapshots.at(-1)?.step ?? 0, 1);
  }

  /** Steps sit half a step in from each edge, so a one-step run still shows its point. */
  x(step) {
    return PLOT.left + ((step - 0.5) / this.maxStep) * (PLOT.right - PLOT.left);
  }

  render() {
    const snapshots = this.snapshots;
    const frame = svg("rect", {
      class: "plot-area",
      x: PLOT.left,
      y: PLOT.top,
      width: PLOT.right - PLOT.left,
      height: PLOT.bottom - PLOT.top,
    });
    if (!snapshots.length) {
      this.svg.replaceChildren(
        frame,
        svg(
          "text",
          { class: "empty-message", x: (PLOT.left + PLOT.right) / 2, y: (PLOT.top + PLOT.bottom) / 2 },
          this.emptyMessage,
        ),
      );
      this.svg.setAttribute("aria-label", `Training loss: ${this.emptyMessage}`);
      this.svg.dataset.points = "0";
      this.readout.textContent = this.emptyMessage;
      return;
    }
    const validation = this.evaluations;
    const scale = lossScale([
      ...snapshots.map((s) => s.meanLoss),
      ...validation.map((e) => e.validationLoss),
    ]);
    const y = (loss) =>
      PLOT.bottom - ((loss - scale.low) / (scale.high - scale.low)) * (PLOT.bottom - PLOT.top);
    const radius = snapshots.length <= 60 ? 4 : snapshots.length <= 300 ? 2.5 : 1.5;
    const ends = epochEnds(snapshots);
    const labelEvery = Math.ceil(ends.length / MAX_EPOCH_LABELS);
    const selected = this.selected === null ? null : snapshots[this.selected];

    const layers = [
      frame,
      scale.ticks.map((tick) => [
        svg("line", { class: "grid", x1: PLOT.left, x2: PLOT.right, y1: y(tick), y2: y(tick) }),
        svg("text", { class: "tick y-tick", x: PLOT.left - 8, y: y(tick) }, scale.label(tick)),
      ]),
      stepTicks(this.maxStep).map((step) => [
        svg("line", {
          class: "tick-mark",
          x1: this.x(step),
          x2: this.x(step),
          y1: PLOT.bottom,
          y2: PLOT.bottom + 5,
        }),
        svg("text", { class: "tick x-tick", x: this.x(step), y: PLOT.bottom + 18 }, String(step)),
      ]),
      svg("text", { class: "axis-title", x: (PLOT.left + PLOT.right) / 2, y: HEIGHT - 6 }, "step"),
      svg(
        "text",
        {
          class: "axis-title y-title",
          x: 16,
          y: (PLOT.top + PLOT.bottom) / 2,
          transform: `rotate(-90 16 ${(PLOT.top + PLOT.bottom) / 2})`,
        },
        "mean loss",
      ),
      ends.map((end, index) => {
        const at = Math.min(this.x(end.step + 0.5), PLOT.right);
        return svg(
          "g",
          { class: "epoch-end" },
          svg("title", {}, `Epoch ${end.epoch} complete after step ${end.step}`),
          svg("line", { x1: at, x2: at, y1: PLOT.top, y2: PLOT.bottom }),
          (index + 1) % labelEvery === 0 || index === ends.length - 1
            ? svg("text", { x: at - 4, y: PLOT.top - 8 }, `epoch ${end.epoch}`)
            : null,
        );
      }),
      svg("path", {
        class: "loss-line",
        d: snapshots
          .map((s, i) => `${i ? "L" : "M"}${this.x(s.step).toFixed(1)},${y(s.meanLoss).toFixed(1)}`)
          .join(""),
      }),
      snapshots.map((s) =>
        svg("circle", { class: "point", cx: this.x(s.step), cy: y(s.meanLoss), r: radius }),
      ),
      validation.length
        ? svg("path", {
            class: "validation-line",
            d: validation
              .map((e, i) => `${i ? "L" : "M"}${this.x(e.step).toFixed(1)},${y(e.validationLoss).toFixed(1)}`)
              .join(""),
          })
        : null,
      validation.map((e) =>
        svg(
          "circle",
          { class: "validation-point", cx: this.x(e.step), cy: y(e.validationLoss), r: radius },
          svg("title", {}, `Step ${e.step}: validation loss ${formatLoss(e.validationLoss)}`),
        ),
      ),
      selected ? this.highlight(selected, y(selected.meanLoss), radius) : null,
    ];
    this.svg.replaceChildren(...layers.flat(Infinity).filter(Boolean));
    const latest = snapshots.at(-1);
    const progress = `${snapshots.length} of ${this.maxStep} steps`;
    this.svg.dataset.points = String(snapshots.length);
    this.svg.setAttribute(
      "aria-label",
      `Training loss: ${progress}, latest mean loss ${formatLoss(latest.meanLoss)}. ` +
        "Arrow keys move between steps.",
    );
    this.readout.textContent = selected
      ? `Step ${describe(selected, this.maxStep)} · computed ${formatTime(selected.computeTime)}`
      : `Latest: step ${describe(latest, this.maxStep)}`;
  }

  /** A guide line, a bigger dot and the loss value at the picked point. */
  highlight(snapshot, atY, radius) {
    const atX = this.x(snapshot.step);
    const onRightHalf = atX > (PLOT.left + PLOT.right) / 2;
    return [
      svg("line", { class: "guide", x1: atX, x2: atX, y1: PLOT.top, y2: PLOT.bottom }),
      svg("circle", { class: "point selected", cx: atX, cy: atY, r: radius + 3 }),
      svg(
        "text",
        {
          class: "point-label",
          x: onRightHalf ? atX - 10 : atX + 10,
          y: Math.max(atY - 10, PLOT.top + 12),
          "text-anchor": onRightHalf ? "end" : "start",
        },
        formatLoss(snapshot.meanLoss),
      ),
    ];
  }

  renderTable() {
    this.tableSummary.textContent = `Loss per step as a table (${plural(this.snapshots.length, "step")})`;
    if (!this.table.open) return;
    this.tableBody.replaceChildren(
      ...this.snapshots.map((s) =>
        h(
          "tr",
          {},
          h("td", {}, String(s.step)),
          h("td", {}, String(s.epoch ?? 0)),
          h("td", {}, formatLoss(s.meanLoss)),
          h("td", {}, formatTime(s.computeTime)),
        ),
      ),
    );
  }
}
