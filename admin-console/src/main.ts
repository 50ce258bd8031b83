// The admin console: sign in, find accounts, look at one user's balance, holds, lots and history,
// add or deduct tokens, release a hold, reverse a credit, export the history as CSV; find a
// transaction by id or payment intent; browse the Stripe events; the ledger's overview; usage per
// day by model (a user's and everyone's); model prices. Plain DOM;
// every element is found by its data-testid (see index.html).
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import uPlot from "uplot";
import {
  AccountOrder,
  GrantSource,
  HoldState,
  LotSource,
  ReversalSource,
  TransactionKind,
  type Account,
  type GetBalanceResponse,
  type GetOverviewResponse,
  type GetTransactionResponse,
  type Hold,
  type Lot,
  type StripeEvent,
  type Transaction,
} from "./gen/tokenledger/v1/ledger_pb";
import { button, cell, clearError, el, input, setNumber, show, showError, showResult, time, tokens } from "./dom";
import {
  callError,
  ledger,
  newIdempotencyKey,
  setCredential,
  storeCredential,
  storedCredential,
} from "./client";
import { clearModels, loadPrices, wireModels } from "./models";
import { usageChart } from "./usage";

const PAGE_SIZE = 50;
const MAX_TOKENS = 1_000_000_000_000n;
/// ListTransactions' largest page: the CSV export pages through the whole history with it.
const EXPORT_PAGE_SIZE = 500;
/// The export stops (and says so) past this many pages (1,000,000 rows): the rows are kept in
/// memory until the download, and a browser tab has only so much of it.
const EXPORT_PAGES_MAX = 2_000;
/// ListStripeEvents' largest page: the transaction view looks for the events that produced the
/// transaction among the user's newest this many.
const TX_EVENTS_SCAN_MAX = 500;
/// How many top users the overview asks for.
const OVERVIEW_TOP_USERS = 10;

/// Usage per day by model: the open user's (on the user page) and every user's (the Usage page).
const userUsage = usageChart("user-usage", () => user.id);
const allUsage = usageChart("usage", () => "");

function signedTokens(n: bigint): string {
  return n > 0n ? `+${tokens(n)}` : tokens(n);
}

/** An enum value's name as the proto spells it, lower-cased ("grant", "refund"): the same
 *  string the ledger's domain uses (a Rust test checks the domain names against the proto's). */
function protoName(names: Record<number, string>, value: number): string | undefined {
  return names[value]?.toLowerCase();
}

function details(tx: Transaction): string {
  const d = tx.details;
  switch (d.case) {
    case "grant":
      return d.value.source === GrantSource.ANNUAL_SUBSCRIPTION
        ? `annual subscription ${d.value.stripeSubscriptionId} invoice ${d.value.stripeInvoiceId}`.trim()
        : "admin";
    case "deduction":
      return d.value.allowNegative ? "negative balance allowed" : "";
    case "purchase": {
      const v = d.value;
      const paid = `${(Number(v.amountPaidCents) / 100).toFixed(2)} ${v.currency}`;
      return [v.pack, paid, v.stripePaymentIntentId].filter(Boolean).join(" · ");
    }
    case "drip":
      return [d.value.stripeSubscriptionId, `${time(d.value.periodStart).slice(0, 10)} → ${time(d.value.periodEnd).slice(0, 10)}`]
        .filter(Boolean)
        .join(" · ");
    case "usage": {
      const v = d.value;
      return [v.model, v.feature, `in ${v.inputTokens} / out ${v.outputTokens}`, v.holdId && `hold ${v.holdId}`]
        .filter(Boolean)
        .join(" · ");
    }
    case "reversal":
      return [`of ${d.value.originalTransactionId}`, protoName(ReversalSource, d.value.source) ?? "", d.value.stripeReference]
        .filter(Boolean)
        .join(" · ");
    case "expiry": {
      const v = d.value;
      return [`lot ${v.lotId}`, v.carriedTokens > 0n && `${tokens(v.carriedTokens)} carried to lot ${v.carriedToLotId}`]
        .filter(Boolean)
        .join(" · ");
    }
    default:
      return "";
  }
}

// ---- sign in -----------------------------------------------------------------------------------

function jwtExpiry(credential: string): string {
  const parts = credential.split(".");
  if (parts.length !== 3) return "";
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? `expires ${new Date(exp * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC` : "";
  } catch {
    return "";
  }
}

function showSignedIn(signedIn: boolean): void {
  show(el("signin-panel"), !signedIn);
  show(el("console"), signedIn);
  show(el("whoami"), signedIn);
}

async function signIn(credential: string, quiet = false): Promise<void> {
  clearError();
  const btn = button("signin-button");
  btn.disabled = true;
  setCredential(credential);
  try {
    const me = await ledger.whoAmI({});
    storeCredential(credential);
    el("whoami-actor").textContent = me.actor;
    el("whoami-credential").textContent = [me.credential === "api_key" ? "api key" : me.credential, jwtExpiry(credential)]
      .filter(Boolean)
      .join(", ");
    el("whoami-scopes").textContent = me.scopes.join(", ") || "(none)";
    el<HTMLTextAreaElement>("credential-input").value = "";
    showSignedIn(true);
    await Promise.all([searchAccounts(false), routeFromHash()]);
  } catch (err) {
    setCredential("");
    storeCredential(null);
    showSignedIn(false);
    if (!quiet || callError(err).code !== "UNAUTHENTICATED") showError("Sign in", callError(err));
  } finally {
    btn.disabled = false;
  }
}

function signOut(): void {
  setCredential("");
  storeCredential(null);
  clearError();
  closeUser();
  closeReverse();
  txView.seq++;
  events.seq++;
  overview.seq++;
  for (const t of ["events-table", "tx-view-events-table", "top-users-table", "overview-days-table"]) {
    el(t).querySelector("tbody")!.replaceChildren();
  }
  chart?.destroy();
  chart = null;
  userUsage.clear();
  allUsage.clear();
  allUsageShown = false;
  clearModels();
  showView("accounts");
  el("accounts-table").querySelector("tbody")!.replaceChildren();
  show(el("accounts-more"), false);
  show(el("accounts-empty"), false);
  el("whoami-actor").textContent = "";
  el("whoami-scopes").textContent = "";
  el("whoami-credential").textContent = "";
  el<HTMLTextAreaElement>("credential-input").value = "";
  showSignedIn(false);
}

// ---- accounts ----------------------------------------------------------------------------------

