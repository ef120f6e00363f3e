// Drives GET /dashboard in headless Chromium (Debian's /usr/bin/chromium,
// through playwright-core): waits until the charts hold data, looks a user
// up, saves a screenshot, and prints one JSON line with what it saw.
// Run by the Rust test `operate::the_dashboard_works_in_headless_chromium`:
//   node dashboard.mjs BASE_URL TOKEN USER SCREENSHOT_PATH
import { chromium } from "playwright-core";

const [base, token, user, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const out = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const requests = [];
  page.on("request", r => requests.push(r.url()));
  // Content-Security-Policy violations (an inline style or script left in
  // the page) are reported on the console.
  out.csp_violations = [];
  page.on("console", m => { if (/Content Security Policy/i.test(m.text())) out.csp_violations.push(m.text()); });
  const resp = await page.goto(`${base}/dashboard?token=${encodeURIComponent(token)}`);
  out.status = resp.status();
  // The token was exchanged for a cookie: it is no longer in the address.
  out.url = page.url();

  // The charts hold data once two polls have produced a rate; wait for a
  // point where consumes were allowed (the test drives load meanwhile).
  await page.waitForFunction(() => {
    const c = window.dashboard && window.dashboard.charts.consumes.data;
    return c && c[0].length >= 2 && c[1].some(v => v > 0);
  }, null, { timeout: 20000 });
  out.points = await page.evaluate(() => Object.fromEntries(
    Object.entries(window.dashboard.charts).map(([k, c]) => [k, c.data[0].length])));
  out.max_allowed_per_s = await page.evaluate(() => Math.max(...window.dashboard.charts.consumes.data[1]));
  out.banner = await page.textContent("#banner");
  out.top_rows = await page.locator("#top tbody tr").count();
  out.top_header = (await page.textContent("#top thead")).trim();
  out.legend_values = await page.$$eval(".u-legend .u-value", els => els.map(e => e.textContent));
  out.y_min = await page.evaluate(() => window.dashboard.charts.consumes.plot.scales.y.min);
  out.canvases = await page.locator("canvas").count();
  await page.fill("#user", user);
  await page.click("#lookup button");
  await page.waitForFunction(() => document.getElementById("diagnose").dataset.status, null, { timeout: 10000 });
  out.lookup_status = Number(await page.getAttribute("#diagnose", "data-status"));
  out.lookup = JSON.parse(await page.textContent("#diagnose"));
  out.external_requests = requests.filter(u => !u.startsWith(base));
  // For docs/dashboard.png: DASHBOARD_WAIT_MS=60000 keeps the page open
  // (under load) long enough to draw a minute of points.
  if (process.env.DASHBOARD_WAIT_MS) await page.waitForTimeout(Number(process.env.DASHBOARD_WAIT_MS));
  await page.screenshot({ path: shot, fullPage: true });
  out.page_errors = await page.evaluate(() => window.dashboard.lastError);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
