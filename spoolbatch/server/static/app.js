/* spoolbatch's web page: the jobs list, a job's story, workers and their GPUs, submit.
 * Every call is one the SDK or the CLI could make: OpenAI's Files and Batches API with the key,
 * and the page's own /v1/spoolbatch/ routes (a job's story, retry, workers, GPU history).
 * Charts are uPlot (vendored in this folder, MIT). No other dependency, nothing from the network. */
"use strict";
(function () {
  const KEY = "spoolbatch_key";
  if (location.hash.startsWith("#key=")) {
    localStorage.setItem(KEY, decodeURIComponent(location.hash.slice(5)));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const $ = (sel, el) => (el || document).querySelector(sel);
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) =>
    ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const FINAL = new Set(["completed", "failed", "expired", "cancelled"]);
  const ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/score",
    "/v1/rerank"];
  const COLORS = ["#2f6fdb", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700"];
  const REFRESH_MS = 3000;

  // --- numbers people compare: thousands separators and units --------------------------------
  const nf = (digits) => new Intl.NumberFormat(undefined, {maximumFractionDigits: digits, minimumFractionDigits: 0});
  const N0 = nf(0), N1 = nf(1);
  const num = (n) => (n == null ? "-" : N0.format(n));
  const rate = (x, unit) => (x == null || !isFinite(x) ? "-" : (x < 100 ? N1 : N0).format(x) + " " + unit);
  const pct = (x) => (x == null ? "-" : N1.format(x) + " %");
  const gib = (b) => (b == null ? "-" : N1.format(b / 1073741824) + " GiB");
  function dur(s) {
    if (s == null || !isFinite(s)) return "-";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + " min";
    return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
  }
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
  const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "-");
  const now = () => Date.now() / 1000;
  const jobOf = (batchId) => batchId.replace(/^batch_/, "");
  const words = (status) => String(status || "").replace(/_/g, " ");

  // --- the API, with the key ------------------------------------------------------------------
  let asking = false;
  function headers(extra) {
    const key = localStorage.getItem(KEY);
    return Object.assign({}, extra || {}, key ? {Authorization: "Bearer " + key} : {});
  }
  async function api(path, opts) {
    opts = opts || {};
    const r = await fetch(path, Object.assign({}, opts, {headers: headers(opts.headers)}));
    const type = r.headers.get("content-type") || "";
    const body = type.includes("json") ? await r.json() : await r.text();
    if (r.status === 401 && !asking) {
      asking = true;
      const k = prompt("This server needs an API key");
      if (k) { localStorage.setItem(KEY, k.trim()); location.reload(); }
    }
    if (!r.ok) {
      const err = new Error((body && body.error && body.error.message) || r.status + " " + r.statusText);
      err.status = r.status;
      throw err;
    }
    return body;
  }
  const post = (path, body) => api(path, {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body || {})});
  function showError(e) { $("#err").textContent = e ? String(e.message || e) : ""; }
  function stamp() { $("#updated").textContent = "Updated " + new Date().toLocaleTimeString(); }

  // Downloads go through fetch, so that the key goes in a header (never in a URL).
  async function download(a) {
    const r = await fetch(a.getAttribute("href"), {headers: headers()});
    if (!r.ok) throw new Error("download failed: " + r.status);
    const url = URL.createObjectURL(await r.blob());
    const tmp = document.createElement("a");
    tmp.href = url; tmp.download = a.getAttribute("download") || "file.jsonl";
    document.body.appendChild(tmp); tmp.click(); tmp.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }
  document.addEventListener("click", (ev) => {
    const a = ev.target.closest && ev.target.closest("a.dl");
    if (a) { ev.preventDefault(); download(a).catch(showError); }
  });

  // --- rates, the way `status --watch` shows them ----------------------------------------------
  // The alive workers' last chunks on the job, added up; a job nobody works on right now: its average.
  function rates(batch, workers) {
    const job = jobOf(batch.id);
    let rps = 0, tps = 0, found = false;
    for (const w of workers || []) {
      const last = w.last_chunk || {};
      if (w.liveness !== "alive" || w.job !== job || !last.seconds) continue;
      found = true;
      rps += last.requests_per_second || (last.requests || 0) / last.seconds;
      tps += (last.completion_tokens || 0) / last.seconds;
    }
    if (found) return [rps, tps];
    const secs = elapsed(batch);
    const c = batch.request_counts || {};
    if (!secs || !batch.in_progress_at) return [null, null];
    return [((c.completed || 0) + (c.failed || 0)) / secs, ((batch.usage || {}).output_tokens || 0) / secs];
  }
  function ended(b) { return b.completed_at || b.failed_at || b.cancelled_at || b.expired_at || null; }
  function elapsed(b) {
    if (!b.in_progress_at) return null;
    return (ended(b) || now()) - b.in_progress_at;
  }
  function eta(b, rps) {
    const c = b.request_counts || {};
    if (FINAL.has(b.status) || !rps) return null;
    return Math.max(0, (c.total || 0) - (c.completed || 0) - (c.failed || 0)) / rps;
  }
  function progress(b) {
    const c = b.request_counts || {};
    return c.total ? ((c.completed || 0) + (c.failed || 0)) / c.total : (b.status === "completed" ? 1 : 0);
  }
  function metaText(m) {
    return m ? Object.entries(m).map(([k, v]) => k + "=" + v).join(" ") : "";
  }
  const badge = (status) => `<span class="badge s-${esc(status)}">${esc(words(status))}</span>`;
  const bar = (f, big) => `<span class="bar${big ? " big" : ""}"><i style="width:${(100 * f).toFixed(1)}%"></i></span>`;

  // --- charts ---------------------------------------------------------------------------------
  const charts = {};
  window.spoolbatchCharts = charts; // the browser tests read the charts' data from here
  function chart(id, el, opts, data) {
    const width = Math.max(280, el.clientWidth || 600);
    if (charts[id] && charts[id].root.parentNode === el) {
      charts[id].setData(data);
      if (Math.abs(charts[id].width - width) > 4) charts[id].setSize({width, height: opts.height});
      return charts[id];
    }
    if (charts[id]) charts[id].destroy();
    el.innerHTML = "";
    charts[id] = new uPlot(Object.assign({width}, opts), data, el);
    return charts[id];
  }
  window.addEventListener("resize", () => {
    for (const c of Object.values(charts)) {
      const el = c.root.parentNode;
      if (el && el.clientWidth) c.setSize({width: Math.max(280, el.clientWidth), height: c.height});
    }
  });
  const axisNum = (unit) => (u, vals) => vals.map((v) => (v == null ? "" : N0.format(v) + (unit ? " " + unit : "")));

  // --- the home page: workers, jobs, submit -----------------------------------------------------
  const list = {status: "", q: "", after: null, back: [], limit: 20, workers: []};

  function home() {
    $("#main").innerHTML = `
      <h2 id="workers">Workers and GPUs</h2><p id="queue" class="muted"></p><div id="workerlist" class="cards"></div>
      <h2 id="jobs">Jobs</h2>
      <div class="filters">
        <select id="f-status" aria-label="status"><option value="">every status</option>
          ${["validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"]
            .map((s) => `<option value="${s}">${words(s)}</option>`).join("")}</select>
        <input id="f-q" type="search" placeholder="search id or metadata" aria-label="search">
        <button id="f-go" type="button">Search</button>
      </div>
      <div class="scroll"><table id="jobtable"><thead><tr><th>job</th><th>status</th><th class="wide-only">priority</th>
        <th>progress</th><th class="num">requests/s</th><th class="num wide-only">tokens/s</th><th class="num wide-only">elapsed</th>
        <th class="num">ETA</th><th class="wide-only">owner / metadata</th></tr></thead><tbody></tbody></table></div>
      <div class="pager"><button id="prev" type="button">Newer</button><button id="next" type="button">Older</button>
        <span id="pageinfo" class="muted"></span></div>
      <h2 id="submit">Submit a batch</h2>${submitForm()}`;
    const filter = () => { list.status = $("#f-status").value; list.q = $("#f-q").value.trim(); firstPage(); };
    $("#f-status").onchange = filter;
    $("#f-q").onkeydown = (e) => { if (e.key === "Enter") filter(); };
    $("#f-go").onclick = filter;
    $("#next").onclick = () => { if (list.last) { list.back.push(list.after); list.after = list.last; refreshJobs(); } };
    $("#prev").onclick = () => { if (list.back.length) { list.after = list.back.pop(); refreshJobs(); } };
    wireSubmit();
    const tick = async () => {
      await refreshWorkers().catch(showError);
      await refreshJobs().catch(showError);
      document.body.dataset.loaded = "1";
    };
    tick();
    setInterval(() => { if (!document.hidden) tick(); }, REFRESH_MS);
    refreshGpus().catch(showError);
    setInterval(() => { if (!document.hidden) refreshGpus().catch(showError); }, 15000);
    if (location.hash) setTimeout(() => { const el = $(location.hash); if (el) el.scrollIntoView(); }, 50);
  }
  function firstPage() { list.after = null; list.back = []; refreshJobs().catch(showError); }

  async function refreshJobs() {
    const q = new URLSearchParams({limit: String(list.limit)});
    if (list.after) q.set("after", list.after);
    if (list.status) q.set("status", list.status);
    if (list.q) q.set("q", list.q);
    const page = await api("v1/batches?" + q);
    list.last = page.has_more ? page.last_id : null;
    $("#jobtable tbody").innerHTML = page.data.map(jobRow).join("") ||
      `<tr><td colspan="9" class="muted">${list.status || list.q ? "no job matches" : "no job yet"}</td></tr>`;
    $("#prev").disabled = !list.back.length;
    $("#next").disabled = !page.has_more;
    $("#pageinfo").textContent = page.data.length ? `page ${list.back.length + 1}` : "";
    showError(null); stamp();
  }
  function jobRow(b) {
    const job = jobOf(b.id);
    const c = b.request_counts || {};
    const [rps, tps] = b.status === "in_progress" ? rates(b, list.workers) : [null, null];
    const f = progress(b);
    return `<tr class="job" data-job="${esc(job)}" data-status="${esc(b.status)}">
      <td><a href="jobs/${encodeURIComponent(job)}">${esc(job)}</a>
        <div class="sub">${esc([b.model, b.endpoint, when(b.created_at)].filter(Boolean).join(" · "))}</div></td>
      <td class="status">${badge(b.status)}</td><td class="prio wide-only">${esc(b.priority == null ? "" : b.priority)}</td>
      <td>${bar(f)} <span class="pct">${N1.format(100 * f)} %</span>
        <div class="sub">${num((c.completed || 0) + (c.failed || 0))} of ${num(c.total)}${c.failed ?
          ` · <span class="bad">${num(c.failed)} failed</span>` : ""}</div></td>
      <td class="num rps">${rate(rps, "req/s")}</td><td class="num tps wide-only">${rate(tps, "tok/s")}</td>
      <td class="num wide-only">${dur(elapsed(b))}</td><td class="num eta">${dur(eta(b, rps))}</td>
      <td class="wide-only meta">${esc(metaText(b.metadata))}</td></tr>`;
  }

  async function refreshWorkers() {
    const d = await api("v1/spoolbatch/workers");
    list.workers = d.workers;
    list.limits = d.limits;
    $("#queue").textContent = `${num(d.queue.jobs)} job(s) waiting in the inbox · ${num(d.workers.filter(
      (w) => w.liveness === "alive").length)} worker(s) alive`;
    const el = $("#workerlist");
    const seen = new Set();
    for (const w of d.workers) {
      seen.add(w.worker);
      let card = el.querySelector(`[data-worker="${CSS.escape(w.worker)}"]`);
      if (!card) {
        card = document.createElement("div");
        card.className = "card worker";
        card.dataset.worker = w.worker;
        card.innerHTML = `<h3></h3><div class="info"></div><div class="gpus"></div>`;
        el.appendChild(card);
      }
      card.dataset.liveness = w.liveness;
      $("h3", card).innerHTML = `${esc(w.worker)} <span class="badge l-${esc(w.liveness)}">${esc(w.liveness)}</span>`;
      $(".info", card).innerHTML = workerInfo(w);
    }
    for (const card of [...el.children]) if (!seen.has(card.dataset.worker)) card.remove();
    if (!d.workers.length) el.innerHTML = `<p class="muted">no worker has run on this spool</p>`;
  }
  function workerInfo(w) {
    const p = w.progress || {};
    const job = w.job ? `<a href="jobs/${encodeURIComponent(w.job)}">${esc(w.job)}</a>` +
      (w.chunk ? ` chunk ${num(w.chunk)}` : "") + (p.fraction != null ? ` (${N1.format(100 * p.fraction)} %)` : "") : "-";
    const g = w.gpu || {};
    const gpus = g.available ? g.devices.map((d) => `GPU ${d.index} ${esc(d.name)}: ${gib(d.memory_used)} of ` +
      `${gib(d.memory_total)} (${pct(d.memory_pct)}), ${d.temperature_c == null ? "-" : num(d.temperature_c) + " °C"}`
      + (d.utilization_pct == null ? "" : `, ${num(d.utilization_pct)} % busy`)).join("<br>") : esc(g.reason || "no GPU reading");
    const last = w.last_chunk || {};
    return `<div class="grid">
      <div><b>state</b><span class="state">${esc(w.state)}</span></div>
      <div><b>waiting for</b><span class="reason">${esc(w.reason || "-")}</span></div>
      <div><b>job</b>${job}</div>
      <div><b>last chunk</b>${last.seconds ? rate(last.requests_per_second, "req/s") : "-"}</div>
      <div><b>engine</b>${esc(w.engine || "-")}${w.model ? " · " + esc(w.model) : ""}</div>
      <div><b>last seen</b>${esc(N1.format(w.age_seconds))} s ago</div></div><div class="sub">${gpus}</div>`;
  }

  async function refreshGpus() {
    const d = list.workers.length ? {workers: list.workers} : await api("v1/spoolbatch/workers");
    for (const w of d.workers) {
      if (w.liveness === "dead") continue;
      const card = $(`[data-worker="${CSS.escape(w.worker)}"]`);
      if (!card) continue;
      const h = await api(`v1/spoolbatch/workers/${encodeURIComponent(w.worker)}/gpu?hours=6`);
      const box = $(".gpus", card);
      for (const [index, s] of Object.entries(h.gpus)) {
        let el = box.querySelector(`[data-gpu="${index}"]`);
        if (!el) {
          el = document.createElement("div");
          el.className = "chart gpu";
          el.dataset.gpu = index;
          box.appendChild(el);
        }
        gpuChart(`gpu:${w.worker}:${index}`, el, index, s, h.limits);
      }
    }
  }
  function gpuChart(id, el, index, s, limits) {
    const memLimit = s.t.map(() => limits.memory_pct), tempLimit = s.t.map(() => limits.temperature_c);
    el.dataset.points = String(s.t.length);
    return chart(id, el, {
      title: `GPU ${index}: memory and temperature, last 6 hours`, height: 200,
      scales: {x: {time: true}, pct: {range: [0, 100]}, temp: {range: (u, lo, hi) => [Math.min(20, lo), Math.max(100, hi)]}},
      series: [{}, {label: "memory", scale: "pct", stroke: COLORS[0], width: 1.5, value: (u, v) => pct(v)},
        {label: "temperature", scale: "temp", stroke: COLORS[1], width: 1.5, value: (u, v) => (v == null ? "-" : num(v) + " °C")},
        {label: "memory limit", scale: "pct", stroke: COLORS[0], dash: [6, 4], width: 1, points: {show: false}},
        {label: "temperature limit", scale: "temp", stroke: COLORS[1], dash: [6, 4], width: 1, points: {show: false}}],
      axes: [{}, {scale: "pct", values: axisNum("%")}, {scale: "temp", side: 1, grid: {show: false}, values: axisNum("°C")}],
    }, [s.t, s.memory_pct, s.temperature_c, memLimit, tempLimit]);
  }

  // --- submit from the page: upload, then create, as the SDK does -------------------------------
  function submitForm() {
    return `<form class="submit" id="submitform" onsubmit="return false">
      <div id="drop" class="wide">Drop a JSONL file here, or <input id="s-file" type="file" accept=".jsonl,.json,.txt"></div>
      <label for="s-endpoint">endpoint</label><select id="s-endpoint">${ENDPOINTS.map((e) =>
        `<option>${e}</option>`).join("")}</select>
      <label for="s-window">completion window</label><input id="s-window" type="text" value="24h"
        title="N followed by s, m, h or d, from 10s to 7d">
      <label for="s-priority">priority</label><select id="s-priority"><option>low</option>
        <option selected>normal</option><option>high</option><option>urgent</option></select>
      <label for="s-meta">metadata</label><input id="s-meta" type="text" placeholder="owner=alice team=search">
      <label for="s-bad">bad lines</label><label><input id="s-bad" type="checkbox"> run the good lines, put the bad
        ones in the error file</label>
      <div class="wide"><button id="s-go" class="primary" type="button">Upload and create</button>
        <span id="s-state" class="muted"></span></div>
      <div id="s-result" class="wide"></div></form>`;
  }
  function wireSubmit() {
    const drop = $("#drop"), file = $("#s-file");
    let dropped = null;
    drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
    drop.ondragleave = () => drop.classList.remove("over");
    drop.ondrop = (e) => {
      e.preventDefault(); drop.classList.remove("over");
      dropped = e.dataTransfer.files[0] || null;
      $("#s-state").textContent = dropped ? dropped.name + " (" + num(dropped.size) + " bytes)" : "";
    };
    file.onchange = () => { dropped = null; };
    $("#s-go").onclick = () => submit(dropped || file.files[0]).catch((e) => {
      $("#s-state").textContent = "";
      $("#s-result").innerHTML = `<p class="bad">${esc(e.message)}</p>`;
    });
  }
  async function submit(f) {
    const out = $("#s-result"), state = $("#s-state");
    out.innerHTML = "";
    if (!f) { out.innerHTML = `<p class="bad">choose or drop a JSONL file first</p>`; return; }
    const metadata = {};
    for (const pair of $("#s-meta").value.split(/\s+/).filter(Boolean)) {
      const i = pair.indexOf("=");
      if (i < 1) throw new Error(`metadata ${pair}: write key=value`);
      metadata[pair.slice(0, i)] = pair.slice(i + 1);
    }
    $("#s-go").disabled = true;
    try {
      state.textContent = "uploading " + f.name + "…";
      const form = new FormData();
      form.append("purpose", "batch");
      form.append("file", f, f.name);
      const up = await api("v1/files", {method: "POST", body: form});
      state.textContent = "validating…";
      const body = {input_file_id: up.id, endpoint: $("#s-endpoint").value,
        completion_window: $("#s-window").value.trim() || "24h", allow_bad_lines: $("#s-bad").checked};
      if (Object.keys(metadata).length) body.metadata = metadata;
      // The create body's own field; left at normal, a priority typed into the metadata still holds.
      const priority = $("#s-priority").value;
      if (priority !== "normal") body.priority = priority;
      const b = await post("v1/batches", body);
      state.textContent = "";
      const errors = (b.errors && b.errors.data) || [];
      if (b.status === "failed") {
        out.innerHTML = `<p class="bad">Not queued: ${num(errors.length)} line(s) failed validation.</p>
          <table class="lineerrors"><thead><tr><th>line</th><th>code</th><th>message</th></tr></thead><tbody>${errors.map((e) =>
          `<tr class="lineerror" data-line="${esc(e.line)}"><td>line ${esc(e.line == null ? "-" : num(e.line))}</td>
          <td><code>${esc(e.code)}</code></td><td>${esc(e.message)}</td></tr>`).join("")}</tbody></table>`;
      } else {
        const job = jobOf(b.id);
        out.innerHTML = `<p class="ok" id="s-created" data-job="${esc(job)}">Queued as <a href="jobs/${encodeURIComponent(job)}">
          ${esc(job)}</a>: ${num(b.request_counts.total)} request(s)${b.estimate_seconds != null ?
          ", about " + dur(b.estimate_seconds) : ""}.</p>`;
        firstPage();
      }
    } finally {
      $("#s-go").disabled = false;
    }
  }

  // --- a job's page -----------------------------------------------------------------------------
  async function jobPage(job) {
    const batchId = "batch_" + job;
    const t0 = performance.now();
    $("#main").innerHTML = `<h1>${esc(job)}</h1><div id="job-head"></div>
      <div class="actions"><button id="cancel" class="danger" type="button">Cancel…</button>
        <button id="retry" type="button">Retry failed lines…</button><span id="act-state" class="muted"></span></div>
      <div id="job-grid"></div><div id="downloads" class="actions"></div>
      <h2>Throughput per chunk</h2><p id="chunkinfo" class="muted"></p>
      <div id="chart-rps" class="chart"></div><div id="chart-tps" class="chart"></div>
      <h2>Failed lines by error code</h2><div id="errors"></div>
      <h2>Events</h2><ul id="timeline" class="timeline"></ul>`;
    $("#cancel").onclick = () => act("Cancel " + job + "? Results so far are kept; the requests not run yet end as " +
      "batch_cancelled.", async () => {
      const b = await post(`v1/batches/${encodeURIComponent(batchId)}/cancel`);
      $("#act-state").textContent = "now " + words(b.status);
      await refresh(true);
    });
    $("#retry").onclick = () => act("Submit " + job + "'s failed lines again as a new job?", async () => {
      const b = await post(`v1/spoolbatch/batches/${encodeURIComponent(batchId)}/retry`);
      location.href = "jobs/" + encodeURIComponent(jobOf(b.id));
    });
    let story = null, batch = null, first = true;
    async function refresh(full) {
      const [b, workers] = await Promise.all([api(`v1/batches/${encodeURIComponent(batchId)}`),
        api("v1/spoolbatch/workers")]);
      const changed = !batch || batch.status !== b.status;
      batch = b;
      if (full || changed || !story || !FINAL.has(b.status)) {
        story = await api(`v1/spoolbatch/batches/${encodeURIComponent(batchId)}/story`);
      }
      const tData = performance.now();
      renderJob(batch, story, workers.workers);
      if (first) {
        first = false;
        document.body.dataset.renderMs = (performance.now() - tData).toFixed(1);
        document.body.dataset.loadMs = (performance.now() - t0).toFixed(1);
      }
      document.body.dataset.loaded = "1";
      document.body.dataset.status = batch.status;
      showError(null); stamp();
    }
    async function act(question, call) {
      if (!confirm(question)) return;
      $("#act-state").textContent = "…";
      try { await call(); } catch (e) { $("#act-state").textContent = ""; showError(e); }
    }
    const tick = () => refresh(false).catch((e) => { showError(e); document.body.dataset.loaded = "1"; });
    await tick();
    setInterval(() => { if (!document.hidden && !(batch && FINAL.has(batch.status) && story)) tick(); }, REFRESH_MS);
  }

  function renderJob(b, s, workers) {
    const c = b.request_counts || {}, u = b.usage || {}, j = s.job || {};
    const [rps, tps] = b.status === "in_progress" ? rates(b, workers) : [null, null];
    const f = progress(b);
    $("#job-head").innerHTML = `${badge(b.status)} <span class="muted">${esc(b.id)} · ${esc(b.model || "")} · ` +
      `${esc(b.endpoint)}${b.priority != null ? " · priority " + esc(b.priority) : ""}</span>`;
    const cell = (label, value, cls) => `<div${cls ? ` class="${cls}"` : ""}><b>${label}</b>${value}</div>`;
    $("#job-grid").innerHTML = `<p>${bar(f, true)}</p><div class="grid">
      ${cell("progress", `${N1.format(100 * f)} %`, "pct")}
      ${cell("requests", num(c.total), "total")}${cell("completed", num(c.completed), "completed")}
      ${cell("failed", num(c.failed), "failed")}
      ${cell("input tokens", num(u.input_tokens))}${cell("output tokens", num(u.output_tokens))}
      ${cell("total tokens", num(u.total_tokens))}
      ${cell("requests/s now", rate(rps, "req/s"))}${cell("tokens/s now", rate(tps, "tok/s"))}
      ${cell("ETA", dur(eta(b, rps)))}${cell("elapsed", dur(elapsed(b)))}
      ${cell("engine time", dur(j.busy_seconds))}${cell("workers on it", num(j.workers))}
      ${cell("chunk retries", num(j.retries))}${cell("answered once for duplicates", num(j.deduplicated))}
      ${cell("created", when(b.created_at))}${cell("started", when(b.in_progress_at))}
      ${cell("ended", when(ended(b)))}${cell("completion window", esc(b.completion_window))}
      ${cell("metadata", esc(metaText(b.metadata)) || "-")}
      ${j.reason ? cell("reason", esc(j.reason)) : ""}</div>`;
    const files = [["input", b.input_file_id], ["output", b.output_file_id], ["errors", b.error_file_id]];
    $("#downloads").innerHTML = files.filter(([, id]) => id).map(([what, id]) =>
      `<a class="dl" data-kind="${what}" href="v1/files/${encodeURIComponent(id)}/content"
        download="${esc(id)}.jsonl">Download ${what}</a>`).join(" · ");
    $("#cancel").disabled = FINAL.has(b.status) || b.status === "cancelling";
    const retryable = (s.errors || []).some((g) => !g.unrun);
    $("#retry").disabled = !retryable;
    renderChunks(s.chunks);
    renderErrors(s.errors || []);
    renderTimeline(s.events || [], s.events_total || 0);
  }

  function renderChunks(ch) {
    const n = ch.t.length;
    const secs = ch.t.length ? ch.t[n - 1] - ch.t[0] : 0;
    $("#chunkinfo").textContent = n ? `${num(n)} chunk(s) over ${dur(secs)} by ${num(ch.workers.length)} worker(s)` :
      "no chunk has run yet";
    const rpsEl = $("#chart-rps"), tpsEl = $("#chart-tps");
    rpsEl.dataset.points = String(n);
    if (!n) { rpsEl.innerHTML = tpsEl.innerHTML = ""; return; }
    // One series per worker, so each chunk shows which worker ran it; a chunk is a point of its worker's series.
    const rps = ch.workers.map(() => new Array(n).fill(null)), tps = ch.workers.map(() => new Array(n).fill(null));
    let anyTokens = false;
    for (let i = 0; i < n; i++) {
      const s = ch.seconds[i];
      if (!(s > 0)) continue;
      rps[ch.worker[i]][i] = (ch.answered[i] + ch.failed[i]) / s;
      if (ch.tokens[i] != null) { tps[ch.worker[i]][i] = ch.tokens[i] / s; anyTokens = true; }
    }
    const series = (unit) => [{}, ...ch.workers.map((w, k) => ({label: w, stroke: COLORS[k % COLORS.length], width: 1,
      spanGaps: true, points: {show: n <= 2000, size: 4}, value: (u, v) => rate(v, unit)}))];
    const opts = (title, unit) => ({title, height: 220, scales: {x: {time: true}}, series: series(unit),
      axes: [{}, {values: axisNum(""), size: 60}], legend: {live: n <= 2000}});
    chart("rps", rpsEl, opts("Requests/s per chunk", "req/s"), [ch.t, ...rps]);
    if (anyTokens) chart("tps", tpsEl, opts("Tokens/s per chunk (prompt and completion)", "tok/s"), [ch.t, ...tps]);
    else tpsEl.innerHTML = `<p class="muted">no token counts in this job's chunk events</p>`;
  }

  function renderErrors(groups) {
    const el = $("#errors");
    if (!groups.length) { el.innerHTML = `<p class="muted">no failed line</p>`; return; }
    el.innerHTML = groups.map((g) => `<details class="group" data-code="${esc(g.code)}"${groups.length <= 3 ? " open" : ""}>
      <summary><code>${esc(g.code)}</code>: <b class="count">${num(g.count)}</b> line(s)${g.unrun ?
        " not run (the error file lists each)" : ""}</summary>
      ${g.examples.map((e) => `<div class="example"><b>line ${num(e.line)}</b>${e.custom_id != null ?
        " · " + esc(e.custom_id) : ""}${e.attempts ? " · " + num(e.attempts) + " attempt(s)" : ""}<br>${esc(e.message)}
        ${e.request ? `<pre>${esc(e.request)}</pre>` : ""}</div>`).join("")}</details>`).join("");
  }

  function renderTimeline(events, total) {
    const el = $("#timeline");
    const items = events.slice().reverse().map((e) => `<li class="event e-${esc(e.event)}" data-event="${esc(e.event)}">
      <time>${esc(clock(e.ts))}</time><span>${esc(e.text)}</span></li>`);
    if (total > events.length) items.push(`<li class="muted">${num(total - events.length)} older event(s) not shown</li>`);
    el.innerHTML = items.join("") || `<li class="muted">no event yet</li>`;
  }

  // --- route ------------------------------------------------------------------------------------
  const m = location.pathname.match(/\/jobs\/([^/]+)\/?$/);
  if (m) jobPage(decodeURIComponent(m[1])).catch((e) => { showError(e); document.body.dataset.loaded = "1"; });
  else home();
})();