const ORDERS: Record<string, AccountOrder> = {
  user_id: AccountOrder.USER_ID,
  balance: AccountOrder.BALANCE_DESC,
  activity: AccountOrder.LAST_ACTIVITY_DESC,
};

const accounts = { seq: 0, prefix: "", order: AccountOrder.USER_ID, nextPageToken: "" };

// `refresh`: the last search again from its first page (after a write changed a balance), whatever
// is typed in the form now.
async function searchAccounts(more: boolean, refresh = false): Promise<void> {
  if (!refresh) clearError();
  if (!more) {
    accounts.seq++;
    if (!refresh) {
      accounts.prefix = input("accounts-prefix").value.trim();
      accounts.order = ORDERS[el<HTMLSelectElement>("accounts-order").value] ?? AccountOrder.USER_ID;
    }
    accounts.nextPageToken = "";
  }
  const seq = accounts.seq;
  const btn = button(more ? "accounts-more" : "accounts-search");
  btn.disabled = true;
  try {
    const res = await ledger.listAccounts({
      userIdPrefix: accounts.prefix,
      orderBy: accounts.order,
      pageSize: PAGE_SIZE,
      pageToken: more ? accounts.nextPageToken : "",
    });
    if (seq !== accounts.seq) return;
    const body = el("accounts-table").querySelector("tbody")!;
    if (!more) body.replaceChildren();
    for (const a of res.accounts) body.append(accountRow(a));
    accounts.nextPageToken = res.nextPageToken;
    show(el("accounts-more"), res.nextPageToken !== "");
    show(el("accounts-empty"), body.rows.length === 0);
  } catch (err) {
    if (seq === accounts.seq) showError("Find accounts", callError(err));
  } finally {
    btn.disabled = false;
  }
}

function accountRow(a: Account): HTMLTableRowElement {
  const row = document.createElement("tr");
  row.dataset.testid = "account-row";
  row.dataset.userId = a.userId;
  row.tabIndex = 0;
  row.className = "clickable";
  cell(row, a.userId, "account-user-id", "wrap");
  cell(row, tokens(a.balance), "account-balance", a.balance < 0n ? "num negative" : "num").dataset.value = a.balance.toString();
  cell(row, a.transactionCount.toString(), "account-transaction-count", "num");
  cell(row, time(a.updatedAt).slice(0, 16), "account-updated-at", "", time(a.updatedAt));
  const open = () => void openUser(a.userId);
  row.addEventListener("click", open);
  row.addEventListener("keydown", (e) => {
    if (e.key === "Enter") open();
  });
  return row;
}

// ---- one user ----------------------------------------------------------------------------------

interface HistoryFilter {
  kinds: TransactionKind[];
  createdAfter?: Timestamp;
  createdBefore?: Timestamp;
}

const user = {
  id: "",
  seq: 0, // bumped when another user is opened: late answers for the previous one are dropped
  historySeq: 0, // bumped when the history restarts from its first page
  nextPageToken: "",
  filter: { kinds: [] } as HistoryFilter,
};

function closeUser(): void {
  user.id = "";
  user.seq++;
  user.historySeq++;
  show(el("user-view"), false);
  showResult("");
  pending.grant = pending.deduct = null;
  el("export-status").textContent = "";
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
}

async function openUser(id: string): Promise<void> {
  id = id.trim();
  if (!id) {
    showError("Open user", "Enter a user id.");
    return;
  }
  clearError();
  showView("accounts");
  user.id = id;
  user.seq++;
  pending.grant = pending.deduct = null;
  showResult("");
  el("export-status").textContent = "";
  el("user-id").textContent = id;
  for (const f of ["grant-tokens", "grant-reason", "deduct-tokens", "deduct-reason"]) input(f).value = "";
  input("deduct-allow-negative").checked = false;
  renderBalance(undefined);
  for (const t of ["history", "holds", "lots"]) {
    el(`${t}-table`).querySelector("tbody")!.replaceChildren();
    show(el(`${t}-empty`), false);
  }
  show(el("history-more"), false);
  userUsage.reset();
  show(el("user-view"), true);
  history.replaceState(null, "", `#user=${encodeURIComponent(id)}`);
  await refreshUser();
}

async function refreshUser(): Promise<void> {
  await Promise.all([loadBalance(), loadHolds(), loadLots(), loadHistory(false), userUsage.load()]);
}

function renderBalance(b: GetBalanceResponse | undefined): void {
  const balance = el("balance");
  if (!b) {
    balance.textContent = "…";
    delete balance.dataset.value;
    for (const t of ["granted", "purchased", "dripped", "deducted", "used", "reversed", "expired"]) {
      const node = el(`total-${t}`);
      node.textContent = "";
      delete node.dataset.value;
    }
    for (const t of ["held", "available", "transaction-count"]) {
      el(t).textContent = "";
      delete el(t).dataset.value;
    }
    const next = el("next-expiry");
    next.textContent = "";
    delete next.dataset.value;
    delete next.dataset.at;
    el("updated-at").textContent = "";
    return;
  }
  setNumber(balance, b.balance);
  const t = b.totals;
  setNumber(el("total-granted"), t?.granted ?? 0n);
  setNumber(el("total-purchased"), t?.purchased ?? 0n);
  setNumber(el("total-dripped"), t?.dripped ?? 0n);
  setNumber(el("total-deducted"), t?.deducted ?? 0n);
  setNumber(el("total-used"), t?.used ?? 0n);
  setNumber(el("total-reversed"), t?.reversed ?? 0n);
  setNumber(el("total-expired"), t?.expired ?? 0n);
  setNumber(el("held"), b.held);
  setNumber(el("available"), b.available);
  const next = el("next-expiry");
  if (b.nextExpiry?.at) {
    next.textContent = `${tokens(b.nextExpiry.tokens)} tokens at ${time(b.nextExpiry.at)}`;
    next.dataset.value = b.nextExpiry.tokens.toString();
    next.dataset.at = timestampDate(b.nextExpiry.at).toISOString();
  } else {
    next.textContent = "none";
    delete next.dataset.value;
    delete next.dataset.at;
  }
  setNumber(el("transaction-count"), b.transactionCount);
  el("updated-at").textContent = b.updatedAt ? time(b.updatedAt) : "never";
}

async function loadBalance(): Promise<void> {
  const seq = user.seq;
  try {
    const b = await ledger.getBalance({ userId: user.id });
    if (seq === user.seq) renderBalance(b);
  } catch (err) {
    if (seq === user.seq) showError("Balance", callError(err));
  }
}

