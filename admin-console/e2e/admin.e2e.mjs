#!/usr/bin/env node
// End-to-end test of the admin console against a running token-ledger server, in Debian's
// headless Chromium driven by playwright-core (no browser is ever downloaded). It starts no
// server: the caller does, and passes
//   LEDGER_URL      e.g. http://127.0.0.1:43123 (the console is at ${LEDGER_URL}/admin)
//   ADMIN_JWT       a credential with the admin role
//   NON_ADMIN_JWT   a valid credential without it
//   HOLD_USER_ID    a user with exactly one active hold (HOLD_ID), at least one lot and an expiry
//                   row in its history: the caller places the hold, the page releases it
//   HOLD_ID         that hold
//   BUYER_USER_ID, PAYMENT_INTENT, PURCHASE_EVENT_ID, LIVE_EVENT_ID, RETRIED_EVENT_ID,
//   SUBSCRIBER_USER_ID
//                   Stripe history the caller posted to the webhook: the buyer bought two packs of
//                   2,000,000 (PURCHASE_EVENT_ID in test mode for PAYMENT_INTENT, LIVE_EVENT_ID
//                   live); RETRIED_EVENT_ID is an invoice of SUBSCRIBER_USER_ID delivered twice,
//                   first user_unknown, then replayed
//   CSV_USER_ID, CSV_ROWS, CSV_REASON
//                   a user with CSV_ROWS (> 500) history rows: one grant with reason CSV_REASON,
//                   then usage of 1 token each
//   OVERVIEW_EXPECTED
//                   JSON: what the overview shows before any scenario writes (token counts as
//                   strings; topUser, topUserUsed)
//   PRICED_MODEL    JSON: a model with three price versions (model, v1 superseded, v2 in force
//                   with a long-context tier, v3 scheduled; their rates as strings)
// The models scenario asks its caller for usage: it prints `USAGE_REQUEST {"model","priceId"}`
// (the model the page priced) and reads `USAGE_DONE {"user","models","everyone"}` from stdin: a
// user whose usage the caller reported, priced by the ledger, and what the usage charts must sum
// to per model (that user's, everyone's).
//   SCREENSHOT_DIR  where screenshots go (default test-artifacts)
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
// Prints one line per scenario and then "N passed, M failed"; exits 1 on any failure. A scenario
// also fails when the page logs a console error or violates its Content-Security-Policy, unless
// the scenario provoked that error itself (allowError).
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === "") {
    console.error(`admin.e2e: ${name} must be set`);
    console.log("0 passed, 1 failed");
    process.exit(2);
  }
  return v;
};

const LEDGER_URL = env("LEDGER_URL").replace(/\/+$/, "");
const ADMIN_JWT = env("ADMIN_JWT");
const NON_ADMIN_JWT = env("NON_ADMIN_JWT");
const HOLD_USER_ID = env("HOLD_USER_ID");
const HOLD_ID = env("HOLD_ID");
const BUYER_USER_ID = env("BUYER_USER_ID");
const PAYMENT_INTENT = env("PAYMENT_INTENT");
const PURCHASE_EVENT_ID = env("PURCHASE_EVENT_ID");
const LIVE_EVENT_ID = env("LIVE_EVENT_ID");
const RETRIED_EVENT_ID = env("RETRIED_EVENT_ID");
const SUBSCRIBER_USER_ID = env("SUBSCRIBER_USER_ID");
const CSV_USER_ID = env("CSV_USER_ID");
const CSV_ROWS = Number(env("CSV_ROWS"));
const CSV_REASON = env("CSV_REASON");
const OVERVIEW_EXPECTED = JSON.parse(env("OVERVIEW_EXPECTED"));
const PRICED_MODEL = JSON.parse(env("PRICED_MODEL"));
const SCREENSHOT_DIR = resolve(env("SCREENSHOT_DIR", "test-artifacts"));
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
const STEP_TIMEOUT_MS = 15_000;
const TOTAL_TIMEOUT_MS = 180_000;

const byId = (page, testid) => page.locator(`[data-testid="${testid}"]`);

class Failure extends Error {}

function check(cond, message) {
  if (!cond) throw new Failure(message);
}

