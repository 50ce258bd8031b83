// Usage charts: tokens debited per local day by model over a chosen range, from SummarizeUsage
// grouped by DAY and MODEL. One on the user page (that user) and one on the Usage page (every
// user); both are the same component, told apart by their testid prefix.
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import uPlot from "uplot";
import { UsageGroup, type UsageSummaryRow } from "./gen/tokenledger/v1/ledger_pb";
import { callError, ledger } from "./client";
import { button, cell, el, input, show, tokens } from "./dom";

const DAY_MS = 86_400_000;
const QUARTER_HOUR_MS = 900_000;
/// The range shown when a chart opens: the last 30 local days, today included.
const DEFAULT_DAYS = 30;
/// SummarizeUsage's longest window (`to` at most 366 days after `from`).
const RANGE_DAYS_MAX = 366;
/// SummarizeUsage's largest page; 366 days of a handful of models fit in one or two.
const SUMMARY_PAGE_SIZE = 1_000;
/// The chart stops (and says so) past this many pages: 20,000 day-and-model groups is far more
/// than a bar chart can show.
const SUMMARY_PAGES_MAX = 20;
const CHART_HEIGHT = 280;
const NO_MODEL = "(no model)";
const PALETTE = ["#2f5bd3", "#137a3f", "#b26b00", "#8e3bb5", "#c2185b", "#00838f", "#5d4037", "#607d8b", "#9e9d24", "#d84315"];

/** The browser's IANA time zone: the default of every chart. */
export function browserTimeZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  } catch {
    return "UTC";
  }
}

function validTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

const wallFormats = new Map<string, Intl.DateTimeFormat>();

// The wall-clock time in `tz` at the instant `ms`, read as if it were UTC (whole seconds).
function wall(ms: number, tz: string): number {
  let f = wallFormats.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone: tz,
      hourCycle: "h23",
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
    });
    wallFormats.set(tz, f);
  }
  const p: Record<string, string> = {};
  for (const part of f.formatToParts(new Date(ms))) p[part.type] = part.value;
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second);
}

// `tz`'s offset from UTC at the instant `ms`.
function offset(ms: number, tz: string): number {
  const whole = Math.floor(ms / 1000) * 1000;
  return wall(whole, tz) - whole;
}

/**
 * The instant the local day `day` (its date as a UTC midnight, in ms) starts in `tz`: its
 * midnight, or, where a DST change skips midnight, the first instant of that day. The offsets in
 * force around the day are tried and the earliest instant whose local date is that day wins (a
 * day whose midnight happens twice starts at the first). Rounded down to a quarter hour, as
 * SummarizeUsage requires; every zone's offset today is a multiple of 15 minutes, so it is exact.
 */
export function localDayStart(day: number, tz: string): number {
  let best = Number.POSITIVE_INFINITY;
  for (const probe of [day - 1.5 * DAY_MS, day, day + 1.5 * DAY_MS]) {
    const candidate = day - offset(probe, tz);
    const w = wall(candidate, tz);
    if (w >= day && w < day + DAY_MS && candidate < best) best = candidate;
  }
  if (!Number.isFinite(best)) best = day - offset(day, tz);
  return Math.floor(best / QUARTER_HOUR_MS) * QUARTER_HOUR_MS;
}

// "YYYY-MM-DD" → that date as a UTC midnight in ms (a day number, not an instant), or null.
function parseDay(value: string): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
  return m ? Date.UTC(+m[1], +m[2] - 1, +m[3]) : null;
}

const dayString = (day: number) => new Date(day).toISOString().slice(0, 10);

function todayIn(tz: string): number {
  const w = wall(Date.now(), tz);
  return w - (((w % DAY_MS) + DAY_MS) % DAY_MS);
}

let zonesListed = false;

// The datalist the time zone inputs offer (typing any IANA name works too).
function listTimeZones(): void {
  if (zonesListed) return;
  zonesListed = true;
  const supported = (Intl as unknown as { supportedValuesOf?: (k: string) => string[] }).supportedValuesOf;
  const zones = new Set(["UTC", browserTimeZone(), ...(supported ? supported("timeZone") : [])]);
  const list = document.getElementById("time-zones");
  list?.replaceChildren(
    ...Array.from(zones, (z) => {
      const o = document.createElement("option");
      o.value = z;
      return o;
    }),
  );
}

interface ModelSums {
  model: string;
  events: bigint;
  tokens: bigint;
  input: bigint;
  cacheRead: bigint;
  cacheWrite: bigint;
  output: bigint;
}

export interface UsageChart {
  /** Back to the default range (the last 30 days) in the browser's zone, and empty. */
  reset(): void;
  /** Reads the range from the form and draws it. */
  load(): Promise<void>;
  resize(): void;
  /** Forgets what is shown (sign-out). */
  clear(): void;
}

/**
 * A usage chart whose elements carry testids `${prefix}-…` (see index.html); `userId` says
 * whose usage (empty: every user's).
 */