// ListHolds and ListLots have no pages (ListHolds answers at most 1,000 holds; lots are the credits
// with tokens left): each list is shown whole, replaced on every refresh.
async function loadHolds(): Promise<void> {
  const seq = user.seq;
  try {
    const res = await ledger.listHolds({ userId: user.id, activeOnly: true });
    if (seq !== user.seq) return;
    const body = el("holds-table").querySelector("tbody")!;
    body.replaceChildren(...res.holds.map(holdRow));
    show(el("holds-empty"), res.holds.length === 0);
  } catch (err) {
    if (seq === user.seq) showError("Holds", callError(err));
  }
}

function holdRow(h: Hold): HTMLTableRowElement {
  const row = document.createElement("tr");
  row.dataset.testid = "hold-row";
  row.dataset.holdId = h.holdId;
  row.title = `hold ${h.holdId}`;
  cell(row, tokens(h.tokens), "hold-tokens", "num").dataset.value = h.tokens.toString();
  cell(row, time(h.expiresAt), "hold-expires-at");
  cell(row, h.model, "hold-model");
  cell(row, h.feature, "hold-feature");
  cell(row, time(h.placedAt), "hold-placed-at");
  const release = document.createElement("button");
  release.type = "button";
  release.textContent = "Release";
  release.dataset.testid = "hold-release";
  release.addEventListener("click", () => void releaseHold(h, release));
  const action = row.insertCell();
  action.className = "action";
  action.append(release);
  return row;
}

async function loadLots(): Promise<void> {
  const seq = user.seq;
  try {
    const res = await ledger.listLots({ userId: user.id, includeSpent: false });
    if (seq !== user.seq) return;
    const body = el("lots-table").querySelector("tbody")!;
    body.replaceChildren(...res.lots.map(lotRow));
    show(el("lots-empty"), res.lots.length === 0);
  } catch (err) {
    if (seq === user.seq) showError("Lots", callError(err));
  }
}

// Lots arrive in burn order: `index` is the lot's place in it, shown from 1.
function lotRow(l: Lot, index: number): HTMLTableRowElement {
  const row = document.createElement("tr");
  const source = protoName(LotSource, l.source) ?? `source ${l.source}`;
  row.dataset.testid = "lot-row";
  row.dataset.lotId = l.lotId;
  row.dataset.source = source;
  row.title = [`lot ${l.lotId}`, l.sourceTransactionId && `from transaction ${l.sourceTransactionId}`].filter(Boolean).join(", ");
  cell(row, String(index + 1), "lot-position", "num");
  const remaining = cell(row, `${tokens(l.remaining)} / ${tokens(l.granted)}`, "lot-remaining", "num");
  remaining.dataset.value = l.remaining.toString();
  remaining.dataset.granted = l.granted.toString();
  cell(row, tokens(l.held), "lot-held", "num").dataset.value = l.held.toString();
  // Unset: the lot never expires.
  cell(row, l.expiresAt ? time(l.expiresAt) : "never", "lot-expires-at");
  cell(row, l.priority.toString(), "lot-priority", "num");
  cell(row, source, "lot-source");
  cell(row, l.paid ? "paid" : "given", "lot-paid");
  cell(row, time(l.createdAt), "lot-created-at");
  return row;
}

async function releaseHold(h: Hold, btn: HTMLButtonElement): Promise<void> {
  // The call that placed the hold cannot commit it once released (HOLD_RELEASED): its usage would
  // go unrecorded, so the admin says yes first.
  const sure = confirm(
    `Release the hold of ${tokens(h.tokens)} tokens (${[h.model, h.feature].filter(Boolean).join(", ") || "no model"})?\n\n` +
      "The call that placed it can no longer commit it.",
  );
  if (!sure) return;
  clearError();
  showResult("");
  const seq = user.seq;
  btn.disabled = true;
  try {
    // ReleaseHold is idempotent (a hold that already ended answers its state): a retry needs no key.
    const res = await ledger.releaseHold({ holdId: h.holdId });
    if (seq !== user.seq) return;
    const state = protoName(HoldState, res.hold?.state ?? HoldState.UNSPECIFIED) ?? "in an unknown state";
    showResult(`hold ${h.holdId} ${state}, available ${tokens(res.available)}, balance ${tokens(res.balance)}`);
    const box = el("op-result");
    box.dataset.balance = res.balance.toString();
    delete box.dataset.txId;
    await refreshUser();
  } catch (err) {
    if (seq === user.seq) showError("Release hold", callError(err));
    btn.disabled = false;
  }
}

async function loadHistory(more: boolean): Promise<void> {
  if (!more) {
    user.historySeq++;
    user.nextPageToken = "";
  }
  const seq = user.seq;
  const historySeq = user.historySeq;
  const btn = button("history-more");
  btn.disabled = true;
  try {
    const res = await ledger.listTransactions({
      userId: user.id,
      pageSize: PAGE_SIZE,
      pageToken: more ? user.nextPageToken : "",
      kinds: user.filter.kinds,
      createdAfter: user.filter.createdAfter,
      createdBefore: user.filter.createdBefore,
    });
    if (seq !== user.seq || historySeq !== user.historySeq) return;
    const body = el("history-table").querySelector("tbody")!;
    if (!more) body.replaceChildren();
    for (const tx of res.transactions) body.append(historyRow(tx));
    user.nextPageToken = res.nextPageToken;
    show(el("history-more"), res.nextPageToken !== "");
    show(el("history-empty"), body.rows.length === 0);
  } catch (err) {
    if (seq === user.seq && historySeq === user.historySeq) showError("History", callError(err));
  } finally {
    btn.disabled = false;
  }
}

