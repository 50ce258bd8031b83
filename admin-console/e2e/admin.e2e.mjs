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
//   SCREENSHOT_DIR  where screenshots go (default test-artifacts)
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
// Prints one line per scenario and then "N passed, M failed"; exits 1 on any failure.
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { randomBytes } from "node:crypto";
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

  // A user without an account opens with balance 0.
  await openUser(page, user);
  await expectBalance(page, 0, "opening a new user");

  await write(page, "grant", 1234, "e2e grant");
  await expectBalance(page, 1234, "the grant");
  await eventually("the grant's result line", async () => {
    const t = await byId(page, "op-result").innerText();
    return /^transaction \S+, balance 1,?234$/.test(t.trim()) || `op-result is "${t}"`;
  });
  await eventually("a grant row of 1234 in the history", async () => {
    const rows = await historyRows(page);
    const g = rows.find((r) => r.kind === "grant");
    return (
      (rows.length === 1 && g && g.amount === "1234" && g.reason === "e2e grant" && g.balanceAfter === "1234") ||
      JSON.stringify(rows)
    );
  });

  await write(page, "deduct", 234, "e2e deduct");
  await expectBalance(page, 1000, "the deduction");
  await eventually("the deduction on top of the history", async () => {
    const rows = await historyRows(page);
    const [d, g] = rows;
    return (
      (rows.length === 2 &&
        d.kind === "deduction" && d.amount === "-234" && d.balanceAfter === "1000" && d.reason === "e2e deduct" &&
        d.sequence === "2" && g.kind === "grant" && g.sequence === "1" && d.createdBy === actor) ||
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

  // The account is findable by prefix, with its balance.
  await byId(page, "accounts-prefix").fill(user);
  await byId(page, "accounts-search").click();
  await eventually("the account in the search results", async () => {
    const rows = await byId(page, "account-row").evaluateAll((rs) =>
      rs.map((r) => [r.dataset.userId, r.querySelector('[data-testid="account-balance"]').dataset.value]),
    );
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
  ["admin signs in, grants 1234, deducts 234, sees balance 1000", scenarioAdmin],
  ["admin sees lots and an active hold, releases the hold", scenarioHolds],
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
    const browserLog = [];
    context.on("page", (page) => {
      page.on("console", (m) => m.type() === "error" && browserLog.push(`console: ${m.text()}`));
      page.on("pageerror", (e) => browserLog.push(`page error: ${e.message}`));
      page.on("requestfailed", (r) => browserLog.push(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
    });
    for (const [i, [name, run]] of scenarios.entries()) {
      browserLog.length = 0;
      // Each scenario gets a fresh page: the console keeps its credential in per-tab sessionStorage.
      const page = await context.newPage();
      try {
        const note = await run(page);
        passed++;
        console.log(`ok ${i + 1} - ${name} (${note})`);
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