// Polls fn until it returns true (or throws the last mismatch).
async function eventually(what, fn, timeout = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  let last = "";
  for (;;) {
    try {
      const r = await fn();
      if (r === true) return;
      last = r === false ? "" : String(r);
    } catch (e) {
      if (e instanceof Failure) throw e; // a definite failure (e.g. the error box opened): stop now
      last = e.message;
    }
    if (Date.now() > deadline) throw new Failure(`timed out waiting for ${what}${last ? `: ${last}` : ""}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function errorText(page) {
  if (!(await byId(page, "error-box").isVisible())) return "";
  const context = (await byId(page, "error-context").innerText()).trim();
  const text = (await byId(page, "error-text").innerText()).replace(/\s+/g, " ").trim();
  return context ? `${context}: ${text}` : text;
}

async function openConsole(page) {
  await page.goto(`${LEDGER_URL}/admin`, { waitUntil: "load" });
  await page.waitForSelector("body[data-ready=true]", { timeout: STEP_TIMEOUT_MS });
}

async function signIn(page, credential) {
  await byId(page, "credential-input").fill(credential);
  await byId(page, "signin-button").click();
}

// Waits for the balance and the write's result to show, failing fast if the error box opens.
async function expectBalance(page, expected, what) {
  await eventually(`balance ${expected} after ${what}`, async () => {
    const err = await errorText(page);
    if (err) throw new Failure(`error box: ${err}`);
    const v = await byId(page, "balance").getAttribute("data-value");
    return v === String(expected) || `balance data-value is ${v}`;
  });
  const shown = (await byId(page, "balance").innerText()).replace(/,/g, "");
  check(shown === String(expected), `balance shows ${shown}, expected ${expected}`);
}

async function historyRows(page) {
  return byId(page, "history-row").evaluateAll((rows) =>
    rows.map((r) => {
      const c = (t) => r.querySelector(`[data-testid="${t}"]`);
      return {
        id: r.dataset.txId,
        kind: r.dataset.kind,
        sequence: c("tx-sequence").textContent,
        amount: c("tx-amount").dataset.value,
        balanceAfter: c("tx-balance-after").dataset.value,
        createdBy: c("tx-created-by").textContent,
        reason: c("tx-reason").textContent,
        details: c("tx-details").textContent,
        shownId: c("tx-id").textContent,
        reversible: r.querySelector('[data-testid="tx-reverse"]') !== null,
      };
    }),
  );
}

async function lotRows(page) {
  return byId(page, "lot-row").evaluateAll((rows) =>
    rows.map((r) => {
      const c = (t) => r.querySelector(`[data-testid="${t}"]`);
      return {
        id: r.dataset.lotId,
        remaining: c("lot-remaining").dataset.value,
        granted: c("lot-remaining").dataset.granted,
        held: c("lot-held").dataset.value,
        expiresAt: c("lot-expires-at").textContent,
        priority: c("lot-priority").textContent,
        source: c("lot-source").textContent,
        paid: c("lot-paid").textContent,
      };
    }),
  );
}

async function holdRows(page) {
  return byId(page, "hold-row").evaluateAll((rows) =>
    rows.map((r) => {
      const c = (t) => r.querySelector(`[data-testid="${t}"]`);
      return {
        id: r.dataset.holdId,
        tokens: c("hold-tokens").dataset.value,
        expiresAt: c("hold-expires-at").textContent,
        model: c("hold-model").textContent,
        feature: c("hold-feature").textContent,
        placedAt: c("hold-placed-at").textContent,
      };
    }),
  );
}

const value = async (page, testid) => byId(page, testid).getAttribute("data-value");

async function accountRows(page) {
  return byId(page, "account-row").evaluateAll((rs) =>
    rs.map((r) => [r.dataset.userId, r.querySelector('[data-testid="account-balance"]').dataset.value]),
  );
}

// The rows of an events table ("events-table", or the transaction view's "tx-view-events-table").
async function eventRows(page, table = "events-table") {
  return byId(page, table).locator('[data-testid="event-row"]').evaluateAll((rows) =>
    rows.map((r) => {
      const c = (t) => r.querySelector(`[data-testid="${t}"]`)?.textContent ?? "";
      return {
        id: r.dataset.eventId,
        type: c("event-type"),
        outcome: c("event-outcome"),
        firstOutcome: c("event-first-outcome"),
        deliveries: c("event-deliveries"),
        mode: c("event-mode"),
        apiVersion: c("event-api-version"),
        user: c("event-user"),
        transaction: c("event-transaction"),
      };
    }),
  );
}

// Fails fast when the error box opens.
async function noError(page) {
  const err = await errorText(page);
  if (err) throw new Failure(`error box: ${err}`);
}

async function findTransaction(page, query) {
  await byId(page, "tx-search-input").fill(query);
  await byId(page, "tx-search-button").click();
}

// RFC 4180, as the console writes it: fields quoted when they must be, CRLF between records.
function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else field += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") {
      row.push(field);
      field = "";
    } else if (ch === "\r" && text[i + 1] === "\n") {
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
      i++;
    } else field += ch;
  }
  if (field !== "" || row.length > 0) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

// Console errors a scenario provokes on purpose (a request it cuts): they do not fail it.
let allowedErrors = [];
function allowError(pattern) {
  allowedErrors.push(pattern);
}

async function signInAsAdmin(page) {
  await openConsole(page);
  await signIn(page, ADMIN_JWT);
  await eventually("sign-in", async () => {
    const err = await errorText(page);
    if (err) throw new Failure(`error box: ${err}`);
    return byId(page, "whoami").isVisible();
  });
}

async function openUser(page, user) {
  await byId(page, "open-user-input").fill(user);
  await byId(page, "open-user-button").click();
  await byId(page, "user-view").waitFor({ state: "visible", timeout: STEP_TIMEOUT_MS });
  check((await byId(page, "user-id").innerText()) === user, "user view shows another user id");
}

async function write(page, op, tokens, reason) {
  await byId(page, `${op}-tokens`).fill(String(tokens));
  await byId(page, `${op}-reason`).fill(reason);
  await byId(page, `${op}-submit`).click();
}

async function scenarioAdmin(page) {
  const user = `e2e-user-${randomBytes(6).toString("hex")}`;
  await signInAsAdmin(page);
  const actor = (await byId(page, "whoami-actor").innerText()).trim();
  const scopes = (await byId(page, "whoami-scopes").innerText()).trim();
  check(actor !== "", "WhoAmI shows no actor");
  check(/\badmin\b/.test(scopes), `WhoAmI scopes are "${scopes}", expected admin`);

  // The page's icon is its own file: the CSP (default-src 'self') refused the old data: URL.
  check((await page.locator('link[rel="icon"]').getAttribute("href")) === "/admin/favicon.svg", "favicon link");
  const icon = await page.request.get(`${LEDGER_URL}/admin/favicon.svg`);
  check(icon.status() === 200 && icon.headers()["content-type"] === "image/svg+xml", `favicon: ${icon.status()} ${icon.headers()["content-type"]}`);

  // A user without an account opens with balance 0; searching for it finds no account yet.
  await openUser(page, user);
  await expectBalance(page, 0, "opening a new user");
  await byId(page, "accounts-prefix").fill(user);
  await byId(page, "accounts-search").click();
  await eventually("no account yet", async () => (await byId(page, "accounts-empty").isVisible()) || "accounts-empty hidden");

  await write(page, "grant", 1234, "e2e grant");
  await expectBalance(page, 1234, "the grant");
  let grantId = "";
  await eventually("the grant's result line", async () => {
    const t = (await byId(page, "op-result").innerText()).trim();
    const m = /^transaction (\S+), balance 1,?234$/.exec(t);
    grantId = m?.[1] ?? "";
    return (m !== null && (await byId(page, "op-result").getAttribute("data-tx-id")) === grantId) || `op-result is "${t}"`;
  });
  await eventually("a grant row of 1234 in the history, with the id the result line showed", async () => {
    const rows = await historyRows(page);
    const g = rows.find((r) => r.kind === "grant");
    return (
      (rows.length === 1 && g && g.amount === "1234" && g.reason === "e2e grant" && g.balanceAfter === "1234" &&
        g.id === grantId && g.shownId === grantId) ||
      JSON.stringify(rows)
    );
  });
  // The account list refreshed itself after the write: the new account, with its balance.
  await eventually("the account list refreshed after the grant", async () => {
    const rows = await accountRows(page);
    return (rows.length === 1 && rows[0][0] === user && rows[0][1] === "1234") || JSON.stringify(rows);
  });

  await write(page, "deduct", 234, "e2e deduct");
  await expectBalance(page, 1000, "the deduction");
  const deductId = await byId(page, "op-result").getAttribute("data-tx-id");
  check(/^transaction \S+, balance 1,?000$/.test((await byId(page, "op-result").innerText()).trim()), "the deduction's result line");
  await eventually("the deduction on top of the history", async () => {
    const rows = await historyRows(page);
    const [d, g] = rows;
    return (
      (rows.length === 2 &&
        d.kind === "deduction" && d.amount === "-234" && d.balanceAfter === "1000" && d.reason === "e2e deduct" &&
        d.sequence === "2" && g.kind === "grant" && g.sequence === "1" && d.createdBy === actor &&
        d.id === deductId && d.shownId === deductId && d.reversible === false && g.reversible === true) ||
      JSON.stringify(rows)
    );
  });
  check((await byId(page, "total-granted").getAttribute("data-value")) === "1234", "totals: granted is not 1234");
  check((await byId(page, "total-deducted").getAttribute("data-value")) === "234", "totals: deducted is not 234");
  check((await byId(page, "transaction-count").getAttribute("data-value")) === "2", "transaction count is not 2");

  // The grant became one lot that never expires; the deduction burnt 234 of it.
  await eventually("the grant's lot, 1000 of 1234 left", async () => {
    const lots = await lotRows(page);
    const [l] = lots;
    return (
      (lots.length === 1 && l.remaining === "1000" && l.granted === "1234" && l.held === "0" &&
        l.expiresAt === "never" && l.source === "grant" && l.paid === "given" && l.priority === "0") ||
      JSON.stringify(lots)
    );
  });
  check((await value(page, "held")) === "0", "held is not 0 without holds");
  check((await value(page, "available")) === "1000", "available is not 1000");
  check((await byId(page, "next-expiry").innerText()).trim() === "none", "a next expiry for tokens that never expire");
  check((await byId(page, "holds-empty").isVisible()) && (await byId(page, "hold-row").count()) === 0, "holds shown for a user without any");

  // The account list, not searched again, shows the balance after the deduction.
  await eventually("the account list refreshed after the deduction", async () => {
    const rows = await accountRows(page);
    return (rows.length === 1 && rows[0][0] === user && rows[0][1] === "1000") || JSON.stringify(rows);
  });

  await mkdir(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console.png"), fullPage: true });

  // A deduction the balance does not cover is refused and changes nothing.
  await write(page, "deduct", 5000, "e2e overdraft");
  await eventually("FAILED_PRECONDITION for an uncovered deduction", async () => {
    const err = await errorText(page);
    return err.includes("FAILED_PRECONDITION") || `error box: "${err}"`;
  });
  check((await byId(page, "balance").getAttribute("data-value")) === "1000", "balance changed after a refused deduction");
  check((await historyRows(page)).length === 2, "a refused deduction added a history row");
  return `user ${user}, actor ${actor}`;
}

// The caller placed one active hold (HOLD_ID) on HOLD_USER_ID; the admin sees it, the lots and the
// expiry row, releases the hold from the page and sees the tokens available again.
async function scenarioHolds(page) {
  await signInAsAdmin(page);
  await openUser(page, HOLD_USER_ID);
  await eventually("the active hold", async () => {
    const err = await errorText(page);
    if (err) throw new Failure(`error box: ${err}`);
    const holds = await holdRows(page);
    return (holds.length === 1 && holds[0].id === HOLD_ID) || JSON.stringify(holds);
  });
  await eventually("the balance", async () => (await value(page, "balance")) !== null);
  const [hold] = await holdRows(page);
  const balance = BigInt(await value(page, "balance"));
  const held = BigInt(await value(page, "held"));
  check(BigInt(hold.tokens) > 0n && BigInt(hold.tokens) === held, `hold row ${JSON.stringify(hold)}, held ${held}`);
  check(BigInt(await value(page, "available")) === balance - held, `available is not balance ${balance} - held ${held}`);
  check(hold.expiresAt !== "" && hold.placedAt !== "" && hold.model !== "", `hold row ${JSON.stringify(hold)}`);
  await eventually("lots, the held tokens among them", async () => {
    const lots = await lotRows(page);
    const lotsHeld = lots.reduce((sum, l) => sum + BigInt(l.held), 0n);
    return (lots.length > 0 && lotsHeld === held && lots.every((l) => BigInt(l.remaining) <= BigInt(l.granted))) || JSON.stringify(lots);
  });
  await eventually("an expiry row in the history", async () => {
    const rows = await historyRows(page);
    const expiry = rows.find((r) => r.kind === "expiry");
    return (expiry && BigInt(expiry.amount) < 0n) || JSON.stringify(rows);
  });
  check(Number(await value(page, "total-expired")) > 0, "totals: nothing expired");
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-holds.png"), fullPage: true });

  // Release asks first (the call that placed the hold could not commit it any more).
  let asked = "";
  page.once("dialog", (d) => {
    asked = d.message();
    void d.accept();
  });
  await byId(page, "hold-release").click();
  await eventually("the hold gone from the active holds", async () => {
    const err = await errorText(page);
    if (err) throw new Failure(`error box: ${err}`);
    return ((await byId(page, "hold-row").count()) === 0 && (await byId(page, "holds-empty").isVisible())) || "hold still shown";
  });
  check(asked.includes("Release the hold"), `the release was not confirmed first (dialog: "${asked}")`);
  await eventually("available back to the balance", async () => {
    const [b, h, a] = [await value(page, "balance"), await value(page, "held"), await value(page, "available")];
    return (b === String(balance) && h === "0" && a === String(balance)) || `balance ${b}, held ${h}, available ${a}`;
  });
  const result = (await byId(page, "op-result").innerText()).trim();
  check(result.startsWith(`hold ${HOLD_ID} released`), `op-result is "${result}"`);
  const lots = await lotRows(page);
  check(lots.every((l) => l.held === "0"), `lots still hold tokens: ${JSON.stringify(lots)}`);
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-hold-released.png"), fullPage: true });
  return `user ${HOLD_USER_ID}, released ${hold.tokens} tokens`;
}

// The overview, before any scenario writes: the caller says what it must show.
async function scenarioOverview(page) {
  const want = OVERVIEW_EXPECTED;
  await signInAsAdmin(page);
  await byId(page, "nav-overview").click();
  await byId(page, "overview-view").waitFor({ state: "visible" });
  await eventually("the overview's totals", async () => {
    await noError(page);
    const v = await value(page, "overview-outstanding");
    return v === want.outstanding || `outstanding ${v}, expected ${want.outstanding}`;
  });
  for (const [testid, expected] of [
    ["overview-overdrawn", want.overdrawn],
    ["overview-held", want.held],
    ["overview-accounts", want.accounts],
  ]) {
    check((await value(page, testid)) === expected, `${testid} is ${await value(page, testid)}, expected ${expected}`);
  }
  // The chart: a uPlot canvas over the 30 days, with the window's sums.
  await eventually("the chart", async () => (await page.locator('[data-testid="overview-chart"] canvas').count()) > 0 || "no canvas");
  const chart = byId(page, "overview-chart");
  for (const k of ["credited", "used", "expired"]) {
    const got = await chart.getAttribute(`data-${k}`);
    check(got === want[k], `chart: ${k} ${got}, expected ${want[k]}`);
  }
  check((await chart.getAttribute("data-days")) === "30", "the chart has not 30 days");
  const days = await byId(page, "overview-day-row").evaluateAll((rows) =>
    rows.map((r) => [r.dataset.day, r.querySelector('[data-testid="day-credited"]').dataset.value]),
  );
  check(days.length === 30, `${days.length} day rows`);
  check(days.every(([d], i) => i === 0 || d > days[i - 1][0]), "days are not oldest first");
  check(days.reduce((s, [, c]) => s + BigInt(c), 0n) === BigInt(want.credited), "day rows do not add up to credited");
  const box = await chart.boundingBox();
  check(box && box.width > 300 && box.height >= 200, `chart box ${JSON.stringify(box)}`);
  // Top users by usage, most first; a click opens the user.
  const top = await byId(page, "top-user-row").evaluateAll((rows) =>
    rows.map((r) => [r.dataset.userId, r.querySelector('[data-testid="top-user-used"]').dataset.value]),
  );
  check(top.length >= 1 && top[0][0] === want.topUser && top[0][1] === want.topUserUsed, `top users ${JSON.stringify(top)}`);
  check(new URL(page.url()).hash === "#view=overview", `URL ${page.url()}`);
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-overview.png"), fullPage: true });
  await byId(page, "top-user-row").first().click();
  await byId(page, "user-view").waitFor({ state: "visible" });
  check((await byId(page, "user-id").innerText()) === want.topUser, "the top user's row opened another user");
  check(!(await byId(page, "overview-view").isVisible()), "the overview is still shown");
  return `outstanding ${want.outstanding}, top user ${want.topUser}`;
}

// The support ticket: find the payment by its intent, see the Stripe event that credited it,
// open the user, reverse part of the payment with a reason (a refused overreach first, then an
// answer lost on the way back, retried with the same idempotency key).
async function scenarioSupport(page) {
  await signInAsAdmin(page);
  await findTransaction(page, PAYMENT_INTENT);
  await eventually("the purchase of the payment intent", async () => {
    await noError(page);
    return ((await byId(page, "tx-view-body").isVisible()) && (await byId(page, "tx-view-kind").innerText()) === "purchase") || "not shown";
  });
  const purchaseId = await byId(page, "tx-view").getAttribute("data-tx-id");
  check(/^\d+$/.test(purchaseId ?? ""), `purchase id ${purchaseId}`);
  check((await byId(page, "tx-view-id").innerText()) === purchaseId, "the view's title is not the transaction id");
  check((await byId(page, "tx-view-user").innerText()) === BUYER_USER_ID, "the purchase's user");
  check((await value(page, "tx-view-amount")) === "2000000", "the purchase's tokens");
  check((await value(page, "tx-view-reversed")) === "0" && (await value(page, "tx-view-left")) === "2000000", "reversed / left");
  const details = await byId(page, "tx-view-details").innerText();
  check(details.includes(PAYMENT_INTENT) && details.includes("pack_2m") && details.includes("99.00 usd"), `details "${details}"`);
  check((await byId(page, "tx-view-created-by").innerText()).includes("stripe-webhook"), "created by the webhook");
  // The Stripe event that credited it.
  await eventually("the event that credited the purchase", async () => {
    await noError(page);
    const rows = await eventRows(page, "tx-view-events-table");
    const e = rows[0];
    return (
      (rows.length === 1 && e.id === PURCHASE_EVENT_ID && e.type === "checkout.session.completed" &&
        e.outcome === "credited" && e.mode === "test" && e.transaction === purchaseId) ||
      JSON.stringify(rows)
    );
  });
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-transaction.png"), fullPage: true });

  // The user, from the transaction: why the balance is what it is (two packs).
  await byId(page, "tx-view-user").click();
  await byId(page, "user-view").waitFor({ state: "visible" });
  check((await byId(page, "user-id").innerText()) === BUYER_USER_ID, "the user link opened another user");
  await expectBalance(page, 4_000_000, "opening the buyer");
  await eventually("two purchases in the history, both reversible", async () => {
    const rows = await historyRows(page);
    return (rows.length === 2 && rows.every((r) => r.kind === "purchase" && r.reversible) && rows.some((r) => r.id === purchaseId)) || JSON.stringify(rows);
  });
  const row = page.locator(`[data-testid="history-row"][data-tx-id="${purchaseId}"]`);
  await row.locator('[data-testid="tx-reverse"]').click();
  const dialog = byId(page, "reverse-dialog");
  await dialog.waitFor({ state: "visible" });
  check((await byId(page, "reverse-tokens").inputValue()) === "2000000", "the default is not what is left (2,000,000)");
  check((await value(page, "reverse-left")) === "2000000", "left to reverse");
  check((await byId(page, "reverse-original").innerText()) === purchaseId, "the dialog reverses another transaction");
  check((await byId(page, "reverse-source").innerText()) === "admin", "source");

  // More than is left: the ledger refuses, the dialog says why and stays open.
  await byId(page, "reverse-tokens").fill("2000001");
  await byId(page, "reverse-reason").fill("too much");
  await byId(page, "reverse-submit").click();
  await eventually("FAILED_PRECONDITION for reversing more than is left", async () => {
    const t = (await byId(page, "reverse-error").isVisible()) ? await byId(page, "reverse-error").innerText() : "";
    return t.includes("FAILED_PRECONDITION") || `reverse-error "${t}"`;
  });
  check(await dialog.isVisible(), "the dialog closed after a refusal");
  // A reason is required.
  await byId(page, "reverse-tokens").fill("500000");
  await byId(page, "reverse-reason").fill("");
  await byId(page, "reverse-submit").click();
  await eventually("a reason is required", async () => (await byId(page, "reverse-error").innerText()).includes("reason is required") || "no message");

  // The answer of the first attempt is lost (the ledger applied it); the same attempt again
  // reuses its idempotency key, so it is applied once.
  const keys = [];
  const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;
  allowError(/Failed to load resource|ERR_FAILED|request failed: POST .*\/Reverse/);
  await page.route("**/tokenledger.v1.LedgerService/Reverse", async (route) => {
    keys.push(UUID.exec(route.request().postDataBuffer()?.toString("latin1") ?? "")?.[0]);
    if (keys.length === 1) {
      await route.fetch();
      await route.abort("failed");
    } else await route.continue();
  });
  await byId(page, "reverse-reason").fill("refund requested by the customer");
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-reverse.png"), fullPage: true });
  await byId(page, "reverse-submit").click();
  await eventually("the unknown outcome", async () => {
    const t = await byId(page, "reverse-error").innerText();
    return (t.includes("outcome unknown") && keys[0] !== undefined && t.includes(keys[0])) || `reverse-error "${t}"`;
  });
  await byId(page, "reverse-submit").click();
  await eventually("the reversal's result line", async () => {
    const t = (await byId(page, "op-result").innerText()).trim();
    return (!(await dialog.isVisible()) && t.startsWith("transaction ") && t.includes(`(reversal of ${purchaseId}), balance 3,500,000`) && t.includes("replayed")) ||
      `op-result "${t}"`;
  });
  await page.unroute("**/tokenledger.v1.LedgerService/Reverse");
  check(keys.length === 2 && keys[0] && keys[0] === keys[1], `the retry used another key: ${JSON.stringify(keys)}`);
  const reversalId = await byId(page, "op-result").getAttribute("data-tx-id");
  await expectBalance(page, 3_500_000, "the reversal");
  await eventually("the reversal on top of the history", async () => {
    const [r] = await historyRows(page);
    return (r && r.kind === "reversal" && r.amount === "-500000" && r.id === reversalId && r.shownId === reversalId &&
      r.reason === "refund requested by the customer" && r.details.includes(`of ${purchaseId}`) && r.details.includes("admin") && !r.reversible) ||
      JSON.stringify(r);
  });
  check((await value(page, "total-reversed")) === "500000", "totals: reversed");
  // Reverse again: the default is what is left now.
  await row.locator('[data-testid="tx-reverse"]').click();
  await dialog.waitFor({ state: "visible" });
  check((await byId(page, "reverse-tokens").inputValue()) === "1500000", "the default after a reversal is not 1,500,000");
  check((await value(page, "reverse-reversed")) === "500000", "reversed so far");
  await byId(page, "reverse-cancel").click();
  await dialog.waitFor({ state: "hidden" });

  // The search view says what has been reversed of the payment.
  await findTransaction(page, PAYMENT_INTENT);
  await eventually("the purchase, 500,000 reversed", async () => {
    await noError(page);
    return ((await value(page, "tx-view-reversed")) === "500000" && (await value(page, "tx-view-left")) === "1500000") || "not yet";
  });
  // And the reversal itself, by id.
  await findTransaction(page, reversalId);
  await eventually("the reversal by id", async () => {
    await noError(page);
    return ((await byId(page, "tx-view").getAttribute("data-tx-id")) === reversalId && (await byId(page, "tx-view-kind").innerText()) === "reversal") || "not yet";
  });
  check(!(await byId(page, "tx-view-reverse").isVisible()), "a reversal offers Reverse");
  await findTransaction(page, PAYMENT_INTENT);
  await eventually("the purchase again", async () => (await byId(page, "tx-view").getAttribute("data-tx-id")) === purchaseId || "not yet");
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-reversed.png"), fullPage: true });
  return `purchase ${purchaseId}, reversal ${reversalId}, key ${keys[0]} sent twice`;
}

async function searchEvents(page, { eventId = "", userId = "", outcome = "", mode = "" } = {}) {
  await byId(page, "events-event-id").fill(eventId);
  await byId(page, "events-user-id").fill(userId);
  await byId(page, "events-outcome").fill(outcome);
  await byId(page, "events-livemode").selectOption(mode);
  await byId(page, "events-search").click();
}

async function eventsMatch(page, what, pred) {
  await eventually(what, async () => {
    await noError(page);
    const rows = await eventRows(page);
    return pred(rows) || JSON.stringify(rows.map((r) => [r.id, r.outcome, r.mode]));
  });
}

// The Stripe events page: the newest events with what each did; search by event, user, outcome
// and mode; the transaction an event produced opens in the search view.
async function scenarioEvents(page) {
  await signInAsAdmin(page);
  await byId(page, "nav-events").click();
  await byId(page, "events-view").waitFor({ state: "visible" });
  await eventsMatch(page, "the newest events", (rows) => [PURCHASE_EVENT_ID, LIVE_EVENT_ID, RETRIED_EVENT_ID].every((id) => rows.some((r) => r.id === id)));
  const rows = await eventRows(page);
  const byEvent = Object.fromEntries(rows.map((r) => [r.id, r]));
  const [p, l, r] = [byEvent[PURCHASE_EVENT_ID], byEvent[LIVE_EVENT_ID], byEvent[RETRIED_EVENT_ID]];
  check(rows.findIndex((x) => x.id === LIVE_EVENT_ID) < rows.findIndex((x) => x.id === PURCHASE_EVENT_ID), "not newest first");
  check(
    p.type === "checkout.session.completed" && p.outcome === "credited" && p.firstOutcome === "credited" && p.deliveries === "1" &&
      p.mode === "test" && p.apiVersion === "2025-03-31.basil" && p.user === BUYER_USER_ID && /^\d+$/.test(p.transaction),
    `the purchase's event ${JSON.stringify(p)}`,
  );
  check(l.mode === "live" && l.outcome === "credited", `the live event ${JSON.stringify(l)}`);
  check(
    r.type === "invoice.paid" && r.firstOutcome === "user_unknown" && r.outcome === "replayed" && r.deliveries === "2" && r.mode === "test",
    `the retried event ${JSON.stringify(r)}`,
  );
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-stripe-events.png"), fullPage: true });

  await searchEvents(page, { eventId: RETRIED_EVENT_ID });
  await eventsMatch(page, "one event by id", (rs) => rs.length === 1 && rs[0].id === RETRIED_EVENT_ID);
  await searchEvents(page, { userId: BUYER_USER_ID });
  await eventsMatch(page, "the buyer's two events", (rs) => rs.length === 2 && rs.every((x) => x.user === BUYER_USER_ID));
  await searchEvents(page, { userId: SUBSCRIBER_USER_ID });
  await eventsMatch(page, "the subscriber's events", (rs) => rs.length >= 1 && rs.every((x) => x.user === SUBSCRIBER_USER_ID));
  await searchEvents(page, { outcome: "replayed" });
  await eventsMatch(page, "by latest outcome", (rs) => rs.some((x) => x.id === RETRIED_EVENT_ID) && rs.every((x) => x.outcome === "replayed"));
  await searchEvents(page, { outcome: "user_unknown" });
  await eventually("no event whose latest outcome is user_unknown", async () => (await byId(page, "events-empty").isVisible()) || "events shown");
  await searchEvents(page, { mode: "live" });
  await eventsMatch(page, "live events only", (rs) => rs.length >= 1 && rs.every((x) => x.mode === "live") && rs.some((x) => x.id === LIVE_EVENT_ID));
  await searchEvents(page, { mode: "test" });
  await eventsMatch(page, "test events only", (rs) => rs.every((x) => x.mode === "test") && rs.some((x) => x.id === PURCHASE_EVENT_ID) && !rs.some((x) => x.id === LIVE_EVENT_ID));

  // The transaction an event produced opens in the search view.
  await byId(page, "events-clear").click();
  await eventsMatch(page, "all events again", (rs) => rs.some((x) => x.id === PURCHASE_EVENT_ID));
  await byId(page, "events-table").locator(`[data-testid="event-row"][data-event-id="${PURCHASE_EVENT_ID}"] [data-testid="event-transaction"]`).click();
  await eventually("the event's transaction", async () => {
    await noError(page);
    return ((await byId(page, "tx-view-body").isVisible()) && (await byId(page, "tx-view").getAttribute("data-tx-id")) === p.transaction) || "not shown";
  });
  check((await byId(page, "tx-view-kind").innerText()) === "purchase", "the event's transaction is not a purchase");
  check((await byId(page, "tx-view-user").innerText()) === BUYER_USER_ID, "the event's transaction belongs to another user");
  // And its user opens the user.
  await byId(page, "nav-events").click();
  await eventsMatch(page, "events", (rs) => rs.some((x) => x.id === PURCHASE_EVENT_ID));
  await byId(page, "events-table").locator(`[data-testid="event-row"][data-event-id="${PURCHASE_EVENT_ID}"] [data-testid="event-user"]`).click();
  await byId(page, "user-view").waitFor({ state: "visible" });
  check((await byId(page, "user-id").innerText()) === BUYER_USER_ID, "the event's user link opened another user");
  return `${rows.length} events`;
}

const CSV_HEADER = [
  "id", "sequence", "created_at", "kind", "token_amount", "balance_after", "created_by", "reason", "idempotency_key",
  "grant_source", "stripe_subscription_id", "stripe_invoice_id", "stripe_payment_intent_id", "stripe_checkout_session_id",
  "pack", "amount_paid_cents", "currency", "period_start", "period_end", "model", "feature", "input_tokens",
  "output_tokens", "hold_id", "original_transaction_id", "reversal_source", "stripe_reference", "allow_negative",
  "lot_id", "carried_tokens", "carried_to_lot_id",
];

// The whole history (two pages of 500 and more) as CSV, though the page shows 50 rows.
async function scenarioCsv(page) {
  await signInAsAdmin(page);
  await openUser(page, CSV_USER_ID);
  await eventually("the first page of the history", async () => {
    await noError(page);
    return ((await byId(page, "history-row").count()) === 50 && (await byId(page, "history-more").isVisible())) || "not yet";
  });
  const [download] = await Promise.all([page.waitForEvent("download"), byId(page, "history-export").click()]);
  check(download.suggestedFilename() === `history-${CSV_USER_ID}.csv`, `file name ${download.suggestedFilename()}`);
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  const path = join(SCREENSHOT_DIR, "history-export.csv");
  await download.saveAs(path);
  const text = await readFile(path, "utf8");
  const [header, ...rows] = parseCsv(text);
  check(JSON.stringify(header) === JSON.stringify(CSV_HEADER), `header ${JSON.stringify(header)}`);
  check(rows.length === CSV_ROWS, `${rows.length} rows, expected ${CSV_ROWS}`);
  const col = Object.fromEntries(header.map((h, i) => [h, i]));
  const get = (r, c) => r[col[c]];
  check(rows.every((r) => r.length === header.length), "a row with another number of fields");
  check(new Set(rows.map((r) => get(r, "id"))).size === CSV_ROWS, "duplicate ids");
  check(rows.every((r, i) => get(r, "sequence") === String(CSV_ROWS - i)), "sequences are not newest first, without gaps");
  check(rows.every((r) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/.test(get(r, "created_at"))), "a created_at that is not RFC 3339");
  const grant = rows[rows.length - 1];
  check(get(grant, "kind") === "grant" && get(grant, "token_amount") === "1000" && get(grant, "grant_source") === "admin", `grant ${grant}`);
  check(get(grant, "idempotency_key") === "csv-grant", `grant key ${get(grant, "idempotency_key")}`);
  check(get(grant, "reason") === CSV_REASON, `the reason did not survive quoting: ${JSON.stringify(get(grant, "reason"))}`);
  check(text.includes(`"${CSV_REASON.replace(/"/g, '""')}"`), "the reason is not quoted as RFC 4180 says");
  const usage = rows.slice(0, -1);
  check(
    usage.every((r) => get(r, "kind") === "usage" && get(r, "token_amount") === "-1" && get(r, "model") === "gpt-4o-mini" &&
      get(r, "feature") === "chat" && get(r, "input_tokens") === "10" && get(r, "output_tokens") === "5"),
    "usage rows without their details",
  );
  check(get(rows[0], "balance_after") === String(1000 - (CSV_ROWS - 1)), `newest balance_after ${get(rows[0], "balance_after")}`);
  const status = byId(page, "export-status");
  check((await status.getAttribute("data-rows")) === String(CSV_ROWS) && (await status.getAttribute("data-pages")) === String(Math.ceil(CSV_ROWS / 500)), `export status "${await status.innerText()}"`);
  check((await byId(page, "history-row").count()) === 50, "the export changed the page's history");
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-csv.png"), fullPage: false });
  return `${rows.length} rows in ${await status.getAttribute("data-pages")} pages`;
}

// ---- models and usage --------------------------------------------------------------------------

// Lines from the caller on stdin (its answers), read as they come. There is one answer: once it
// is read, stdin is closed, or it would keep the script from exiting.
const stdinLines = [];
let stdinWaiter = null;
let stdinReader = null;
function nextStdinLine(timeout) {
  if (!stdinReader) {
    stdinReader = createInterface({ input: process.stdin });
    stdinReader.on("line", (line) => {
      stdinLines.push(line);
      stdinWaiter?.();
    });
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Failure("the caller did not answer USAGE_REQUEST")), timeout);
    const take = () => {
      if (stdinLines.length === 0) return;
      clearTimeout(timer);
      stdinWaiter = null;
      stdinReader.close();
      process.stdin.destroy();
      resolve(stdinLines.shift());
    };
    stdinWaiter = take;
    take();
  });
}