function historyRow(tx: Transaction): HTMLTableRowElement {
  const row = document.createElement("tr");
  const kind = protoName(TransactionKind, tx.kind) ?? `kind ${tx.kind}`;
  row.dataset.testid = "history-row";
  row.dataset.txId = tx.id;
  row.dataset.kind = kind;
  cell(row, tx.sequence.toString(), "tx-sequence", "num", `transaction ${tx.id}`);
  const idCell = row.insertCell();
  idCell.className = "id";
  idCell.append(linkButton(tx.id, "tx-id", () => void openTransaction(tx.id)));
  cell(row, kind, "tx-kind", `kind kind-${kind}`);
  cell(row, signedTokens(tx.tokenAmount), "tx-amount", tx.tokenAmount < 0n ? "num negative" : "num credit").dataset.value =
    tx.tokenAmount.toString();
  cell(row, tokens(tx.balanceAfter), "tx-balance-after", tx.balanceAfter < 0n ? "num negative" : "num").dataset.value =
    tx.balanceAfter.toString();
  cell(row, time(tx.createdAt), "tx-created-at");
  cell(row, tx.createdBy, "tx-created-by");
  cell(row, tx.reason, "tx-reason", "reason");
  cell(row, details(tx), "tx-details", "details", `transaction ${tx.id}, idempotency key ${tx.idempotencyKey}`);
  const action = row.insertCell();
  action.className = "action";
  if (isCredit(tx.kind)) {
    const reverse = document.createElement("button");
    reverse.type = "button";
    reverse.className = "reverse";
    reverse.textContent = "Reverse…";
    reverse.dataset.testid = "tx-reverse";
    reverse.addEventListener("click", () => void openReverse(tx.id, reverse));
    action.append(reverse);
  }
  return row;
}

// "YYYY-MM-DD" from a date input → that UTC day's midnight.
function utcDay(value: string, plusDays = 0): Timestamp | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
  if (!m) return undefined;
  return timestampFromDate(new Date(Date.UTC(+m[1], +m[2] - 1, +m[3] + plusDays)));
}

function applyFilters(): void {
  const kinds = Array.from(el("history-filters").querySelectorAll<HTMLInputElement>("fieldset input:checked"), (c) =>
    Number(c.value) as TransactionKind,
  );
  const from = input("filter-created-after").value;
  const to = input("filter-created-before").value;
  if (from && to && from > to) {
    showError("History", "The 'from' day is after the 'to' day.");
    return;
  }
  clearError();
  // "to" is inclusive: rows created before the next day's midnight.
  user.filter = { kinds, createdAfter: utcDay(from), createdBefore: utcDay(to, 1) };
  void loadHistory(false);
}

// ---- writes ------------------------------------------------------------------------------------

type Op = "grant" | "deduct";

// The idempotency key of a submission whose outcome is unknown (network error, timeout): retrying
// the same submission reuses it, so it is applied at most once. Anything else gets a fresh key.
const pending: Record<Op, { fingerprint: string; key: string } | null> = { grant: null, deduct: null };

function parseTokens(raw: string): bigint | string {
  const s = raw.replace(/[\s,_]/g, "");
  if (!/^\d+$/.test(s)) return "tokens must be a whole number";
  const n = BigInt(s);
  if (n < 1n || n > MAX_TOKENS) return "tokens must be between 1 and 1,000,000,000,000";
  return n;
}

async function submit(op: Op): Promise<void> {
  const context = op === "grant" ? "Add tokens" : "Deduct tokens";
  clearError();
  const userId = user.id;
  const amount = parseTokens(input(`${op}-tokens`).value);
  if (typeof amount === "string") return showError(context, amount);
  const reason = input(`${op}-reason`).value.trim();
  if (!reason) return showError(context, "A reason is required.");
  const allowNegative = op === "deduct" && input("deduct-allow-negative").checked;

  const fingerprint = JSON.stringify([userId, amount.toString(), reason, allowNegative]);
  let p = pending[op];
  if (!p || p.fingerprint !== fingerprint) p = { fingerprint, key: newIdempotencyKey() };
  pending[op] = p;

  const seq = user.seq;
  const btn = button(`${op}-submit`);
  btn.disabled = true;
  showResult("");
  try {
    const res =
      op === "grant"
        ? await ledger.grant({ userId, tokens: amount, idempotencyKey: p.key, source: GrantSource.ADMIN, reason })
        : await ledger.deduct({ userId, tokens: amount, idempotencyKey: p.key, reason, allowNegative });
    if (pending[op] === p) pending[op] = null;
    if (seq !== user.seq) return;
    input(`${op}-tokens`).value = "";
    input(`${op}-reason`).value = "";
    if (op === "deduct") input("deduct-allow-negative").checked = false;
    setNumber(el("balance"), res.balance);
    showResult(
      `transaction ${res.transactionId}, balance ${tokens(res.balance)}${res.replayed ? " (replayed: nothing changed)" : ""}`,
    );
    el("op-result").dataset.balance = res.balance.toString();
    el("op-result").dataset.txId = res.transactionId;
    // The account list shows balances too: the last search again, so it is not stale.
    await Promise.all([refreshUser(), searchAccounts(false, true)]);
  } catch (err) {
    const e = callError(err);
    if (!e.uncertain && pending[op] === p) pending[op] = null;
    if (seq === user.seq) {
      showError(context, e, e.uncertain ? `(outcome unknown: submitting again reuses idempotency key ${p.key})` : "");
    }
  } finally {
    btn.disabled = false;
  }
}

// ---- views and links ---------------------------------------------------------------------------

type View = "accounts" | "transaction" | "events" | "overview" | "usage" | "models";

function showView(view: View): void {
  for (const v of document.querySelectorAll<HTMLElement>(".view")) v.hidden = v.dataset.view !== view;
  for (const b of document.querySelectorAll<HTMLButtonElement>('[data-testid="nav"] > button')) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
}

function setHash(hash: string): void {
  history.replaceState(null, "", `${location.pathname}${location.search}#${hash}`);
}

// The URL says what is open: #user=<id>, #tx=<id or pi_…>, #view=events, #view=overview,
// #view=usage, #view=models.
async function routeFromHash(): Promise<void> {
  const params = new URLSearchParams(location.hash.slice(1));
  const userId = params.get("user");
  const tx = params.get("tx");
  const view = params.get("view");
  if (userId) return openUser(userId);
  if (tx) return openTransaction(tx);
  if (view === "events") return openEvents();
  if (view === "overview") return openOverview();
  if (view === "usage") return openUsage();
  if (view === "models") return openModels();
  showView("accounts");
}

function linkButton(text: string, testid: string, onClick: () => void): HTMLButtonElement {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "link";
  b.textContent = text;
  b.dataset.testid = testid;
  b.addEventListener("click", (e) => {
    e.stopPropagation();
    onClick();
  });
  return b;
}

// The kinds Reverse accepts as an original: credits.
function isCredit(kind: TransactionKind): boolean {
  return kind === TransactionKind.GRANT || kind === TransactionKind.PURCHASE || kind === TransactionKind.DRIP;
}

// ---- one transaction (search by id or payment intent) ------------------------------------------

const txView = { seq: 0, id: "" };

