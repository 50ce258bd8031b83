// The Models page: each model's price versions (ListModelPrices) and a form that adds one
// (SetModelPrice). Rates are product tokens per million tokens of each class.
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { LongContextTier, ModelPrice, ModelRates } from "./gen/tokenledger/v1/ledger_pb";
import { callError, ledger, newIdempotencyKey } from "./client";
import { button, cell, clearError, el, input, show, showError, showResult, time, tokens } from "./dom";

/// SetModelPrice's most tiers per version.
const TIERS_MAX = 8;
const INT64_MAX = 9_223_372_036_854_775_807n;
const RATE_FIELDS = [
  ["input", "inputPerMillion"],
  ["cache-read", "cacheReadPerMillion"],
  ["cache-write", "cacheWritePerMillion"],
  ["output", "outputPerMillion"],
] as const;

type RatesInit = Pick<ModelRates, "inputPerMillion" | "cacheReadPerMillion" | "cacheWritePerMillion" | "outputPerMillion">;

const prices = { seq: 0 };

// The key of a submission whose outcome is unknown (network error, timeout): submitting the same
// price again reuses it, so the version is added at most once. Anything else gets a fresh key.
let pending: { fingerprint: string; key: string } | null = null;

function ratesText(r: ModelRates | undefined): string {
  if (!r) return "";
  return `in ${tokens(r.inputPerMillion)} · cache read ${tokens(r.cacheReadPerMillion)} · cache write ${tokens(r.cacheWritePerMillion)} · out ${tokens(r.outputPerMillion)}`;
}

function tierText(t: LongContextTier): string {
  return `above ${tokens(t.aboveInputTokens)} prompt tokens: ${ratesText(t.rates)}`;
}

const seconds = (ts: Timestamp | undefined) => (ts ? Number(ts.seconds) + ts.nanos / 1e9 : 0);

// "in force", "scheduled" (starts after the version in force, or after now when none is) or
// "superseded". The ledger marks the one in force; comparing with it, not with this browser's
// clock, keeps a skewed clock from mislabelling a version.
function states(list: ModelPrice[]): Map<ModelPrice, string> {
  const current = new Map(list.filter((p) => p.current).map((p) => [p.model, seconds(p.effectiveFrom)]));
  const now = Date.now() / 1000;
  return new Map(
    list.map((p) => {
      if (p.current) return [p, "in force"];
      return [p, seconds(p.effectiveFrom) > (current.get(p.model) ?? now) ? "scheduled" : "superseded"];
    }),
  );
}

export async function loadPrices(): Promise<void> {
  const seq = ++prices.seq;
  const btn = button("prices-refresh");
  btn.disabled = true;
  try {
    const res = await ledger.listModelPrices({
      model: input("prices-model").value.trim(),
      includeHistory: input("prices-history").checked,
    });
    if (seq !== prices.seq) return;
    const state = states(res.prices);
    el("prices-table").querySelector("tbody")!.replaceChildren(...res.prices.map((p) => priceRow(p, state.get(p)!)));
    show(el("prices-empty"), res.prices.length === 0);
  } catch (err) {
    if (seq === prices.seq) showError("Model prices", callError(err));
  } finally {
    if (seq === prices.seq) btn.disabled = false;
  }
}

function priceRow(p: ModelPrice, state: string): HTMLTableRowElement {
  const row = document.createElement("tr");
  row.dataset.testid = "price-row";
  row.dataset.priceId = p.priceId;
  row.dataset.model = p.model;
  row.dataset.state = state.replace(" ", "-");
  row.className = `price-${state.replace(" ", "-")}`;
  cell(row, p.model, "price-model", "wrap");
  cell(row, state, "price-state", "kind");
  const from = cell(row, time(p.effectiveFrom), "price-effective-from");
  if (p.effectiveFrom) from.dataset.at = timestampDate(p.effectiveFrom).toISOString();
  const r = p.rates;
  for (const [name, key] of RATE_FIELDS) {
    const n = r ? r[key] : 0n;
    cell(row, tokens(n), `price-${name}`, "num").dataset.value = n.toString();
  }
  const tiers = cell(row, "", "price-tiers", "details");
  tiers.dataset.tiers = JSON.stringify(
    p.tiers.map((t) => [t.aboveInputTokens, ...RATE_FIELDS.map(([, k]) => t.rates?.[k] ?? 0n)].map(String)),
  );
  for (const t of p.tiers) {
    const line = document.createElement("div");
    line.textContent = tierText(t);
    tiers.append(line);
  }
  cell(row, p.priceId, "price-id", "id");
  cell(row, p.createdBy, "price-created-by", "wrap");
  cell(row, time(p.createdAt), "price-created-at");
  return row;
}