// What the usage scenario needs from the models scenario: the caller's answer.
let usageDone = null;

async function priceRows(page) {
  return byId(page, "price-row").evaluateAll((rows) =>
    rows.map((r) => {
      const c = (t) => r.querySelector(`[data-testid="${t}"]`);
      return {
        id: r.dataset.priceId,
        model: r.dataset.model,
        state: r.dataset.state,
        shownState: c("price-state").textContent,
        effectiveFrom: c("price-effective-from").dataset.at,
        rates: ["price-input", "price-cache-read", "price-cache-write", "price-output"].map((t) => c(t).dataset.value),
        tiers: JSON.parse(c("price-tiers").dataset.tiers),
        tiersText: c("price-tiers").textContent,
        createdBy: c("price-created-by").textContent,
      };
    }),
  );
}

async function fillRates(scope, prefix, rates) {
  for (const [i, name] of ["input", "cache-read", "cache-write", "output"].entries()) {
    await scope.locator(`[data-testid="${prefix}-${name}"]`).fill(rates[i]);
  }
}

// A datetime-local value ("YYYY-MM-DDTHH:MM") in the page's time zone, `ms` from now.
async function localDateTime(page, ms) {
  return page.evaluate((ms) => {
    const d = new Date(Date.now() + ms);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
  }, ms);
}

