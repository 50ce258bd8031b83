// The admin console: sign in, find accounts, look at one user's balance, holds, lots and history,
// add or deduct tokens, release a hold. Plain DOM; every element is found by its data-testid (see
// index.html).
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AccountOrder,
  GrantSource,
  HoldState,
  LotSource,
  ReversalSource,
  TransactionKind,
  type Account,
  type GetBalanceResponse,
  type Hold,
  type Lot,
  type Transaction,
} from "./gen/tokenledger/v1/ledger_pb";
import {
  callError,
  ledger,
  newIdempotencyKey,
  setCredential,
  storeCredential,
  storedCredential,
  type CallError,
} from "./client";

const PAGE_SIZE = 50;
const MAX_TOKENS = 1_000_000_000_000n;

// ---- DOM helpers -------------------------------------------------------------------------------

function el<T extends HTMLElement = HTMLElement>(testid: string): T {
  const found = document.querySelector<T>(`[data-testid="${testid}"]`);
  if (!found) throw new Error(`missing element ${testid}`);
  return found;
}

const input = (testid: string) => el<HTMLInputElement>(testid);
const button = (testid: string) => el<HTMLButtonElement>(testid);

function show(node: HTMLElement, visible: boolean): void {
  node.hidden = !visible;
}

function cell(row: HTMLTableRowElement, text: string, testid: string, cls = "", title = ""): HTMLTableCellElement {
  const td = row.insertCell();
  td.textContent = text;
  td.dataset.testid = testid;
  if (cls) td.className = cls;
  if (title) td.title = title;
  return td;
}

// ---- formatting --------------------------------------------------------------------------------

function tokens(n: bigint): string {
  return n.toLocaleString("en-US");
}

function signedTokens(n: bigint): string {
  return n > 0n ? `+${tokens(n)}` : tokens(n);
}

// "2026-11-24 08:40:00" (UTC); empty for an unset timestamp.
function time(ts: Timestamp | undefined): string {
  if (!ts) return "";
  return timestampDate(ts).toISOString().replace("T", " ").replace(/\.\d+Z$/, "");
}

function setNumber(node: HTMLElement, n: bigint): void {
  node.textContent = tokens(n);
  node.dataset.value = n.toString();
  node.classList.toggle("negative", n < 0n);
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

// ---- error and result boxes --------------------------------------------------------------------

function showError(context: string, err: CallError | string, hint = ""): void {
  el("error-context").textContent = context;
  el("error-text").textContent = typeof err === "string" ? err : `${err.code}: ${err.message}${hint ? ` ${hint}` : ""}`;
  show(el("error-box"), true);
}

function clearError(): void {
  el("error-context").textContent = "";
  el("error-text").textContent = "";
  show(el("error-box"), false);
}

function showResult(text: string): void {
  const box = el("op-result");
  box.textContent = text;
  show(box, text !== "");
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
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("user");
    await Promise.all([searchAccounts(false), fromHash ? openUser(fromHash) : Promise.resolve()]);
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

async function searchAccounts(more: boolean): Promise<void> {
  clearError();
  if (!more) {
    accounts.seq++;
    accounts.prefix = input("accounts-prefix").value.trim();
    accounts.order = ORDERS[el<HTMLSelectElement>("accounts-order").value] ?? AccountOrder.USER_ID;
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
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
}

async function openUser(id: string): Promise<void> {
  id = id.trim();
  if (!id) {
    showError("Open user", "Enter a user id.");
    return;
  }
  clearError();
  user.id = id;
  user.seq++;
  pending.grant = pending.deduct = null;
  showResult("");
  el("user-id").textContent = id;
  for (const f of ["grant-tokens", "grant-reason", "deduct-tokens", "deduct-reason"]) input(f).value = "";
  input("deduct-allow-negative").checked = false;
  renderBalance(undefined);
  for (const t of ["history", "holds", "lots"]) {
    el(`${t}-table`).querySelector("tbody")!.replaceChildren();
    show(el(`${t}-empty`), false);
  }
  show(el("history-more"), false);
  show(el("user-view"), true);
  history.replaceState(null, "", `#user=${encodeURIComponent(id)}`);
  await refreshUser();
}

async function refreshUser(): Promise<void> {
  await Promise.all([loadBalance(), loadHolds(), loadLots(), loadHistory(false)]);
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
  cell(row, kind, "tx-kind", `kind kind-${kind}`);
  cell(row, signedTokens(tx.tokenAmount), "tx-amount", tx.tokenAmount < 0n ? "num negative" : "num credit").dataset.value =
    tx.tokenAmount.toString();
  cell(row, tokens(tx.balanceAfter), "tx-balance-after", tx.balanceAfter < 0n ? "num negative" : "num").dataset.value =
    tx.balanceAfter.toString();
  cell(row, time(tx.createdAt), "tx-created-at");
  cell(row, tx.createdBy, "tx-created-by");
  cell(row, tx.reason, "tx-reason", "reason");
  cell(row, details(tx), "tx-details", "details", `transaction ${tx.id}, idempotency key ${tx.idempotencyKey}`);
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
    await refreshUser();
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

  const saved = storedCredential();
  if (saved) void signIn(saved, true);
  document.body.dataset.ready = "true";
}

start();