// ---- the form ----------------------------------------------------------------------------------

function addTier(): void {
  const box = el("set-price-tiers");
  if (box.children.length >= TIERS_MAX) return;
  const row = document.createElement("div");
  row.className = "tier-row";
  row.dataset.testid = "tier-row";
  const field = (label: string, testid: string) => {
    const l = document.createElement("label");
    l.textContent = `${label} `;
    const i = document.createElement("input");
    i.type = "text";
    i.inputMode = "numeric";
    i.autocomplete = "off";
    i.placeholder = testid === "tier-above" ? "prompt tokens" : "per million";
    i.dataset.testid = testid;
    l.append(i);
    row.append(l);
  };
  field("above", "tier-above");
  field("input", "tier-input");
  field("cache read", "tier-cache-read");
  field("cache write", "tier-cache-write");
  field("output", "tier-output");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "secondary";
  remove.textContent = "Remove";
  remove.dataset.testid = "tier-remove";
  remove.addEventListener("click", () => {
    row.remove();
    updateTierButton();
  });
  row.append(remove);
  box.append(row);
  updateTierButton();
  (row.querySelector("input") as HTMLInputElement).focus();
}

function updateTierButton(): void {
  button("set-price-add-tier").disabled = el("set-price-tiers").children.length >= TIERS_MAX;
}

// A whole number 0…2^63-1 (thousands separators allowed), or why not.
function parseCount(raw: string, what: string): bigint | string {
  const s = raw.replace(/[\s,_]/g, "");
  if (!/^\d+$/.test(s)) return `${what} must be a whole number`;
  const n = BigInt(s);
  return n > INT64_MAX ? `${what} is too large` : n;
}

function parseRates(scope: ParentNode, prefix: string, what: string): RatesInit | string {
  const out: Partial<RatesInit> = {};
  for (const [name, key] of RATE_FIELDS) {
    const node = scope.querySelector<HTMLInputElement>(`[data-testid="${prefix}-${name}"]`)!;
    const n = parseCount(node.value, `${what} ${name.replace("-", " ")} rate`);
    if (typeof n === "string") return n;
    out[key] = n;
  }
  return out as RatesInit;
}

function effectiveFromInput(): Date | null | string {
  const v = input("set-price-effective-from").value;
  if (!v) return null;
  // datetime-local has no zone: `new Date` reads it in the browser's, which is what was meant.
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? "effective from is not a date and time" : d;
}

function showEffectiveHint(): void {
  const d = effectiveFromInput();
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  el("set-price-effective-hint").textContent =
    d instanceof Date
      ? `= ${d.toISOString().slice(0, 16).replace("T", " ")} UTC (read in your time zone, ${zone}); never in the past.`
      : `Empty: now. In your time zone (${zone}), sent as UTC; never in the past.`;
}

function formError(text: string, code = "", fields: string[] = []): void {
  const box = el("set-price-error");
  box.textContent = text;
  show(box, text !== "");
  if (code) box.dataset.code = code;
  else delete box.dataset.code;
  if (fields.length) box.dataset.fields = fields.join(",");
  else delete box.dataset.fields;
  // Mark what the ledger refused: the inputs whose data-field is a refused field.
  for (const node of el("set-price-form").querySelectorAll<HTMLElement>("[data-field]")) {
    const bad = fields.includes(node.dataset.field!);
    node.classList.toggle("invalid", bad);
    if (bad) node.setAttribute("aria-invalid", "true");
    else node.removeAttribute("aria-invalid");
  }
}