async function openTransaction(query: string): Promise<void> {
  query = query.trim();
  if (!query) {
    showError("Find transaction", "Enter a transaction id or a Stripe payment intent (pi_…).");
    return;
  }
  clearError();
  showView("transaction");
  setHash(`tx=${encodeURIComponent(query)}`);
  const seq = ++txView.seq;
  txView.id = "";
  el("tx-view-id").textContent = query;
  show(el("tx-view-loading"), true);
  show(el("tx-view-body"), false);
  try {
    // A payment intent finds the purchase that credited it; anything else is a transaction id.
    const res = await ledger.getTransaction({
      lookup: query.startsWith("pi_")
        ? { case: "stripePaymentIntentId", value: query }
        : { case: "transactionId", value: query },
    });
    if (seq !== txView.seq) return;
    renderTransaction(res);
    show(el("tx-view-loading"), false);
    show(el("tx-view-body"), true);
    await loadTransactionEvents(res, seq);
  } catch (err) {
    if (seq !== txView.seq) return;
    show(el("tx-view-loading"), false);
    showError("Find transaction", callError(err));
  }
}

function renderTransaction(res: GetTransactionResponse): void {
  const tx = res.transaction!;
  txView.id = tx.id;
  const kind = protoName(TransactionKind, tx.kind) ?? `kind ${tx.kind}`;
  el("tx-view-id").textContent = tx.id;
  const view = el("tx-view");
  view.dataset.txId = tx.id;
  view.dataset.userId = res.userId;
  view.dataset.kind = kind;
  const userLink = button("tx-view-user");
  userLink.textContent = res.userId;
  userLink.dataset.userId = res.userId;
  el("tx-view-kind").textContent = kind;
  const amount = el("tx-view-amount");
  setNumber(amount, tx.tokenAmount);
  amount.textContent = signedTokens(tx.tokenAmount);
  setNumber(el("tx-view-balance-after"), tx.balanceAfter);
  el("tx-view-sequence").textContent = tx.sequence.toString();
  el("tx-view-created-at").textContent = time(tx.createdAt);
  el("tx-view-created-by").textContent = tx.createdBy;
  el("tx-view-reason").textContent = tx.reason;
  el("tx-view-idempotency-key").textContent = tx.idempotencyKey;
  el("tx-view-details").textContent = details(tx);
  const credit = isCredit(tx.kind);
  show(el("tx-view-reversal-facts"), credit);
  show(el("tx-view-left-facts"), credit);
  show(el("tx-view-reverse"), credit);
  setNumber(el("tx-view-reversed"), res.reversedTokens);
  setNumber(el("tx-view-left"), credit ? tx.tokenAmount - res.reversedTokens : 0n);
  el("tx-view-events-table").querySelector("tbody")!.replaceChildren();
  show(el("tx-view-events-empty"), false);
}

// The Stripe events whose journal row this is (ListStripeEvents filters by user, not by
// transaction: the user's newest events are scanned).
async function loadTransactionEvents(res: GetTransactionResponse, seq: number): Promise<void> {
  const body = el("tx-view-events-table").querySelector("tbody")!;
  try {
    const page = await ledger.listStripeEvents({ userId: res.userId, pageSize: TX_EVENTS_SCAN_MAX });
    if (seq !== txView.seq) return;
    const mine = page.events.filter((e) => e.transactionId === res.transaction?.id);
    body.replaceChildren(...mine.map(eventRow));
    show(el("tx-view-events-empty"), mine.length === 0);
  } catch (err) {
    if (seq === txView.seq) showError("Stripe events of the transaction", callError(err));
  }
}

// ---- reverse a credit --------------------------------------------------------------------------

const reversal = {
  target: null as null | { txId: string; userId: string },
  // As for grants: the key of an attempt whose outcome is unknown, reused when the same attempt
  // (same credit, tokens and reason) is submitted again.
  pending: null as null | { fingerprint: string; key: string },
};

function closeReverse(): void {
  const dialog = el<HTMLDialogElement>("reverse-dialog");
  if (dialog.open) dialog.close();
  reversal.target = null;
}

// Reads the credit again (what is left to reverse changes with every reversal) and opens the form.
async function openReverse(txId: string, btn: HTMLButtonElement): Promise<void> {
  clearError();
  btn.disabled = true;
  try {
    const res = await ledger.getTransaction({ lookup: { case: "transactionId", value: txId } });
    const tx = res.transaction!;
    const left = tx.tokenAmount - res.reversedTokens;
    reversal.target = { txId: tx.id, userId: res.userId };
    el("reverse-kind").textContent = protoName(TransactionKind, tx.kind) ?? "";
    el("reverse-original").textContent = tx.id;
    el("reverse-user").textContent = res.userId;
    setNumber(el("reverse-amount"), tx.tokenAmount);
    setNumber(el("reverse-reversed"), res.reversedTokens);
    setNumber(el("reverse-left"), left);
    input("reverse-tokens").value = left > 0n ? left.toString() : "";
    input("reverse-reason").value = "";
    el("reverse-error").textContent = "";
    show(el("reverse-error"), false);
    el<HTMLDialogElement>("reverse-dialog").showModal();
    input("reverse-reason").focus();
  } catch (err) {
    showError("Reverse", callError(err));
  } finally {
    btn.disabled = false;
  }
}

function reverseError(text: string): void {
  el("reverse-error").textContent = text;
  show(el("reverse-error"), true);
}

async function submitReverse(): Promise<void> {
  const target = reversal.target;
  if (!target) return;
  show(el("reverse-error"), false);
  const amount = parseTokens(input("reverse-tokens").value);
  if (typeof amount === "string") return reverseError(amount);
  const reason = input("reverse-reason").value.trim();
  if (!reason) return reverseError("A reason is required.");

  const fingerprint = JSON.stringify([target.userId, target.txId, amount.toString(), reason]);
  let p = reversal.pending;
  if (!p || p.fingerprint !== fingerprint) p = { fingerprint, key: newIdempotencyKey() };
  reversal.pending = p;

  const btn = button("reverse-submit");
  btn.disabled = true;
  try {
    const res = await ledger.reverse({
      userId: target.userId,
      tokens: amount,
      idempotencyKey: p.key,
      originalTransactionId: target.txId,
      source: ReversalSource.ADMIN,
      reason,
    });
    if (reversal.pending === p) reversal.pending = null;
    closeReverse();
    clearError();
    showResult(
      `transaction ${res.transactionId} (reversal of ${target.txId}), balance ${tokens(res.balance)}` +
        (res.replayed ? " (replayed: nothing changed)" : ""),
    );
    el("op-result").dataset.balance = res.balance.toString();
    el("op-result").dataset.txId = res.transactionId;
    const reloads: Promise<void>[] = [searchAccounts(false, true)];
    if (user.id === target.userId) reloads.push(refreshUser());
    if (txView.id === target.txId && !el("tx-view").hidden) reloads.push(openTransaction(target.txId));
    await Promise.all(reloads);
  } catch (err) {
    const e = callError(err);
    if (!e.uncertain && reversal.pending === p) reversal.pending = null;
    reverseError(
      `${e.code}: ${e.message}` + (e.uncertain ? ` (outcome unknown: submitting again reuses idempotency key ${p.key})` : ""),
    );
  } finally {
    btn.disabled = false;
  }
}