// The Models page: the prepared model's version in force and the scheduled one (the superseded one
// only in the full history); a price set through the form (a refused one in the past first, then
// one whose answer is lost and which is submitted again with the same key), listed in force.
async function scenarioModels(page) {
  const A = PRICED_MODEL;
  const B = `e2e-model-b-${randomBytes(4).toString("hex")}`;
  const bRates = ["1000000", "100000", "1250000", "5000000"];
  // A tier above 50,000 prompt tokens: tests/browser.rs (USAGE_B) reports a call above it.
  const bTier = ["50000", "2000000", "200000", "2500000", "10000000"];
  await signInAsAdmin(page);
  const actor = (await byId(page, "whoami-actor").innerText()).trim();
  await byId(page, "nav-models").click();
  await byId(page, "models-view").waitFor({ state: "visible" });
  check(new URL(page.url()).hash === "#view=models", `URL ${page.url()}`);
  await eventually("the prepared model's current and scheduled versions", async () => {
    await noError(page);
    const rows = (await priceRows(page)).filter((r) => r.model === A.model);
    return (rows.length === 2 && rows[0].id === A.v3 && rows[1].id === A.v2) || JSON.stringify(rows);
  });
  let rows = (await priceRows(page)).filter((r) => r.model === A.model);
  const [v3, v2] = rows;
  check(v2.state === "in-force" && v2.shownState === "in force", `v2 ${JSON.stringify(v2)}`);
  check(JSON.stringify(v2.rates) === JSON.stringify(A.v2Rates), `v2 rates ${JSON.stringify(v2.rates)}`);
  check(JSON.stringify(v2.tiers) === JSON.stringify([A.v2Tier]), `v2 tiers ${JSON.stringify(v2.tiers)}`);
  check(v2.tiersText.includes("above 100,000 prompt tokens"), `v2 tiers text "${v2.tiersText}"`);
  check(v3.state === "scheduled" && JSON.stringify(v3.rates) === JSON.stringify(A.v3Rates), `v3 ${JSON.stringify(v3)}`);
  check(Date.parse(v3.effectiveFrom) > Date.now() + 23 * 3600_000, `v3 starts ${v3.effectiveFrom}`);
  check(v2.createdBy !== "" && rows.every((r) => r.id !== A.v1), "v1 listed without the history");

  // The full history: v1 too, superseded, newest first.
  await byId(page, "prices-history").check();
  await eventually("the full history", async () => {
    await noError(page);
    const rs = (await priceRows(page)).filter((r) => r.model === A.model);
    return (rs.length === 3 && rs.map((r) => r.id).join() === [A.v3, A.v2, A.v1].join() && rs[2].state === "superseded" &&
      JSON.stringify(rs[2].rates) === JSON.stringify(A.v1Rates)) || JSON.stringify(rs);
  });
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-models-history.png"), fullPage: true });
  await byId(page, "prices-history").uncheck();
  await eventually("without the history again", async () => (await priceRows(page)).filter((r) => r.model === A.model).length === 2 || "still 3");

  // Every SetModelPrice request's idempotency key, in order; the second is answered but the answer cut.
  const keys = [];
  const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;
  allowError(/Failed to load resource|ERR_FAILED|request failed: POST .*\/SetModelPrice/);
  await page.route("**/tokenledger.v1.LedgerService/SetModelPrice", async (route) => {
    keys.push(UUID.exec(route.request().postDataBuffer()?.toString("latin1") ?? "")?.[0]);
    if (keys.length === 2) {
      await route.fetch();
      await route.abort("failed");
    } else await route.continue();
  });

  // The form: rates, two tiers added and one removed, a start in the past: refused.
  await byId(page, "set-price-model").fill(B);
  await fillRates(page, "set-price", bRates);
  await byId(page, "set-price-add-tier").click();
  await byId(page, "set-price-add-tier").click();
  check((await byId(page, "tier-row").count()) === 2, "two tier rows");
  const [t1, t2] = [byId(page, "tier-row").nth(0), byId(page, "tier-row").nth(1)];
  await t1.locator('[data-testid="tier-above"]').fill("999");
  await t2.locator('[data-testid="tier-above"]').fill(bTier[0]);
  await fillRates(t2, "tier", bTier.slice(1));
  await t1.locator('[data-testid="tier-remove"]').click();
  check((await byId(page, "tier-row").count()) === 1, "the removed tier is still there");
  check((await byId(page, "tier-row").locator('[data-testid="tier-above"]').inputValue()) === bTier[0], "removed the wrong tier");
  await byId(page, "set-price-effective-from").fill(await localDateTime(page, -24 * 3600_000));
  const hint = await byId(page, "set-price-effective-hint").innerText();
  check(/UTC/.test(hint), `effective-from hint "${hint}"`);
  await byId(page, "set-price-submit").click();
  const err = byId(page, "set-price-error");
  await eventually("INVALID_ARGUMENT naming effective_from", async () => {
    const t = (await err.isVisible()) ? await err.innerText() : "";
    return ((await err.getAttribute("data-code")) === "INVALID_ARGUMENT" && (await err.getAttribute("data-fields")) === "effective_from" &&
      t.includes("effective_from") && t.includes("past")) || `set-price-error "${t}"`;
  });
  check((await byId(page, "set-price-effective-from").getAttribute("aria-invalid")) === "true", "the refused field is not marked");
  check(!(await errorText(page)), "the refusal went to the page's error box, not the form");
  check((await priceRows(page)).every((r) => r.model !== B), "the refused price is listed");

  // Now: the answer is lost; the same price submitted again reuses its key and is replayed.
  await byId(page, "set-price-effective-from").fill("");
  await byId(page, "set-price-submit").click();
  await eventually("the unknown outcome", async () => {
    const t = (await err.isVisible()) ? await err.innerText() : "";
    return (t.includes("outcome unknown") && keys[1] !== undefined && t.includes(keys[1])) || `set-price-error "${t}"`;
  });
  await byId(page, "set-price-submit").click();
  let priceId = "";
  await eventually("the price's result line", async () => {
    const t = (await byId(page, "op-result").innerText()).trim();
    priceId = (await byId(page, "op-result").getAttribute("data-price-id")) ?? "";
    return (t.startsWith(`price ${priceId} of ${B}, in force from`) && t.includes("replayed") && priceId !== "") || `op-result "${t}"`;
  });
  await page.unroute("**/tokenledger.v1.LedgerService/SetModelPrice");
  check(keys.length === 3 && keys.every(Boolean) && keys[0] !== keys[1] && keys[1] === keys[2], `keys ${JSON.stringify(keys)}`);
  check(!(await err.isVisible()), "the form still shows an error");
  check((await byId(page, "set-price-model").inputValue()) === "" && (await byId(page, "tier-row").count()) === 0, "the form was not cleared");
  await eventually("the new price listed, in force", async () => {
    await noError(page);
    const rs = (await priceRows(page)).filter((r) => r.model === B);
    const [p] = rs;
    return (rs.length === 1 && p.id === priceId && p.state === "in-force" && JSON.stringify(p.rates) === JSON.stringify(bRates) &&
      JSON.stringify(p.tiers) === JSON.stringify([bTier]) && p.createdBy === actor) || JSON.stringify(rs);
  });
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-models.png"), fullPage: true });

  // The caller reports usage priced by the ledger with both models, for a fresh user.
  console.log(`USAGE_REQUEST ${JSON.stringify({ model: B, priceId })}`);
  const line = await nextStdinLine(60_000);
  check(line.startsWith("USAGE_DONE "), `the caller answered "${line}"`);
  usageDone = JSON.parse(line.slice("USAGE_DONE ".length));
  return `model ${B} priced (${priceId}), keys ${keys.join(", ")}`;
}

