// The unweave feature browser: a static page over data/*.js files written by
// `unweave features`. Each data file calls unweaveData(key, payload); files are loaded
// lazily with <script> tags (works from file:// and from any web server). Views follow the
// URL hash: #latent=N, #search=TOKEN, or the paged list of all latents.
"use strict";

const cache = new Map();
const waiting = new Map();

window.unweaveData = (key, payload) => {
  cache.set(key, payload);
  const w = waiting.get(key);
  if (w) w.resolve(payload);
};

function load(key, src) {
  if (cache.has(key)) return Promise.resolve(cache.get(key));
  if (waiting.has(key)) return waiting.get(key).promise;
  let resolve, reject;
  const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
  waiting.set(key, { promise, resolve, reject });
  const script = document.createElement("script");
  script.src = src;
  script.onerror = () => { waiting.delete(key); reject(new Error(`could not load ${src}`)); };
  document.head.appendChild(script);
  return promise;
}

// --- small DOM helpers -------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
const fmt = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toPrecision(digits));
const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toPrecision(3)}%`);
const shown = (token) => token.replace(/\n/g, "↵").replace(/\t/g, "⇥");
const quoted = (token) => `"${shown(token)}"`;
const latentLink = (i, text) => el("a", { href: `#latent=${i}` }, text === undefined ? String(i) : text);

function table(headers, rows) {
  return el("div", { class: "table-wrap" },
    el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))));
}

// --- views ---------------------------------------------------------------------------
let meta = null;
const view = () => document.getElementById("view");

function show(key, ...nodes) {
  view().replaceChildren(...nodes.flat());
  document.body.dataset.view = key; // tests and the bench wait for this
}

function context(ctx, maxAct) {
  const line = el("div", { class: "context" });
  ctx.t.forEach((tok, j) => {
    const a = ctx.a[j];
    const alpha = a && maxAct > 0 ? Math.min(1, a / maxAct) : 0;
    const span = el("span", { class: j === ctx.i ? "tok focus" : "tok", title: `${quoted(tok)}: ${fmt(a)}` }, shown(tok));
    if (alpha > 0) span.style.background = `rgba(255, 120, 0, ${alpha.toFixed(3)})`;
    span.dataset.act = a === null ? "" : String(a);
    line.append(span);
  });
  line.prepend(el("span", { class: "value" }, fmt(ctx.v)));
  return line;
}