// ---- Stripe events -----------------------------------------------------------------------------

interface EventFilter {
  eventId: string;
  userId: string;
  outcome: string;
  livemode?: boolean;
}

const events = { seq: 0, filter: { eventId: "", userId: "", outcome: "" } as EventFilter, nextPageToken: "" };

async function openEvents(): Promise<void> {
  showView("events");
  setHash("view=events");
  await searchEvents(false);
}

async function searchEvents(more: boolean): Promise<void> {
  clearError();
  if (!more) {
    events.seq++;
    const mode = el<HTMLSelectElement>("events-livemode").value;
    events.filter = {
      eventId: input("events-event-id").value.trim(),
      userId: input("events-user-id").value.trim(),
      outcome: input("events-outcome").value.trim(),
      livemode: mode === "live" ? true : mode === "test" ? false : undefined,
    };
    events.nextPageToken = "";
  }
  const seq = events.seq;
  const btn = button(more ? "events-more" : "events-search");
  btn.disabled = true;
  try {
    const res = await ledger.listStripeEvents({
      ...events.filter,
      pageSize: PAGE_SIZE,
      pageToken: more ? events.nextPageToken : "",
    });
    if (seq !== events.seq) return;
    const body = el("events-table").querySelector("tbody")!;
    if (!more) body.replaceChildren();
    for (const e of res.events) body.append(eventRow(e));
    events.nextPageToken = res.nextPageToken;
    show(el("events-more"), res.nextPageToken !== "");
    show(el("events-empty"), body.rows.length === 0);
  } catch (err) {
    if (seq === events.seq) showError("Stripe events", callError(err));
  } finally {
    btn.disabled = false;
  }
}

function eventRow(e: StripeEvent): HTMLTableRowElement {
  const row = document.createElement("tr");
  row.dataset.testid = "event-row";
  row.dataset.eventId = e.eventId;
  row.dataset.outcome = e.outcome;
  row.dataset.livemode = String(e.livemode);
  row.dataset.userId = e.userId;
  row.dataset.transactionId = e.transactionId;
  cell(row, time(e.lastSeenAt), "event-last-seen", "", `first seen ${time(e.firstSeenAt)}`);
  cell(row, e.eventId, "event-id", "id wrap");
  cell(row, e.type, "event-type");
  cell(row, e.outcome, "event-outcome", "kind");
  cell(row, e.firstOutcome, "event-first-outcome", e.firstOutcome !== e.outcome ? "changed" : "");
  cell(row, e.deliveries.toString(), "event-deliveries", "num");
  cell(row, e.livemode ? "live" : "test", "event-mode");
  cell(row, e.apiVersion, "event-api-version");
  const userCell = row.insertCell();
  userCell.className = "wrap";
  if (e.userId) userCell.append(linkButton(e.userId, "event-user", () => void openUser(e.userId)));
  const txCell = row.insertCell();
  txCell.className = "id";
  if (e.transactionId) txCell.append(linkButton(e.transactionId, "event-transaction", () => void openTransaction(e.transactionId)));
  const pi = e.paymentIntentId && !e.detail.includes(e.paymentIntentId) ? e.paymentIntentId : "";
  cell(row, [e.detail, pi].filter(Boolean).join(" · "), "event-detail", "details");
  return row;
}

// ---- overview ----------------------------------------------------------------------------------

const overview = { seq: 0 };
let chart: uPlot | null = null;
const CHART_HEIGHT = 260;

async function openOverview(): Promise<void> {
  showView("overview");
  setHash("view=overview");
  await loadOverview();
}

async function loadOverview(): Promise<void> {
  clearError();
  const seq = ++overview.seq;
  const btn = button("overview-refresh");
  btn.disabled = true;
  try {
    // UTC days, like every time on this page.
    const res = await ledger.getOverview({
      days: Number(el<HTMLSelectElement>("overview-days").value),
      timeZone: "",
      topUsers: OVERVIEW_TOP_USERS,
    });
    if (seq === overview.seq) renderOverview(res);
  } catch (err) {
    if (seq === overview.seq) showError("Overview", callError(err));
  } finally {
    btn.disabled = false;
  }
}

function renderOverview(res: GetOverviewResponse): void {
  setNumber(el("overview-outstanding"), res.tokensOutstanding);
  setNumber(el("overview-overdrawn"), res.tokensOverdrawn);
  setNumber(el("overview-held"), res.tokensHeld);
  setNumber(el("overview-accounts"), res.accounts);
  el("overview-as-of").textContent = time(res.asOf);

  const days = el("overview-days-table").querySelector("tbody")!;
  days.replaceChildren(
    ...res.days.map((d) => {
      const row = document.createElement("tr");
      row.dataset.testid = "overview-day-row";
      row.dataset.day = d.day;
      cell(row, d.day, "day");
      for (const [name, n] of [
        ["credited", d.credited],
        ["used", d.used],
        ["expired", d.expired],
        ["deducted", d.deducted],
      ] as const) {
        cell(row, tokens(n), `day-${name}`, "num").dataset.value = n.toString();
      }
      return row;
    }),
  );

  const top = el("top-users-table").querySelector("tbody")!;
  top.replaceChildren(
    ...res.topUsers.map((u) => {
      const row = document.createElement("tr");
      row.dataset.testid = "top-user-row";
      row.dataset.userId = u.userId;
      row.tabIndex = 0;
      row.className = "clickable";
      cell(row, u.userId, "top-user-id", "wrap");
      cell(row, tokens(u.used), "top-user-used", "num").dataset.value = u.used.toString();
      cell(row, u.events.toString(), "top-user-events", "num").dataset.value = u.events.toString();
      cell(row, tokens(u.balance), "top-user-balance", u.balance < 0n ? "num negative" : "num").dataset.value = u.balance.toString();
      const open = () => void openUser(u.userId);
      row.addEventListener("click", open);
      row.addEventListener("keydown", (e) => {
        if (e.key === "Enter") open();
      });
      return row;
    }),
  );
  show(el("top-users-empty"), res.topUsers.length === 0);
  drawChart(res);
}