async function chartState(page, prefix) {
  const box = byId(page, `${prefix}-chart`);
  const labels = await box.locator(".u-legend .u-series .u-label").allInnerTexts();
  const models = await byId(page, `${prefix}-model-row`).evaluateAll((rows) =>
    rows.map((r) => {
      const v = (t) => r.querySelector(`[data-testid="${t}"]`).dataset.value;
      const p = r.dataset.testid.replace(/-model-row$/, "");
      return {
        model: r.dataset.model,
        events: v(`${p}-model-events`),
        tokens: v(`${p}-model-tokens`),
        input: v(`${p}-model-input`),
        output: v(`${p}-model-output`),
        cacheRead: v(`${p}-model-cache-read`),
        cacheWrite: v(`${p}-model-cache-write`),
      };
    }),
  );
  const dayRows = await byId(page, `${prefix}-row`).evaluateAll((rows) =>
    rows.map((r) => ({ day: r.dataset.day, model: r.dataset.model, partial: r.dataset.partial, tokens: r.querySelector("[data-testid$='-row-tokens']").dataset.value })),
  );
  return {
    canvas: await box.locator("canvas").count(),
    series: await box.getAttribute("data-series"),
    total: await box.getAttribute("data-total"),
    days: await box.getAttribute("data-days"),
    from: await box.getAttribute("data-from"),
    timeZone: await box.getAttribute("data-time-zone"),
    labels: labels.slice(1), // the first is the x axis (the day)
    models,
    dayRows,
  };
}

