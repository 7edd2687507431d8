// The operator console end to end in a real headless browser (Debian's
// chromium, driven by playwright-core), against a real gateway that
// scripts/browser-test starts: sign in, register a webhook and watch a
// delivery arrive, find a message by wamid and read its timeline, and
// replay a dead-lettered delivery.
//
// GATEWAY_URL and ADMIN_KEY say where the gateway is; SCREENSHOTS, if set,
// is the directory the screenshots go to.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { chromium } from "playwright-core";

const GATEWAY = process.env.GATEWAY_URL ?? "http://127.0.0.1:18400";
const KEY = process.env.ADMIN_KEY ?? "browser-test-key";
const SHOTS = process.env.SCREENSHOTS;
const BUSINESS = "918071234567";
const WAMID = `wamid.browser${Date.now()}`;

// The client's endpoint: records what it is sent, answers `answer`.
const received = [];
let answer = 200;
const receiver = http.createServer((req, res) => {
  let body = "";
  req.on("data", (c) => (body += c));
  req.on("end", () => {
    received.push({ status: answer, body: JSON.parse(body || "{}") });
    res.writeHead(answer, { "content-type": "application/json" });
    res.end(answer === 200 ? '{"ok":true}' : '{"error":"rejected by the test"}');
  });
});

let browser;
let page;

before(async () => {
  await new Promise((ok) => receiver.listen(0, "127.0.0.1", ok));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  page = await browser.newPage({ viewport: { width: 1366, height: 800 } });
  page.setDefaultTimeout(15_000);
});

after(async () => {
  await browser?.close();
  receiver.close();
});

/** A link of the console's navigation. */
function nav(name) {
  return page.getByRole("navigation", { name: "Console" }).getByRole("link", { name, exact: true });
}

async function shot(name) {
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

/** Posts a Datagen delivery report for WAMID, as the BSP would. */
async function bspPosts(status, ts) {
  const body = {
    channel: "whatsapp",
    events: { eventType: "DELIVERY EVENTS", timestamp: ts, date: "2025-06-10", mid: WAMID },
    notificationAttributes: { status, reason: "", code: "" },
    recipient: { to: "919812345678", recipient_type: "individual", reference: { cust_ref: "", messageTag1: "" } },
    sender: { from: BUSINESS },
  };
  const r = await fetch(`${GATEWAY}/webhook/datagen`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200);
}

/** Waits (bounded) until `done()` holds. */
async function until(what, done, ms = 20_000) {
  const end = Date.now() + ms;
  while (!(await done())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Reloads the page until it shows `text` (bounded). */
async function reloadUntil(text) {
  await until(`"${text}" on ${page.url()}`, async () => {
    await page.reload();
    return (await page.getByText(text, { exact: false }).count()) > 0;
  });
}

test("an operator signs in, watches a delivery, reads a timeline and replays a dead delivery", async () => {
  // Sign in: any console page sends a visitor to the sign-in form.
  await page.goto(`${GATEWAY}/console`);
  assert.match(page.url(), /\/console\/login/);
  await shot("login");
  await page.getByLabel("Admin key").fill("not the key");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").getByText("That is not the admin key.").waitFor();
  await page.getByLabel("Admin key").fill(KEY);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  await page.getByRole("heading", { name: "Backlogs" }).waitFor();
  // The keyboard reaches the skip link first, then the navigation.
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Overview");

  // Register a client webhook for the business number.
  await nav("Client webhooks").click();
  await page.getByLabel("Owner (project_owner_id)").fill("owner-browser");
  await page.getByLabel("URL", { exact: true }).fill(`http://127.0.0.1:${receiver.address().port}/hook`);
  await page.getByLabel(/Business numbers/).fill(BUSINESS);
  await page.getByRole("button", { name: "Register" }).click();
  await page.getByText("Signing secret, shown this once").waitFor();
  const secret = await page.locator("#secret").textContent();
  assert.match(secret, /^whsec_/);
  const webhookPage = page.url();

  // A delivery arrives at the client, and its log says so.
  await bspPosts("sent", 1749540000000);
  await until("the delivery of sent", async () => received.some((r) => r.status === 200));
  await page.goto(webhookPage.endsWith("/webhooks") ? `${GATEWAY}/console/webhooks` : webhookPage);
  if (webhookPage.endsWith("/webhooks")) {
    await page.getByRole("link", { name: /\/hook$/ }).click();
  }
  await reloadUntil("success");
  await page.locator("#deliveries").getByText("success").first().waitFor();
  await shot("webhook");

  // Find the message by wamid and read its timeline.
  await nav("Messages").click();
  await page.getByLabel("Wamid, provider message id or phone number").fill(WAMID);
  await page.getByRole("button", { name: "Search" }).click();
  await page.getByRole("link", { name: WAMID }).click();
  await page.getByRole("heading", { name: "Timeline" }).waitFor();
  await page.getByRole("cell", { name: "2025-06-10 07:20:00 UTC" }).waitFor();
  await shot("timeline");

  // The client starts refusing: the next delivery is dead-lettered.
  answer = 400;
  await bspPosts("Delivered", 1749540005000);
  await until("the refused delivery", async () => received.some((r) => r.status === 400));
  await nav("Dead letters").click();
  await reloadUntil("Replay selected");
  await shot("dead-letters");

  // It is fixed; replay the dead delivery after the confirmation.
  answer = 200;
  const before = received.filter((r) => r.status === 200).length;
  await page.getByRole("checkbox", { name: /Select delivery/ }).first().check();
  await page.getByRole("button", { name: "Replay selected" }).click();
  await page.getByRole("heading", { name: "Confirm the replay" }).waitFor();
  await page.getByText("Replay the 1 selected deliveries?").waitFor();
  await page.getByRole("button", { name: "Yes, replay" }).click();
  await page.getByText("Replayed 1 deliveries").waitFor();
  await until("the replayed delivery", async () => received.filter((r) => r.status === 200).length > before);

  // The timeline now shows both statuses.
  await nav("Messages").click();
  await page.getByLabel("Wamid, provider message id or phone number").fill(WAMID);
  await page.keyboard.press("Enter");
  await page.getByRole("link", { name: WAMID }).click();
  await page.getByRole("cell", { name: "2025-06-10 07:20:05 UTC" }).waitFor();

  // The overview refreshes by itself.
  await nav("Overview").click();
  const first = await page.locator("#live .hint").last().textContent();
  await until("the overview to refresh", async () => (await page.locator("#live .hint").last().textContent()) !== first, 15_000);
  await shot("overview");

  // Signing out ends the session.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Admin key").waitFor();
  await page.goto(`${GATEWAY}/console/messages`);
  assert.match(page.url(), /\/console\/login/);
});