// One line per movement over the window's days. uPlot draws on a canvas and styles its own
// elements through the CSSOM (element.style), which the page's CSP (style-src 'self') allows;
// its stylesheet is bundled into style.css.
function drawChart(res: GetOverviewResponse): void {
  const box = el("overview-chart");
  chart?.destroy();
  chart = null;
  // Day strings are `YYYY-MM-DD` (UTC here): their midnights, in seconds, are the x values.
  const xs = res.days.map((d) => Date.parse(`${d.day}T00:00:00Z`) / 1000);
  const series = (f: (d: (typeof res.days)[number]) => bigint) => res.days.map((d) => Number(f(d)));
  const data: uPlot.AlignedData = [xs, series((d) => d.credited), series((d) => d.used), series((d) => d.expired)];
  box.dataset.days = String(xs.length);
  box.dataset.credited = res.days.reduce((s, d) => s + d.credited, 0n).toString();
  box.dataset.used = res.days.reduce((s, d) => s + d.used, 0n).toString();
  box.dataset.expired = res.days.reduce((s, d) => s + d.expired, 0n).toString();
  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  chart = new uPlot(
    {
      width: Math.max(box.clientWidth, 320),
      height: CHART_HEIGHT,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: { x: { time: true } },
      series: [
        { label: "day (UTC)", value: (_u, v) => (v == null ? "" : new Date(v * 1000).toISOString().slice(0, 10)) },
        { label: "credited", stroke: "#137a3f", fill: "rgba(19,122,63,0.08)", width: 2, value: (_u, v) => (v == null ? "" : tokens(BigInt(v))) },
        { label: "used", stroke: "#2f5bd3", width: 2, value: (_u, v) => (v == null ? "" : tokens(BigInt(v))) },
        { label: "expired", stroke: "#b26b00", width: 2, dash: [6, 4], value: (_u, v) => (v == null ? "" : tokens(BigInt(v))) },
      ],
      axes: [{}, { size: 60, values: (_u, ticks) => ticks.map((t) => compact.format(t)) }],
    },
    data,
    box,
  );
}

function resizeChart(): void {
  const box = el("overview-chart");
  if (chart && box.clientWidth > 0) chart.setSize({ width: box.clientWidth, height: CHART_HEIGHT });
}

// ---- usage and models --------------------------------------------------------------------------

let allUsageShown = false;

async function openUsage(): Promise<void> {
  showView("usage");
  setHash("view=usage");
  // The first time: the last 30 days in the browser's zone; later, the range as it was left.
  if (!allUsageShown) allUsage.reset();
  allUsageShown = true;
  await allUsage.load();
}

async function openModels(): Promise<void> {
  showView("models");
  setHash("view=models");
  await loadPrices();
}

// ---- CSV export of a user's history ------------------------------------------------------------

// The details of every kind, flattened: one column per field, empty where a row has none.
const DETAIL_COLUMNS = [
  "grant_source",
  "stripe_subscription_id",
  "stripe_invoice_id",
  "stripe_payment_intent_id",
  "stripe_checkout_session_id",
  "pack",
  "amount_paid_cents",
  "currency",
  "period_start",
  "period_end",
  "model",
  "feature",
  "input_tokens",
  "output_tokens",
  "hold_id",
  "original_transaction_id",
  "reversal_source",
  "stripe_reference",
  "allow_negative",
  "lot_id",
  "carried_tokens",
  "carried_to_lot_id",
] as const;

const CSV_COLUMNS = [
  "id",
  "sequence",
  "created_at",
  "kind",
  "token_amount",
  "balance_after",
  "created_by",
  "reason",
  "idempotency_key",
  ...DETAIL_COLUMNS,
];

// RFC 3339 in UTC with the timestamp's full precision (nanoseconds, trailing zeros dropped).
function rfc3339(ts: Timestamp | undefined): string {
  if (!ts) return "";
  const whole = new Date(Number(ts.seconds) * 1000).toISOString().slice(0, 19);
  const frac = ts.nanos ? `.${String(ts.nanos).padStart(9, "0").replace(/0+$/, "")}` : "";
  return `${whole}${frac}Z`;
}

function detailColumns(tx: Transaction): Partial<Record<(typeof DETAIL_COLUMNS)[number], string>> {
  const d = tx.details;
  switch (d.case) {
    case "grant":
      return {
        grant_source: protoName(GrantSource, d.value.source) ?? "",
        stripe_subscription_id: d.value.stripeSubscriptionId,
        stripe_invoice_id: d.value.stripeInvoiceId,
      };
    case "deduction":
      return { allow_negative: String(d.value.allowNegative) };
    case "purchase":
      return {
        stripe_payment_intent_id: d.value.stripePaymentIntentId,
        stripe_checkout_session_id: d.value.stripeCheckoutSessionId,
        pack: d.value.pack,
        amount_paid_cents: d.value.amountPaidCents.toString(),
        currency: d.value.currency,
      };
    case "drip":
      return {
        stripe_subscription_id: d.value.stripeSubscriptionId,
        stripe_invoice_id: d.value.stripeInvoiceId,
        period_start: rfc3339(d.value.periodStart),
        period_end: rfc3339(d.value.periodEnd),
      };
    case "usage":
      return {
        model: d.value.model,
        feature: d.value.feature,
        input_tokens: d.value.inputTokens.toString(),
        output_tokens: d.value.outputTokens.toString(),
        hold_id: d.value.holdId,
      };
    case "reversal":
      return {
        original_transaction_id: d.value.originalTransactionId,
        reversal_source: protoName(ReversalSource, d.value.source) ?? "",
        stripe_reference: d.value.stripeReference,
      };
    case "expiry":
      return {
        lot_id: d.value.lotId,
        carried_tokens: d.value.carriedTokens ? d.value.carriedTokens.toString() : "",
        carried_to_lot_id: d.value.carriedToLotId,
      };
    default:
      return {};
  }
}

