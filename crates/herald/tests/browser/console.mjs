// Drives Herald's console in a real browser (Debian's Chromium, through
// Playwright), as tests/it/console.rs asks: signs in with an admin key,
// finds a notification sent through the API, replays a dead letter, holds
// a circuit open by hand. Every page is also opened at a phone's width,
// checked for errors in the browser console, horizontal overflow, and
// accessibility (axe-core, WCAG 2 A and AA). A screenshot of each step is
// written to SHOTS. Prints a JSON summary; exits 1 on any failure.
//
// Env: HERALD_URL, HERALD_KEY (admin), SHOTS, PHONE, NOTIFICATION_ID,
// DEAD_ID (a dead delivery), DEAD_NOTIFICATION_ID (its notification),
// CHROMIUM (default /usr/bin/chromium).

import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";

const require = createRequire(import.meta.url);
const axePath = require.resolve("axe-core/axe.min.js");

const env = (name) => {
  const v = process.env[name];
  if (!v) { throw new Error(`${name} is not set`); }
  return v;
};
const base = env("HERALD_URL");
const key = env("HERALD_KEY");
const shots = env("SHOTS");
const phone = env("PHONE");
const notificationId = env("NOTIFICATION_ID");
const deadId = env("DEAD_ID");
const deadNotificationId = env("DEAD_NOTIFICATION_ID");
mkdirSync(shots, { recursive: true });

const failures = [];
const pages = [];
const fail = (what) => { failures.push(what); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

// A browser context at one width, with its console watched. bypassCSP only
// lets the test inject axe-core; the pages' own script runs under their CSP
// in the phone pass, which does not inject anything before loading.
async function open(width, height, bypassCSP) {
  const context = await browser.newContext({ viewport: { width, height }, bypassCSP });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") { fail(`${width}px ${page.url()}: console error: ${m.text()}`); }
  });
  page.on("pageerror", (e) => fail(`${width}px ${page.url()}: page error: ${e.message}`));
  page.on("response", (r) => {
    if (r.status() >= 500) { fail(`${width}px ${r.url()}: HTTP ${r.status()}`); }
  });
  return { context, page };
}

async function check(page, label, width) {
  const overflow = await page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  if (overflow > 1) { fail(`${label} at ${width}px: the page is ${overflow}px wider than the screen`); }
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }),
  );
  for (const v of result.violations) {
    fail(`${label} at ${width}px: axe ${v.id} (${v.impact}): ${v.help}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
  }
  await page.screenshot({ path: `${shots}/${label}-${width}.png`, fullPage: true });
  pages.push({ label, width, url: page.url(), violations: result.violations.length });
}

async function signIn(page) {
  await page.goto(`${base}/console`);
  if (!page.url().endsWith("/console/sign-in")) { fail(`/console did not lead to the sign-in page: ${page.url()}`); }
  await page.fill("#key", key);
  await page.fill("#who", "Browser Test");
  await Promise.all([page.waitForURL("**/console/now"), page.click("button[type=submit]")]);
}

try {
  // Desktop: the whole story.
  {
    const { context, page } = await open(1280, 900, true);
    await page.goto(`${base}/console/sign-in`);
    await check(page, "01-sign-in", 1280);
    await signIn(page);
    if (!(await page.isVisible("#sandbox-banner"))) { fail("no sandbox banner on the Now page"); }
    await check(page, "02-now", 1280);

    await page.click("nav >> text=Find");
    await page.fill("#q", phone);
    await Promise.all([page.waitForURL("**/console/find?*"), page.click("form[role=search] button")]);
    await check(page, "03-find", 1280);
    await Promise.all([page.waitForURL(`**/console/notifications/${notificationId}`), page.click(`a[href="/console/notifications/${notificationId}"]`)]);
    const timeline = await page.textContent("main");
    if (!timeline.includes("sent") || !timeline.includes("attempt 1 through")) {
      fail(`the notification's page shows no sent attempt: ${timeline.slice(0, 400)}`);
    }
    await check(page, "04-notification", 1280);

    await page.click("nav >> text=Dead letters");
    await page.waitForURL("**/console/dead-letters");
    await check(page, "05-dead-letters", 1280);
    await Promise.all([page.waitForURL("**/console/dead-letters?replayed=1"), page.click(`button[aria-label="Replay ${deadId}"]`)]);
    if (!(await page.textContent("main")).includes("Replayed 1")) { fail("no word that the dead letter was replayed"); }
    await check(page, "06-replayed", 1280);
    // And sees it delivered: its notification's page, until it says sent.
    let delivered = false;
    for (let i = 0; i < 40 && !delivered; i++) {
      await page.goto(`${base}/console/notifications/${deadNotificationId}`);
      delivered = (await page.textContent(".delivery h3")).includes("sent");
      if (!delivered) { await page.waitForTimeout(250); }
    }
    if (!delivered) { fail("the replayed dead letter's page never said sent"); }
    await check(page, "06b-replayed-delivered", 1280);

    await page.click("nav >> text=Providers");
    await page.waitForURL("**/console/providers");
    await page.fill("#reason-twilio", "browser test: vendor incident");
    await Promise.all([page.waitForURL("**/console/providers?done=*"), page.click("#hold-twilio")]);
    const held = await page.textContent("main");
    if (!held.includes("held by Browser Test")) { fail(`twilio does not show as held: ${held.slice(0, 400)}`); }
    await check(page, "07-held", 1280);
    await context.close();
  }
  // A phone's width: every page reads without sideways scrolling.
  {
    const { context, page } = await open(390, 844, true);
    await signIn(page);
    for (const [label, path] of [
      ["11-now", "/console/now"],
      ["12-find", `/console/find?q=${encodeURIComponent(phone)}`],
      ["13-notification", `/console/notifications/${notificationId}`],
      ["14-dead-letters", "/console/dead-letters"],
      ["15-providers", "/console/providers"],
    ]) {
      await page.goto(`${base}${path}`);
      await check(page, label, 390);
    }
    await context.close();
  }
  // Under the pages' own CSP (nothing injected): the Now page's script
  // runs and refreshes without a violation or an error.
  {
    const { context, page } = await open(1024, 768, false);
    await signIn(page);
    const refreshed = page.waitForResponse((r) => r.url().includes("/console/now?part=1"), { timeout: 15000 });
    await refreshed;
    await page.waitForTimeout(300);
    await context.close();
  }
} catch (e) {
  fail(`the run stopped: ${e.stack || e}`);
} finally {
  await browser.close();
}

console.log(JSON.stringify({ pages, failures }, null, 1));
process.exit(failures.length === 0 ? 0 : 1);