export function usageChart(prefix: string, userId: () => string): UsageChart {
  const id = (s: string) => `${prefix}-${s}`;
  let seq = 0;
  let plot: uPlot | null = null;

  function inlineError(text: string, code = ""): void {
    const e = el(id("error"));
    e.textContent = text;
    if (code) e.dataset.code = code;
    else delete e.dataset.code;
    show(e, text !== "");
  }

  function clear(): void {
    seq++;
    plot?.destroy();
    plot = null;
    const box = el(id("chart"));
    for (const k of Object.keys(box.dataset)) if (k !== "testid") delete box.dataset[k];
    el(id("models-table")).querySelector("tbody")!.replaceChildren();
    el(id("table")).querySelector("tbody")!.replaceChildren();
    show(el(id("empty")), false);
    el(id("status")).textContent = "";
    inlineError("");
  }

  function reset(): void {
    listTimeZones();
    clear();
    const tz = browserTimeZone();
    const today = todayIn(tz);
    input(id("tz")).value = tz;
    input(id("to")).value = dayString(today);
    input(id("from")).value = dayString(today - (DEFAULT_DAYS - 1) * DAY_MS);
  }

  async function load(): Promise<void> {
    if (!input(id("tz")).value) reset();
    inlineError("");
    const tz = input(id("tz")).value.trim();
    if (!validTimeZone(tz)) return inlineError(`Unknown time zone "${tz}": use an IANA name such as Europe/Berlin or UTC.`);
    const first = parseDay(input(id("from")).value);
    const last = parseDay(input(id("to")).value);
    if (first === null || last === null) return inlineError("Choose a from and a to day.");
    if (first > last) return inlineError("The 'from' day is after the 'to' day.");
    const days = (last - first) / DAY_MS + 1;
    if (days > RANGE_DAYS_MAX) return inlineError(`At most ${RANGE_DAYS_MAX} days at a time.`);
    // Local midnights, as UTC instants: `to` is the midnight after the last day (exclusive).
    const from = localDayStart(first, tz);
    const to = localDayStart(last + DAY_MS, tz);
    const mine = ++seq;
    const btn = button(id("apply"));
    btn.disabled = true;
    el(id("status")).textContent = "loading…";
    try {
      const rows: UsageSummaryRow[] = [];
      let pageToken = "";
      let pages = 0;
      do {
        if (pages === SUMMARY_PAGES_MAX) {
          if (mine === seq) inlineError(`More than ${SUMMARY_PAGES_MAX * SUMMARY_PAGE_SIZE} day-and-model groups: choose a shorter range.`);
          return;
        }
        const res = await ledger.summarizeUsage({
          userId: userId(),
          from: timestampFromDate(new Date(from)),
          to: timestampFromDate(new Date(to)),
          timeZone: tz,
          groupBy: [UsageGroup.DAY, UsageGroup.MODEL],
          pageSize: SUMMARY_PAGE_SIZE,
          pageToken,
        });
        if (mine !== seq) return;
        rows.push(...res.rows);
        pageToken = res.nextPageToken;
        pages++;
      } while (pageToken);
      render(rows, first, last, tz, from, to);
    } catch (err) {
      if (mine !== seq) return;
      const e = callError(err);
      clear();
      inlineError(`${e.code}: ${e.message}`, e.code);
    } finally {
      if (mine === seq) {
        btn.disabled = false;
        if (el(id("status")).textContent === "loading…") el(id("status")).textContent = "";
      }
    }
  }

  function render(rows: UsageSummaryRow[], first: number, last: number, tz: string, from: number, to: number): void {
    const dayList: string[] = [];
    for (let d = first; d <= last; d += DAY_MS) dayList.push(dayString(d));
    const dayIndex = new Map(dayList.map((d, i) => [d, i]));

    const sums = new Map<string, ModelSums>();
    for (const r of rows) {
      const model = r.model || NO_MODEL;
      let s = sums.get(model);
      if (!s) sums.set(model, (s = { model, events: 0n, tokens: 0n, input: 0n, cacheRead: 0n, cacheWrite: 0n, output: 0n }));
      s.events += r.events;
      s.tokens += r.tokens;
      s.input += r.inputTokens;
      s.cacheRead += r.cacheReadTokens;
      s.cacheWrite += r.cacheWriteTokens;
      s.output += r.outputTokens;
    }
    // The most used model at the bottom of each stack (and first in the table).
    const models = [...sums.values()].sort((a, b) => (a.tokens === b.tokens ? a.model.localeCompare(b.model) : a.tokens > b.tokens ? -1 : 1));
    const perDay = new Map(models.map((m) => [m.model, dayList.map(() => 0)]));
    for (const r of rows) {
      const i = dayIndex.get(r.day);
      if (i !== undefined) perDay.get(r.model || NO_MODEL)![i] += Number(r.tokens);
    }
    const partial = rows.filter((r) => r.partial);
    const total = models.reduce((s, m) => s + m.tokens, 0n);

    const box = el(id("chart"));
    box.dataset.models = JSON.stringify(models.map((m) => m.model));
    box.dataset.series = String(models.length);
    box.dataset.total = total.toString();
    box.dataset.days = String(dayList.length);
    box.dataset.timeZone = tz;
    box.dataset.from = new Date(from).toISOString();
    box.dataset.to = new Date(to).toISOString();
    box.dataset.partial = String(partial.length);
    el(id("status")).textContent =
      `${tokens(total)} tokens in ${dayList.length} ${dayList.length === 1 ? "day" : "days"} (${tz}; ` +
      `${new Date(from).toISOString().slice(0, 16).replace("T", " ")} to ${new Date(to).toISOString().slice(0, 16).replace("T", " ")} UTC)` +
      (partial.length ? `; ${partial.length} partial (a day cut by the range: it holds only part of that day)` : "");

    el(id("models-table")).querySelector("tbody")!.replaceChildren(
      ...models.map((m, i) => {
        const row = document.createElement("tr");
        row.dataset.testid = id("model-row");
        row.dataset.model = m.model;
        const name = cell(row, m.model, id("model"), "wrap");
        const swatch = document.createElement("span");
        swatch.className = `swatch swatch-${i % PALETTE.length}`;
        name.prepend(swatch);
        for (const [k, n] of [
          ["events", m.events],
          ["tokens", m.tokens],
          ["input", m.input],
          ["cache-read", m.cacheRead],
          ["cache-write", m.cacheWrite],
          ["output", m.output],
        ] as const) {
          cell(row, tokens(n), id(`model-${k}`), "num").dataset.value = n.toString();
        }
        return row;
      }),
    );
    el(id("table")).querySelector("tbody")!.replaceChildren(
      ...rows.map((r) => {
        const row = document.createElement("tr");
        row.dataset.testid = id("row");
        row.dataset.day = r.day;
        row.dataset.model = r.model || NO_MODEL;
        row.dataset.partial = String(r.partial);
        if (r.partial) row.className = "partial";
        cell(row, r.day, id("row-day"));
        cell(row, r.model || NO_MODEL, id("row-model"), "wrap");
        cell(row, r.events.toString(), id("row-events"), "num").dataset.value = r.events.toString();
        cell(row, tokens(r.tokens), id("row-tokens"), "num").dataset.value = r.tokens.toString();
        cell(row, r.partial ? "partial" : "", id("row-partial"), "changed");
        return row;
      }),
    );
    show(el(id("empty")), rows.length === 0);
    draw(models, perDay, dayList, first, tz);
  }

  // Stacked bars, one series per model: each series is drawn at its running total (the stack up
  // to and including it), the tallest first, so every later (lower) one paints over its part.
  // The legend and the hover show each model's own tokens, not the running total.
  function draw(models: ModelSums[], perDay: Map<string, number[]>, dayList: string[], first: number, tz: string): void {
    const box = el(id("chart"));
    plot?.destroy();
    plot = null;
    if (models.length === 0) return;
    const xs = dayList.map((_, i) => localDayStart(first + i * DAY_MS, tz) / 1000);
    const running: number[][] = [];
    let acc = dayList.map(() => 0);
    for (const m of models) {
      acc = acc.map((v, i) => v + perDay.get(m.model)![i]);
      running.push(acc);
    }
    const order = models.map((_, i) => i).reverse();
    const bars = uPlot.paths.bars!({ size: [0.7, 48] });
    const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
    const series: uPlot.Series[] = [
      { label: `day (${tz})`, value: (_u, v) => (v == null ? "" : dayList[xs.indexOf(v)] ?? "") },
      ...order.map((i): uPlot.Series => {
        const color = PALETTE[i % PALETTE.length];
        const own = perDay.get(models[i].model)!;
        return {
          label: models[i].model,
          stroke: color,
          fill: color,
          width: 0,
          paths: bars,
          points: { show: false },
          value: (_u, _v, _si, idx) => (idx == null ? "" : tokens(BigInt(own[idx]))),
        };
      }),
    ];
    plot = new uPlot(
      {
        width: Math.max(box.clientWidth, 320),
        height: CHART_HEIGHT,
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), tz),
        scales: {
          x: { time: true, range: (_u, min, max) => [min - 43_200, max + 43_200] },
          y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
        },
        series,
        axes: [{}, { size: 60, values: (_u, ticks) => ticks.map((t) => compact.format(t)) }],
        legend: { live: true },
      },
      [xs, ...order.map((i) => running[i])],
      box,
    );
  }

  function resize(): void {
    const box = el(id("chart"));
    if (plot && box.clientWidth > 0) plot.setSize({ width: box.clientWidth, height: CHART_HEIGHT });
  }

  el<HTMLFormElement>(id("form")).addEventListener("submit", (e) => {
    e.preventDefault();
    void load();
  });
  return { reset, load, resize, clear };
}