// RFC 4180: a field with a comma, a quote or a line break is quoted, its quotes doubled. Values
// are written as they are (no formula escaping): the file is data for whoever reads it.
function csvField(v: string): string {
  return /[",\r\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

function csvLine(values: string[]): string {
  return `${values.map(csvField).join(",")}\r\n`;
}

function csvRow(tx: Transaction): string {
  const d = detailColumns(tx);
  return csvLine([
    tx.id,
    tx.sequence.toString(),
    rfc3339(tx.createdAt),
    protoName(TransactionKind, tx.kind) ?? `kind ${tx.kind}`,
    tx.tokenAmount.toString(),
    tx.balanceAfter.toString(),
    tx.createdBy,
    tx.reason,
    tx.idempotencyKey,
    ...DETAIL_COLUMNS.map((c) => d[c] ?? ""),
  ]);
}

// Pages through the whole history (with the filters in force) at the largest page size, turning
// each page into CSV lines as it arrives, then hands the lines to the browser as one download.
async function exportHistory(): Promise<void> {
  clearError();
  const seq = user.seq;
  const userId = user.id;
  const filter = user.filter;
  const status = el("export-status");
  const btn = button("history-export");
  btn.disabled = true;
  delete status.dataset.rows;
  const chunks: string[] = [csvLine(CSV_COLUMNS)];
  let rows = 0;
  let pages = 0;
  let pageToken = "";
  try {
    do {
      if (pages === EXPORT_PAGES_MAX) {
        showError("Export CSV", `More than ${tokens(BigInt(EXPORT_PAGES_MAX * EXPORT_PAGE_SIZE))} rows: narrow the history filters first.`);
        status.textContent = "";
        return;
      }
      const res = await ledger.listTransactions({
        userId,
        pageSize: EXPORT_PAGE_SIZE,
        pageToken,
        kinds: filter.kinds,
        createdAfter: filter.createdAfter,
        createdBefore: filter.createdBefore,
      });
      if (seq !== user.seq) return; // another user was opened: this export is abandoned
      for (const tx of res.transactions) chunks.push(csvRow(tx));
      rows += res.transactions.length;
      pages++;
      pageToken = res.nextPageToken;
      status.textContent = `exporting… ${tokens(BigInt(rows))} rows`;
    } while (pageToken);
    const url = URL.createObjectURL(new Blob(chunks, { type: "text/csv;charset=utf-8" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = `history-${userId.replace(/[^A-Za-z0-9._-]+/g, "_")}.csv`;
    document.body.append(a);
    a.click();
    a.remove();
    // The download has its own copy once it started; a minute is plenty.
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    status.textContent = `exported ${tokens(BigInt(rows))} rows (${pages} ${pages === 1 ? "page" : "pages"})`;
    status.dataset.rows = String(rows);
    status.dataset.pages = String(pages);
  } catch (err) {
    if (seq === user.seq) {
      status.textContent = "";
      showError("Export CSV", callError(err));
    }
  } finally {
    btn.disabled = false;
  }
}

// ---- wiring ------------------------------------------------------------------------------------

function onSubmit(testid: string, handler: () => void): void {
  el<HTMLFormElement>(testid).addEventListener("submit", (e) => {
    e.preventDefault();
    handler();
  });
}

function start(): void {
  onSubmit("signin-form", () => {
    const credential = el<HTMLTextAreaElement>("credential-input").value.trim().replace(/^bearer\s+/i, "");
    if (!credential) return showError("Sign in", "Paste a JWT or an API key.");
    void signIn(credential);
  });
  button("signout-button").addEventListener("click", signOut);
  button("error-dismiss").addEventListener("click", clearError);
  onSubmit("open-user-form", () => void openUser(input("open-user-input").value));
  onSubmit("accounts-form", () => void searchAccounts(false));
  button("accounts-more").addEventListener("click", () => void searchAccounts(true));
  el<HTMLSelectElement>("accounts-order").addEventListener("change", () => void searchAccounts(false));
  button("user-refresh").addEventListener("click", () => {
    clearError();
    void refreshUser();
  });
  onSubmit("grant-form", () => void submit("grant"));
  onSubmit("deduct-form", () => void submit("deduct"));
  onSubmit("history-filters", applyFilters);
  button("history-clear").addEventListener("click", () => {
    el<HTMLFormElement>("history-filters").reset();
    applyFilters();
  });
  button("history-more").addEventListener("click", () => void loadHistory(true));
  button("history-export").addEventListener("click", () => void exportHistory());
  for (const b of document.querySelectorAll<HTMLButtonElement>('[data-testid="nav"] > button')) {
    b.addEventListener("click", () => {
      clearError();
      if (b.dataset.view === "events") void openEvents();
      else if (b.dataset.view === "overview") void openOverview();
      else if (b.dataset.view === "usage") void openUsage();
      else if (b.dataset.view === "models") void openModels();
      else {
        // Back to the accounts and the user left open there, as they were (no reload).
        showView("accounts");
        if (user.id) setHash(`user=${encodeURIComponent(user.id)}`);
        else history.replaceState(null, "", location.pathname + location.search);
      }
    });
  }
  onSubmit("tx-search-form", () => void openTransaction(input("tx-search-input").value));
  button("tx-view-user").addEventListener("click", () => {
    const id = button("tx-view-user").dataset.userId;
    if (id) void openUser(id);
  });
  button("tx-view-reverse").addEventListener("click", () => {
    if (txView.id) void openReverse(txView.id, button("tx-view-reverse"));
  });
  onSubmit("reverse-form", () => void submitReverse());
  for (const f of ["reverse-tokens", "reverse-reason"]) input(f).addEventListener("input", () => show(el("reverse-error"), false));
  button("reverse-cancel").addEventListener("click", closeReverse);
  onSubmit("events-form", () => void searchEvents(false));
  el<HTMLSelectElement>("events-livemode").addEventListener("change", () => void searchEvents(false));
  button("events-clear").addEventListener("click", () => {
    el<HTMLFormElement>("events-form").reset();
    void searchEvents(false);
  });
  button("events-more").addEventListener("click", () => void searchEvents(true));
  button("overview-refresh").addEventListener("click", () => void loadOverview());
  el<HTMLSelectElement>("overview-days").addEventListener("change", () => void loadOverview());
  window.addEventListener("resize", () => {
    resizeChart();
    userUsage.resize();
    allUsage.resize();
  });
  wireModels();

  const saved = storedCredential();
  if (saved) void signIn(saved, true);
  document.body.dataset.ready = "true";
}

start();
