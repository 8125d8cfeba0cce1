// Drive the vecsearch page in headless Chromium through what a user does on a day with a
// token: open the printed /?token= address, search, filter, fail an upload, go Back and
// Forward, search from a result, reload, open an original; then /docs and /redoc offline.
// Prints one JSON object on stdout.
//
//   node page_flows.mjs BASE TOKEN IMAGE BAD_FILE FOLDER SCREENSHOT
//
// Run by tests/test_browser.py; needs `npm ci` here and Debian's /usr/bin/chromium
// (override with $CHROMIUM). playwright-core never downloads a browser.
import { launch } from "./launch.mjs";

const [base, token, image, badFile, folder, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error("usage: node page_flows.mjs BASE TOKEN IMAGE BAD_FILE FOLDER SCREENSHOT");
  process.exit(2);
}

const { browser, close } = await launch();
const consoleErrors = [];
const external = [];  // every request to anything but the server: there must be none
const out = { consoleErrors, external };
try {
  await browser.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(base) || url.startsWith("blob:") || url.startsWith("data:")) return route.continue();
    external.push(url);
    return route.abort();
  });
  const page = await browser.newPage();
  page.on("console", (m) => {
    // A failed upload's 422 is logged by Chromium as a failed resource load: expected here.
    if (m.type() === "error" && !/status of 422/.test(m.text())) consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  page.setDefaultTimeout(60_000);

  const ids = () => page.$$eval("#grid .result", (cards) => cards.map((c) => +c.dataset.id));
  const cards = () => page.$$eval("#grid .card", (cards) => cards.map((c) => ({
    id: +c.dataset.id,
    text: c.querySelector(".meta").innerText,
    taught: c.querySelector(".taught")?.textContent ?? null,
    predictions: [...c.querySelectorAll(".pred")].map((p) => p.textContent),
    folder: c.querySelector(".folder")?.textContent ?? null,
    original: c.querySelector("a.open")?.getAttribute("href") ?? null,
  })));
  const settled = async (caption) => {
    await page.waitForFunction((cap) => /results?$|filters\.$/.test(document.getElementById("status").textContent)
      && document.getElementById("query-caption")?.textContent.startsWith(cap), caption);
    await page.waitForFunction(() => [...document.querySelectorAll("#grid img")].every((i) => i.complete));
  };
  const where = () => page.evaluate(() => location.pathname + location.search);

  // 1. The address `vecsearch serve` printed: the token is taken, kept for the tab, and leaves the address bar.
  await page.goto(`${base}/?token=${encodeURIComponent(token)}`, { waitUntil: "load" });
  await page.waitForFunction(() => /images indexed/.test(document.getElementById("stats").textContent));
  out.addressAfterLoad = await where();
  out.stored = await page.evaluate(() => sessionStorage.getItem("vecsearch-token"));
  await page.selectOption("#k", "48");

  // 2. An upload, unfiltered.
  await page.setInputFiles("#file", image);
  await settled("Similar to ");
  out.unfiltered = await ids();
  out.addressUnfiltered = await where();

  // 3. The same upload, filtered to one folder.
  await page.fill("#f-under", folder);
  await page.click("#f-apply");
  await page.waitForFunction((n) => document.querySelectorAll("#grid .result").length !== n, out.unfiltered.length);
  await settled("Similar to ");
  out.filtered = await cards();
  out.addressFiltered = await where();
  await page.screenshot({ path: screenshot, fullPage: true });

  // 4. A bad upload: its error shows and the results before it go.
  await page.setInputFiles("#file", badFile);
  await page.waitForFunction(() => document.getElementById("status").className === "error");
  out.errorStatus = await page.textContent("#status");
  out.afterError = { cards: (await ids()).length, moreHidden: await page.$eval("#more", (m) => m.hidden),
                     query: await page.$eval("#query", (q) => q.children.length) };

  // 5. Back: the unfiltered results again, filters emptied; Forward: the filtered ones.
  await page.goBack();
  await page.waitForFunction((n) => document.querySelectorAll("#grid .result").length === n, out.unfiltered.length);
  out.back = { ids: await ids(), under: await page.inputValue("#f-under"), address: await where() };
  await page.goForward();
  await page.waitForFunction((n) => document.querySelectorAll("#grid .result").length === n, out.filtered.length);
  out.forward = { ids: await ids(), under: await page.inputValue("#f-under"), address: await where() };

  // 6. Search from a result (filters kept), then reload: the address alone brings it back.
  const clicked = out.filtered[0].id;
  out.clicked = clicked;
  await page.click(`#grid .result[data-id="${clicked}"]`);
  await settled(`Similar to #${clicked} `);
  out.fromResult = { ids: await ids(), address: await where(), caption: await page.textContent("#query-caption") };
  await page.reload({ waitUntil: "load" });
  await settled(`Similar to #${clicked} `);
  out.reloaded = { ids: await ids(), address: await where(), caption: await page.textContent("#query-caption"),
                   under: await page.inputValue("#f-under") };

  // 7. "open original": the link fetches the file itself.
  out.originalFetch = await page.evaluate(async () => {
    const href = document.querySelector("#grid a.open").href;
    const r = await fetch(href);
    return { status: r.status, type: r.headers.get("content-type"), bytes: (await r.arrayBuffer()).byteLength,
             target: document.querySelector("#grid a.open").target };
  });

  // 8. A tab without the token (fresh sessionStorage) is told which address to open.
  const bare = await browser.newPage();
  await bare.goto(`${base}/`, { waitUntil: "load" });
  await bare.waitForFunction(() => document.getElementById("stats").className === "error");
  out.withoutToken = await bare.textContent("#stats");

  // 9. /docs and /redoc render with nothing from elsewhere.
  const docs = await browser.newPage();
  const docsErrors = [];
  docs.on("console", (m) => { if (m.type() === "error") docsErrors.push(m.text()); });
  docs.on("pageerror", (e) => docsErrors.push(String(e)));
  out.docsErrors = docsErrors;
  await docs.goto(`${base}/docs`, { waitUntil: "load" });
  await docs.waitForSelector(".swagger-ui .info .title");
  await docs.waitForSelector(".opblock");
  out.docs = { title: await docs.textContent(".swagger-ui .info .title"),
               operations: await docs.$$eval(".opblock-summary-path", (p) => p.map((e) => e.textContent.replace(/\u200b/g, ""))),
               failed: await docs.$$eval(".errors-wrapper", (e) => e.map((x) => x.innerText)) };
  await docs.goto(`${base}/redoc`, { waitUntil: "load" });
  await docs.waitForSelector("h1");
  out.redoc = { title: await docs.textContent("h1") };

  console.log(JSON.stringify(out));
} finally {
  await close();
}