function histogram(page) {
  const [lo, hi, bins] = meta.hist_log10;
  const counts = page.hist.counts;
  const W = 640, H = 160, pad = 32, bw = (W - 2 * pad) / counts.length, top = Math.max(...counts);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 24}`);
  svg.setAttribute("class", "histogram");
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(svg.namespaceURI, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
  };
  const edge = (b) => 10 ** (lo + ((hi - lo) * b) / bins);
  counts.forEach((c, j) => {
    const h = (H - pad) * (c / top);
    add("rect", { x: pad + j * bw, y: H - h, width: Math.max(bw - 0.5, 0.5), height: h, fill: "#e67a00" });
  });
  const ticks = Math.min(6, counts.length);
  for (let t = 0; t <= ticks; t++) {
    const j = Math.round((counts.length * t) / ticks);
    add("text", { x: pad + j * bw, y: H + 16, "text-anchor": "middle", "font-size": 11 }, fmt(edge(page.hist.first + j), 2));
  }
  add("text", { x: 4, y: 14, "font-size": 11 }, `max ${top} tokens per bin`);
  return el("figure", {}, svg, el("figcaption", {}, "Activation histogram (nonzero activations, log-spaced bins)"));
}

function tokenTable(title, rows) {
  return el("div", { class: "tokens" }, el("h4", {}, title),
    table(["token", "logit change"], rows.map(([tok, v]) => [el("code", {}, quoted(tok)), fmt(v)])));
}

async function showLatent(i) {
  if (!Number.isInteger(i) || i < 0 || i >= meta.n_latents) {
    show("error", el("p", { class: "error" },
      `Latent ${i} is out of range: this dictionary has ${meta.n_latents} latents (0 to ${meta.n_latents - 1}).`));
    return;
  }
  const page = await load(`latent:${i}`, `data/latents/${i}.js`);
  const nav = el("p", { class: "nav" },
    i > 0 ? latentLink(i - 1, "← previous") : "", " ",
    i < meta.n_latents - 1 ? latentLink(i + 1, "next →") : "");
  const head = el("h2", {}, `Latent ${i}`);
  const stats = el("p", { class: "stats" },
    `density ${pct(page.density)} (${page.fires} of ${meta.tokens} tokens) · max ${fmt(page.max)} · mean when firing ${fmt(page.mean)}`);
  if (!page.fires) {
    show(`latent:${i}`, nav, head, stats, el("p", { class: "empty" },
      `Latent ${i} never fired on the ${meta.tokens} tokens of ${meta.text || "this text"}: there are no contexts to show. ` +
      "Run unweave features on more (or other) text to see it."),
    outputs(page), neighbours(page));
    return;
  }
  const top = el("section", {}, el("h3", {}, "Top activations"),
    page.top.map((c) => context(c, page.max)));
  const bands = el("section", {}, el("h3", {}, "Lower activations (a uniform sample of firings, by quantile)"),
    page.bands.map((b) => el("div", { class: "band" }, el("h4", {}, b.label), b.contexts.map((c) => context(c, page.max)))));
  show(`latent:${i}`, nav, head, stats, el("div", { class: "row" }, histogram(page), outputs(page)), top, bands, neighbours(page));
}

function outputs(page) {
  const parts = [el("h3", {}, "Output tokens (decoder direction through the final norm and unembedding)"),
    el("div", { class: "pair" }, tokenTable("promotes", page.promoted), tokenTable("suppresses", page.suppressed))];
  if (page.check) {
    parts.push(el("p", { class: "check" },
      `Checked by ablation: removing the latent at its top activation (row ${page.check.row}, position ${page.check.pos}) ` +
      `changes the logits with correlation ${fmt(page.check.correlation)} to the direct effect.`),
    el("div", { class: "pair" }, tokenTable("measured: promotes", page.check.promoted),
      tokenTable("measured: suppresses", page.check.suppressed)));
  }
  return el("section", { class: "outputs" }, parts);
}

function neighbours(page) {
  return el("section", {}, el("h3", {}, "Nearest latents (decoder cosine)"),
    el("p", { class: "neighbours" }, page.neighbours.map(([j, c]) => el("span", {}, latentLink(j), ` ${fmt(c, 2)}`))));
}

async function showSearch(query) {
  const index = await load("search", "data/search.js");
  const exact = index.filter((e) => e[0] === query);
  const loose = query.trim().toLowerCase();
  const matches = exact.length ? exact : index.filter((e) => e[0].trim().toLowerCase() === loose);
  const head = el("h2", {}, `Latents that fire on ${quoted(query)}`);
  if (!matches.length) {
    show("search", head, el("p", { class: "empty" },
      `No token ${quoted(query)} occurs in the ${meta.tokens} tokens of ${meta.text || "this text"} ` +
      `(${index.length} distinct tokens). Tokens usually carry their leading space, e.g. " king".`));
    return;
  }
  show("search", head, el("p", {}, "Ranked by the latent's mean activation on the token's occurrences, relative to its own maximum on the text."),
    matches.map(([tok, n, latents]) => el("section", { class: "match" },
      el("h3", {}, `${quoted(tok)}: ${n} occurrences`),
      table(["latent", "mean / latent max", "fires on", "mean activation", "top token of the latent"],
        latents.map(([l, rel, frac, mean]) => [latentLink(l), fmt(rel), pct(frac), fmt(mean), el("code", {}, quoted(meta.top_token[l]))])))));
}

function showAll(pageNo) {
  const per = 100, n = meta.n_latents, pages = Math.ceil(n / per);
  const p = Math.min(Math.max(pageNo, 0), pages - 1);
  const rows = [];
  for (let i = p * per; i < Math.min(n, (p + 1) * per); i++) {
    rows.push([latentLink(i), pct(meta.density[i]), fmt(meta.max[i]), meta.top_token[i] ? el("code", {}, quoted(meta.top_token[i])) : "never fires"]);
  }
  const nav = el("p", { class: "nav" },
    p > 0 ? el("a", { href: `#page=${p - 1}` }, "← previous") : "", ` latents ${p * per} to ${Math.min(n, (p + 1) * per) - 1} of ${n} `,
    p < pages - 1 ? el("a", { href: `#page=${p + 1}` }, "next →") : "");
  show("all", nav, table(["latent", "density", "max activation", "token at its top activation"], rows), nav.cloneNode(true));
}

function route() {
  const hash = decodeURIComponent(location.hash.slice(1));
  const [kind, ...rest] = hash.split("=");
  const value = rest.join("=");
  const done = kind === "latent" ? showLatent(Number(value))
    : kind === "search" ? showSearch(value)
    : Promise.resolve(showAll(kind === "page" ? Number(value) : 0));
  done.catch((err) => show("error", el("p", { class: "error" }, String(err.message || err))));
}

document.getElementById("search").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = document.getElementById("query").value;
  location.hash = /^\s*\d+\s*$/.test(q) ? `latent=${q.trim()}` : `search=${encodeURIComponent(q)}`;
});

load("meta", "data/meta.js").then((m) => {
  meta = m;
  document.getElementById("title").textContent = `Latents of ${m.dictionary}`;
  document.getElementById("about").textContent =
    `${m.kind} at ${m.site} of ${m.model}: ${m.n_latents} latents, ${m.live_latents} firing on ${m.tokens} tokens of ${m.text}.`;
  window.addEventListener("hashchange", route);
  route();
}).catch((err) => show("error", el("p", { class: "error" }, `${err.message}: run unweave features to write the data folder.`)));