// SummarizeUsage answers UNIMPLEMENTED until the server side lands: the chart scenario then skips.
class Skip extends Failure {}

// Waits until the chart shows what `want` (model → sums) says, one series per model.
async function expectChart(page, prefix, want, what) {
  const names = Object.keys(want).sort();
  const total = Object.values(want).reduce((s, m) => s + BigInt(m.tokens), 0n);
  await eventually(what, async () => {
    await noError(page);
    const e = byId(page, `${prefix}-error`);
    if (await e.isVisible()) {
      const code = await e.getAttribute("data-code");
      const text = await e.innerText();
      if (code === "UNIMPLEMENTED") throw new Skip(`# SKIP SummarizeUsage answered UNIMPLEMENTED (${text})`);
      throw new Failure(`${prefix}-error: ${text}`);
    }
    const c = await chartState(page, prefix);
    if (c.canvas === 0) return "no canvas";
    if (c.series !== String(names.length) || JSON.stringify([...c.labels].sort()) !== JSON.stringify(names)) {
      return `series ${c.series}, legend ${JSON.stringify(c.labels)}, expected ${JSON.stringify(names)}`;
    }
    if (c.total !== total.toString()) return `total ${c.total}, expected ${total}`;
    for (const m of c.models) {
      const w = want[m.model];
      for (const k of ["events", "tokens", "input", "output", "cacheRead", "cacheWrite"]) {
        if (m[k] !== w[k]) return `${m.model} ${k} ${m[k]}, expected ${w[k]}`;
      }
    }
    // The day rows add up to the same, per model, and none is cut by the range (local midnights).
    for (const name of names) {
      const sum = c.dayRows.filter((r) => r.model === name).reduce((s, r) => s + BigInt(r.tokens), 0n);
      if (sum !== BigInt(want[name].tokens)) return `day rows of ${name} add up to ${sum}`;
    }
    if (c.dayRows.some((r) => r.partial !== "false")) return `partial rows ${JSON.stringify(c.dayRows)}`;
    return true;
  });
  return chartState(page, prefix);
}