async function submitPrice(): Promise<void> {
  formError("");
  clearError();
  const model = input("set-price-model").value.trim();
  if (!model) return formError("Enter a model, as usage reports it (e.g. gpt-4o).", "", ["model"]);
  const rates = parseRates(el("set-price-form"), "set-price", "the");
  if (typeof rates === "string") return formError(rates, "", ["rates"]);
  const tiers: { aboveInputTokens: bigint; rates: RatesInit }[] = [];
  for (const [i, row] of Array.from(el("set-price-tiers").children).entries()) {
    const above = parseCount(row.querySelector<HTMLInputElement>('[data-testid="tier-above"]')!.value, `tier ${i + 1}: above`);
    if (typeof above === "string") return formError(above, "", ["tiers"]);
    const r = parseRates(row, "tier", `tier ${i + 1}:`);
    if (typeof r === "string") return formError(r, "", ["tiers"]);
    tiers.push({ aboveInputTokens: above, rates: r });
  }
  const from = effectiveFromInput();
  if (typeof from === "string") return formError(from, "", ["effective_from"]);

  const fingerprint = JSON.stringify([model, rates, tiers, from?.toISOString() ?? ""], (_k, v) => (typeof v === "bigint" ? v.toString() : v));
  let p = pending;
  if (!p || p.fingerprint !== fingerprint) p = { fingerprint, key: newIdempotencyKey() };
  pending = p;

  const btn = button("set-price-submit");
  btn.disabled = true;
  showResult("");
  try {
    const res = await ledger.setModelPrice({
      model,
      rates,
      tiers,
      effectiveFrom: from ? timestampFromDate(from) : undefined,
      idempotencyKey: p.key,
    });
    if (pending === p) pending = null;
    const price = res.price!;
    showResult(
      `price ${price.priceId} of ${price.model}, ${from ? "scheduled" : "in force"} from ${time(price.effectiveFrom)} UTC` +
        (res.replayed ? " (replayed: nothing changed)" : ""),
    );
    el("op-result").dataset.priceId = price.priceId;
    delete el("op-result").dataset.txId;
    delete el("op-result").dataset.balance;
    el<HTMLFormElement>("set-price-form").reset();
    el("set-price-tiers").replaceChildren();
    updateTierButton();
    showEffectiveHint();
    await loadPrices();
  } catch (err) {
    const e = callError(err);
    if (!e.uncertain && pending === p) pending = null;
    const why = e.fields.map((f) => `${f.field}: ${f.description}`).join("; ");
    formError(
      `${e.code}: ${e.message}` +
        (why && !e.message.includes(why) ? ` (${why})` : "") +
        (e.uncertain ? ` (outcome unknown: submitting again reuses idempotency key ${p.key})` : ""),
      e.code,
      e.fields.map((f) => f.field),
    );
  } finally {
    btn.disabled = false;
  }
}

export function wireModels(): void {
  el<HTMLFormElement>("prices-form").addEventListener("submit", (e) => {
    e.preventDefault();
    clearError();
    void loadPrices();
  });
  input("prices-history").addEventListener("change", () => void loadPrices());
  el<HTMLFormElement>("set-price-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void submitPrice();
  });
  button("set-price-add-tier").addEventListener("click", addTier);
  input("set-price-effective-from").addEventListener("input", showEffectiveHint);
  el("set-price-form").addEventListener("input", () => {
    if (!el("set-price-error").hidden) formError("");
  });
  showEffectiveHint();
}

/** Sign-out: nothing of the last session stays on the page. */
export function clearModels(): void {
  prices.seq++;
  pending = null;
  el("prices-table").querySelector("tbody")!.replaceChildren();
  show(el("prices-empty"), false);
  el<HTMLFormElement>("set-price-form").reset();
  el("set-price-tiers").replaceChildren();
  formError("");
}
