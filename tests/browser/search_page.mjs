// Drive the vecsearch page in headless Chromium: upload an image, read the grid, ask why a
// result is similar, click a result, read the new grid, ask why again, save a screenshot.
// Prints one JSON object on stdout: what it saw, the paths the page requested, and whether the
// write controls (adding by drop, a remove button per card) are shown.
//
//   node search_page.mjs URL IMAGE SCREENSHOT [K] [ADD,FILES,...]
//
// With files to add (a server taking writes), they are dropped onto the add zone (a real drop
// event carrying them), the per-file report is read, then the first card's remove is accepted.
//
// Run by tests/test_browser.py; needs `npm ci` here and Debian's /usr/bin/chromium
// (override with $CHROMIUM). playwright-core never downloads a browser.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { launch } from "./launch.mjs";

const [url, image, screenshot, k = "12", adds = ""] = process.argv.slice(2);
if (!url || !image || !screenshot) {
  console.error("usage: node search_page.mjs URL IMAGE SCREENSHOT [K]");
  process.exit(2);
}

const { browser, close } = await launch();
const consoleErrors = [];
try {
  const page = await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  const requested = [];
  page.on("request", (r) => { const u = new URL(r.url()); if (u.protocol.startsWith("http")) requested.push(u.pathname); });
  page.setDefaultTimeout(60_000);
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => /images indexed/.test(document.getElementById("stats").textContent));
  await page.selectOption("#k", k);

  const grid = async () => page.$$eval("#grid .result", (cards) => cards.map((c) => ({
    id: +c.dataset.id,
    text: c.innerText,
    imgLoaded: c.querySelector("img").complete && c.querySelector("img").naturalWidth > 0,
  })));
  const waitForGrid = async (caption) => {
    await page.waitForFunction((cap) => document.getElementById("status").textContent.endsWith("results")
      && document.getElementById("query-caption")?.textContent.startsWith(cap), caption);
    // Thumbnails load lazily; wait until every visible one has arrived.
    await page.waitForFunction(() => [...document.querySelectorAll("#grid img")].every((i) => i.complete));
    return grid();
  };

  // "why similar?" on a card: both heatmaps (the query's and the result's) must load.
  const explain = async (id) => {
    await page.click(`#grid .why[data-id="${id}"]`);
    await page.waitForFunction((want) => {
      const panel = document.getElementById("explain");
      const imgs = [document.getElementById("explain-query"), document.getElementById("explain-result")];
      return !panel.hidden && panel.dataset.id === String(want)
        && imgs.every((i) => i.getAttribute("src") && i.complete && i.naturalWidth > 0);
    }, id);
    return page.evaluate(() => ({
      title: document.getElementById("explain-title").textContent,
      images: ["explain-query", "explain-result"].map((name) => {
        const i = document.getElementById(name);
        return { src: i.getAttribute("src"), width: i.naturalWidth, height: i.naturalHeight };
      }),
      captions: [...document.querySelectorAll("#explain figcaption")].map((c) => c.textContent),
    }));
  };

  await page.setInputFiles("#file", image);
  const upload = await waitForGrid("Similar to ");
  const caption1 = await page.textContent("#query-caption");
  const why1 = await explain(upload[0].id);

  await page.click(`#grid .result[data-id="${upload[1].id}"]`);
  const clicked = upload[1].id;
  const similar = await waitForGrid(`Similar to #${clicked} `);
  const caption2 = await page.textContent("#query-caption");
  const panelHiddenAfterSearch = await page.$eval("#explain", (p) => p.hidden);
  const why2 = await explain(similar[0].id);
  await page.screenshot({ path: screenshot, fullPage: true });
  const writeControls = await page.evaluate(() => ({
    addHidden: document.getElementById("add").hidden,
    addInput: !!document.querySelector("#add input[type=file][multiple]"),
    removeButtons: document.querySelectorAll("#grid .remove").length,
    removeHidden: [...document.querySelectorAll("#grid .remove")].map((b) => b.hidden),
  }));

  let added = null, removed = null;
  if (adds) {
    const items = adds.split(",").map((f) => [basename(f), readFileSync(f).toString("base64")]);
    const dt = await page.evaluateHandle((list) => {
      const dt = new DataTransfer();
      for (const [name, b64] of list) dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name));
      return dt;
    }, items);
    await page.dispatchEvent("#add-drop", "drop", { dataTransfer: dt });
    await page.waitForFunction((n) => document.querySelectorAll("#add-report li").length === n
      && /added\.$/.test(document.getElementById("add-status").textContent), items.length);
    added = await page.$$eval("#add-report li", (lis) => lis.map((li) => ({ text: li.textContent, status: li.className })));
    page.on("dialog", (d) => d.accept());
    const target = similar[0].id;
    await page.click(`#grid .remove[data-id="${target}"]`);
    await page.waitForFunction((id) => !document.querySelector(`#grid .result[data-id="${id}"]`), target);
    removed = { id: target, status: await page.textContent("#status") };
  }
  console.log(JSON.stringify({ upload, caption1, why1, clicked, similar, caption2, panelHiddenAfterSearch, why2, consoleErrors, requested, writeControls, added, removed }));
} finally {
  await close();
}