// "YYYY-MM-DD" of today in `tz` (+ days).
function dayIn(tz, plusDays = 0) {
  const p = Object.fromEntries(
    new Intl.DateTimeFormat("en-US", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" })
      .formatToParts(new Date()).map((x) => [x.type, x.value]),
  );
  return new Date(Date.UTC(+p.year, +p.month - 1, +p.day + plusDays)).toISOString().slice(0, 10);
}

// The usage charts: the user's (on the user page) and everyone's (the Usage page), one series per
// model, sums matching the calls the caller reported; another time zone (a quarter-hour offset)
// sends its local midnights.
async function scenarioUsageChart(page) {
  check(usageDone, "the models scenario did not get usage from the caller");
  const { user, models, everyone } = usageDone;
  await signInAsAdmin(page);
  const browserZone = await page.evaluate(() => Intl.DateTimeFormat().resolvedOptions().timeZone);
  try {
    await openUser(page, user);
    check((await byId(page, "user-usage-tz").inputValue()) === browserZone, "the default time zone is not the browser's");
    check((await byId(page, "user-usage-to").inputValue()) === dayIn(browserZone), "the default range does not end today");
    check((await byId(page, "user-usage-from").inputValue()) === dayIn(browserZone, -29), "the default range is not 30 days");
    const c = await expectChart(page, "user-usage", models, "the user's chart");
    check(c.days === "30", `${c.days} days`);
    const box = await byId(page, "user-usage-chart").boundingBox();
    check(box && box.width > 300 && box.height >= 200, `chart box ${JSON.stringify(box)}`);
    await byId(page, "user-usage-chart").scrollIntoViewIfNeeded();
    await mkdir(SCREENSHOT_DIR, { recursive: true });
    await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-usage-chart.png"), fullPage: true });

    // Another zone, a quarter-hour offset: the range starts at its local midnight, in UTC.
    const zone = "Asia/Kathmandu";
    await byId(page, "user-usage-tz").fill(zone);
    await byId(page, "user-usage-from").fill(dayIn(zone, -2));
    await byId(page, "user-usage-to").fill(dayIn(zone, 1));
    await byId(page, "user-usage-apply").click();
    await eventually("the chart in Kathmandu", async () => (await byId(page, "user-usage-chart").getAttribute("data-time-zone")) === zone || "not yet");
    const k = await expectChart(page, "user-usage", models, "the user's chart in Kathmandu");
    const [y, m, d] = dayIn(zone, -2).split("-").map(Number);
    const midnight = new Date(Date.UTC(y, m - 1, d) - (5 * 60 + 45) * 60_000).toISOString();
    check(k.from === midnight && k.days === "4", `from ${k.from} (expected ${midnight}), ${k.days} days`);
    // A zone that does not exist is refused by the page, which asks nothing.
    await byId(page, "user-usage-tz").fill("Mars/Olympus_Mons");
    await byId(page, "user-usage-apply").click();
    await eventually("the unknown zone refused", async () => (await byId(page, "user-usage-error").innerText()).includes("Unknown time zone") || "no message");

    // Everyone's usage: the same models, and the CSV user's.
    await byId(page, "nav-usage").click();
    await byId(page, "usage-view").waitFor({ state: "visible" });
    check(new URL(page.url()).hash === "#view=usage", `URL ${page.url()}`);
    check((await byId(page, "usage-tz").inputValue()) === browserZone, "the Usage page's zone is not the browser's");
    await expectChart(page, "usage", everyone, "everyone's chart");
    await page.screenshot({ path: join(SCREENSHOT_DIR, "admin-console-usage-everyone.png"), fullPage: true });
  } catch (e) {
    if (e instanceof Skip) return e.message;
    throw e;
  }
  return `user ${user}: ${Object.keys(models).join(", ")}; everyone: ${Object.keys(everyone).length} models`;
}

async function scenarioNonAdmin(page) {
  await openConsole(page);
  await signIn(page, NON_ADMIN_JWT);
  await eventually("PERMISSION_DENIED in the error box", async () => {
    const err = await errorText(page);
    return err.includes("PERMISSION_DENIED") || `error box: "${err}"`;
  });
  check(await byId(page, "signin-panel").isVisible(), "sign-in panel is gone after a refused sign-in");
  check(!(await byId(page, "console").isVisible()), "console is shown to a non-admin");
  check(!(await byId(page, "user-view").isVisible()), "user view is shown to a non-admin");
  check((await byId(page, "balance").getAttribute("data-value")) === null, "a balance loaded for a non-admin");
  check((await byId(page, "account-row").count()) === 0, "accounts loaded for a non-admin");
  return await errorText(page);
}

const scenarios = [
  ["overview: liability, the chart of credited/used/expired per day, top users", scenarioOverview],
  ["admin signs in, grants 1234, deducts 234, sees balance 1000 and transaction ids", scenarioAdmin],
  ["admin sees lots and an active hold, releases the hold", scenarioHolds],
  ["support: payment by intent, its Stripe event, reversed with a reason", scenarioSupport],
  ["Stripe events: newest first, search by event, user, outcome and mode", scenarioEvents],
  ["CSV export of a whole history, all pages", scenarioCsv],
  ["models: prices in force, scheduled and past; a price set through the form, a refused one", scenarioModels],
  ["usage charts per day by model: a user's and everyone's", scenarioUsageChart],
  ["non-admin JWT is refused with PERMISSION_DENIED", scenarioNonAdmin],
];

async function main() {
  const userDataDir = await mkdtemp(join(tmpdir(), "ledger-e2e-chromium-"));
  let passed = 0;
  let failed = 0;
  let context;
  const watchdog = setTimeout(() => {
    console.log(`admin.e2e: gave up after ${TOTAL_TIMEOUT_MS / 1000}s`);
    console.log(`${passed} passed, ${scenarios.length - passed} failed`);
    process.exit(1);
  }, TOTAL_TIMEOUT_MS);
  watchdog.unref();
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        // Chromium refuses some ports outright (ERR_UNSAFE_PORT); a test server may get one.
        `--explicitly-allowed-ports=${new URL(LEDGER_URL).port || 80}`,
      ],
      viewport: { width: 1400, height: 900 },
      timeout: 60_000,
    });
    context.setDefaultTimeout(STEP_TIMEOUT_MS);
    // Chromium logs a CSP violation as a console error; the event makes sure of it.
    await context.addInitScript(() => {
      document.addEventListener("securitypolicyviolation", (e) =>
        console.error(`CSP violation: ${e.violatedDirective} refused ${e.blockedURI || "(inline)"}`),
      );
    });
    const browserLog = [];
    context.on("page", (page) => {
      page.on("console", (m) => m.type() === "error" && browserLog.push(`console: ${m.text()}`));
      page.on("pageerror", (e) => browserLog.push(`page error: ${e.message}`));
      page.on("requestfailed", (r) => browserLog.push(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
    });
    for (const [i, [name, run]] of scenarios.entries()) {
      browserLog.length = 0;
      allowedErrors = [];
      // Each scenario gets a fresh page: the console keeps its credential in per-tab sessionStorage.
      const page = await context.newPage();
      try {
        const note = await run(page);
        // Let late messages (e.g. a favicon's) arrive before judging.
        await page.waitForTimeout(200);
        const unexpected = browserLog.filter((line) => !allowedErrors.some((re) => re.test(line)));
        if (unexpected.length > 0) throw new Failure(`the page logged errors:\n    ${unexpected.join("\n    ")}`);
        passed++;
        // TAP: a scenario that could not run says so after `# SKIP`.
        console.log(note.startsWith("# SKIP") ? `ok ${i + 1} - ${name} ${note}` : `ok ${i + 1} - ${name} (${note})`);
      } catch (e) {
        failed++;
        console.log(`FAIL ${i + 1} - ${name}: ${e instanceof Failure ? e.message : e.stack || e}`);
        for (const line of browserLog) console.log(`    ${line}`);
        try {
          await mkdir(SCREENSHOT_DIR, { recursive: true });
          const path = join(SCREENSHOT_DIR, `failure-${i + 1}.png`);
          await page.screenshot({ path, fullPage: true });
          console.log(`    screenshot: ${path}`);
        } catch (se) {
          console.log(`    no screenshot: ${se.message}`);
        }
      } finally {
        await page.close().catch(() => {});
      }
    }
  } catch (e) {
    console.log(`admin.e2e: could not run the browser: ${e.stack || e}`);
    failed = scenarios.length - passed;
  } finally {
    await context?.close().catch(() => {});
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed > 0 ? 1 : 0;
}

await main();
