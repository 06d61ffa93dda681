/*
 * pluginserver dashboard.
 *
 * Everything here comes from the server itself: no CDN, no inline script or
 * style (the page's Content-Security-Policy allows neither).  Nothing the
 * server sends is ever inserted as HTML: plugin names, error texts and file
 * paths are set with textContent only.
 *
 * Live data: /systeminfo/stream (server-sent events) read with fetch(), so
 * that the key goes in an Authorization header (EventSource cannot send
 * one, and a key in the URL would need [auth] allow_query_key, which is off
 * by default because URLs end up in logs and histories).  Without a stream
 * the page polls /systeminfo.  Whatever goes wrong (401, 403, 5xx, a
 * dropped connection, malformed JSON) is shown and retried, so the page
 * comes back by itself after a server restart or a reload of systeminfo.
 */
"use strict";

(function () {
  const KEY_STORAGE = "pluginserver.apikey";
  const HISTORY = 300; // seconds of history in the charts
  const POLL_MS = 2000; // /systeminfo polling, when there is no stream
  const PLUGINS_MS = 3000; // /plugins polling: follows reloads done elsewhere
  const STREAM_SILENCE_MS = 40000; // no byte for this long: reconnect
  const MAX_BACKOFF_MS = 8000;
  const AUTH_RETRY_MS = 15000; // a refused key is retried this slowly
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300]; // x-axis ticks, seconds
  const COLORS = [
    "#2a6fdb", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0b7285",
    "#c2255c", "#5f3dc4", "#5c940d", "#1864ab", "#862e9c", "#a61e4d",
  ];

  const $ = (id) => document.getElementById(id);

  // -- small helpers ---------------------------------------------------------

  function setText(id, value) {
    const node = $(id);
    if (node) node.textContent = value === null || value === undefined ? "–" : String(value);
  }

  /* Make an element: text children become text nodes, never HTML. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "className") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    let v = Number(n);
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }

  const rate = (n) => (n === null || n === undefined ? "–" : bytes(n) + "/s");
  const percent = (n) => (n === null || n === undefined ? "–" : Number(n).toFixed(1) + " %");

  function when(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const date = new Date(Number(seconds) * 1000);
    return date.toLocaleDateString() + " " + date.toLocaleTimeString();
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function showMessage(id, text, kind) {
    const node = $(id);
    if (!node) return;
    if (!text) {
      node.hidden = true;
      node.textContent = "";
      return;
    }
    node.hidden = false;
    node.className = "message " + (kind || "");
    node.textContent = text;
  }

  // -- the key ---------------------------------------------------------------

  const auth = {
    key: sessionStorage.getItem(KEY_STORAGE) || "",
    waiters: [],
  };

  function authHeaders(extra) {
    const headers = Object.assign({ Accept: "application/json" }, extra || {});
    if (auth.key) headers.Authorization = "Bearer " + auth.key;
    return headers;
  }

  /* A 401: ask for a key, saying plainly whether the one sent was wrong. */
  function askForKey() {
    const form = $("key-form");
    const message = auth.key
      ? "The server refused this API key (401 unauthorized): it is wrong. Enter the right key."
      : "This server needs an API key (401 unauthorized). Enter it to see the data.";
    $("key-message").textContent = message;
    form.hidden = false;
  }

  /* Resolves when a new key is entered, or after ms (a slow retry). */
  function keyChangedOr(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      auth.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  function useKey(key) {
    auth.key = key;
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    $("key-message").textContent = "";
    $("key-form").hidden = true;
    const waiters = auth.waiters;
    auth.waiters = [];
    waiters.forEach((wake) => wake());
    live.kick();
  }

  /* An answer with a key that worked (or needed none): hide the prompt. */
  function keyAccepted() {
    if (auth.key && !$("key-form").hidden && !$("key-input").value) $("key-form").hidden = true;
  }

  // -- requests --------------------------------------------------------------

  class Problem extends Error {
    constructor(kind, status, message, retryAfter) {
      super(message);
      this.kind = kind; // network | malformed | unauthorized | forbidden | missing | server | other
      this.status = status;
      this.retryAfter = retryAfter || 0;
    }
  }

  function problemFor(status, body, what, headers) {
    const problem = describe(status, body, what, headers);
    problem.what = what;
    return problem;
  }

  function describe(status, body, what, headers) {
    const said = body && typeof body === "object" && typeof body.error === "string" ? body.error : "";
    const detail = said ? ": " + said : "";
    if (status === 401) return new Problem("unauthorized", status, "401 unauthorized" + detail);
    if (status === 403) {
      return new Problem(
        "forbidden", status,
        "403 forbidden" + detail + " — the server does not let this page (or this key) read " + what,
      );
    }
    if (status === 404) return new Problem("missing", status, what + " is not served here (404)");
    if (status === 429) {
      const after = Number((headers && headers.get("Retry-After")) || 5);
      return new Problem("limited", status, "429 too many requests" + detail + "; waiting", after);
    }
    if (status >= 500) {
      return new Problem("server", status, "the server failed (" + status + detail + ") on " + what);
    }
    return new Problem("other", status, "unexpected answer " + status + detail + " for " + what);
  }

  /*
   * Fetch a JSON route.  Resolves {status, body, headers}; rejects with a
   * Problem when the server cannot be reached, the connection drops, or the
   * body is not JSON.  Statuses are the caller's to judge.
   */
  async function request(path, method) {
    let response;
    let text;
    try {
      response = await fetch(path, {
        method: method || "GET",
        headers: authHeaders(),
        cache: "no-store",
        credentials: "same-origin",
      });
      text = await response.text();
    } catch (e) {
      throw new Problem("network", 0, "cannot reach the server (connection refused or dropped)");
    }
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (e) {
        throw new Problem(
          "malformed", response.status,
          "the server's answer to " + path + " is not valid JSON (status " + response.status + ")",
        );
      }
    }
    return { status: response.status, body: body, headers: response.headers };
  }

  /* GET a route that must answer 200 JSON, or throw its Problem. */
  async function getJSON(path) {
    const answer = await request(path);
    if (answer.status !== 200) throw problemFor(answer.status, answer.body, path, answer.headers);
    if (answer.body === null || typeof answer.body !== "object") {
      throw new Problem("malformed", 200, "the server's answer to " + path + " is not a JSON object");
    }
    keyAccepted();
    return answer.body;
  }

  /* How long to wait after a problem; a 401 waits for a new key. */
  async function pause(problem, backoff) {
    if (problem.kind === "unauthorized") {
      askForKey();
      await keyChangedOr(AUTH_RETRY_MS);
      return;
    }
    if (problem.kind === "limited") {
      await sleep(Math.max(1, problem.retryAfter) * 1000);
      return;
    }
    await sleep(backoff);
  }

  // -- charts ----------------------------------------------------------------

  class Chart {
    /* A uPlot chart of the last HISTORY seconds, rebuilt when its series change. */
    constructor(id, yFormat, yRange) {
      this.node = $(id);
      this.yFormat = yFormat;
      this.yRange = yRange;
      this.labels = [];
      this.data = [[]];
      this.plot = null;
      this.pending = false;
      if (window.ResizeObserver) {
        new ResizeObserver(() => this.resize()).observe(this.node);
      }
    }

    size() {
      const width = Math.max(200, this.node.clientWidth || 300);
      return { width: width, height: width < 500 ? 180 : 220 };
    }

    resize() {
      if (this.plot) this.plot.setSize(this.size());
    }

    build(labels) {
      if (this.plot) this.plot.destroy();
      this.labels = labels;
      const yFormat = this.yFormat;
      const series = [{}].concat(labels.map((label, i) => ({
        label: label,
        stroke: COLORS[i % COLORS.length],
        width: i === 0 && labels[0] === "total" ? 2.5 : 1.25,
        value: (u, v) => (v === null || v === undefined ? "–" : yFormat(v)),
        spanGaps: false,
      })));
      const y = this.yRange ? { range: this.yRange } : { range: (u, min, max) => [0, Math.max(1, max * 1.1)] };
      const options = Object.assign(this.size(), {
        scales: { x: { time: true }, y: y },
        series: series,
        axes: [{ space: 80, incrs: TIME_STEPS }, { values: (u, values) => values.map(yFormat), size: 90 }],
        legend: { live: true },
        cursor: { drag: { x: false, y: false } },
      });
      this.node.textContent = "";
      this.plot = new uPlot(options, this.data, this.node);
    }

    /* Add one sample: {label: value}.  New or gone labels rebuild the chart. */
    add(t, values) {
      const labels = Object.keys(values);
      if (labels.join("\u0000") !== this.labels.join("\u0000")) {
        const old = this.labels;
        const oldData = this.data;
        this.data = [oldData[0].slice()].concat(labels.map((label) => {
          const at = old.indexOf(label);
          return at >= 0 ? oldData[at + 1].slice() : oldData[0].map(() => null);
        }));
        this.build(labels);
      }
      const xs = this.data[0];
      if (xs.length && t <= xs[xs.length - 1]) return; // not newer: same sample again
      xs.push(t);
      labels.forEach((label, i) => this.data[i + 1].push(values[label]));
      while (xs.length && xs[0] < t - HISTORY) this.data.forEach((column) => column.shift());
      this.plot.setData(this.data);
    }
  }

  const cpuChart = new Chart("cpu-chart", (v) => Math.round(v) + "%", [0, 100]);
  const netChart = new Chart("net-chart", (v) => rate(v), null);

  // -- systeminfo --------------------------------------------------------------

  let samples = 0;

  function bar(id, value) {
    const node = $(id);
    node.value = value === null || value === undefined ? 0 : Number(value);
    node.classList.toggle("high", node.value >= 90);
  }

  /* Replace the rows of a table's body; each cell is labelled with its
     column's heading, which narrow screens show beside it. */
  function fill(table, rows) {
    const node = $(table);
    const labels = Array.from(node.tHead.rows[0].cells, (cell) => cell.textContent);
    for (const row of rows) {
      Array.from(row.cells).forEach((cell, i) => {
        cell.dataset.label = labels[i] || "";
      });
    }
    node.tBodies[0].replaceChildren(...rows);
  }

  function showSample(doc) {
    if (!doc || typeof doc !== "object" || !doc.cpu) {
      throw new Problem("malformed", 200, "systeminfo sent a sample without its sections");
    }
    samples += 1;
    document.body.dataset.samples = String(samples);
    const info = doc.info || {};
    const cpu = doc.cpu || {};
    const load = cpu.loadavg || {};
    setText("hostname", info.nodename ? "· " + info.nodename : "");
    document.title = (info.nodename ? info.nodename + " · " : "") + "pluginserver dashboard";
    setText("info-nodename", info.nodename);
    setText("info-os", [info.sysname, info.release, info.machine].filter(Boolean).join(" "));
    setText("info-version", info.version);
    setText("uptime", doc.uptime ? doc.uptime.pretty : null);
    setText("sampled-at", when(doc.sampled_at));
    setText("cpu-percent", percent(cpu.percent));
    setText("cpu-model", cpu.model);
    setText("cpu-count", cpu.count);
    setText("cpu-freq", cpu.freq_mhz === null || cpu.freq_mhz === undefined ? null : cpu.freq_mhz + " MHz");
    setText("load-1m", load["1m"]);
    setText("load-5m", load["5m"]);
    setText("load-15m", load["15m"]);
    for (const [name, part] of [["ram", doc.ram], ["swap", doc.swap]]) {
      const m = part || {};
      setText(name + "-text", m.total ? bytes(m.used) + " of " + bytes(m.total) + " (" + percent(m.percent) + ")" : "none");
      bar(name + "-bar", m.percent);
    }
    const pkg = doc.packages || {};
    setText("pkg-manager", pkg.manager || "not known yet");
    setText("pkg-installed", pkg.installed);
    setText("pkg-upgradable", pkg.upgradable === null || pkg.upgradable === undefined ? "not known" : pkg.upgradable);
    setText("pkg-checked", pkg.checked_at ? when(pkg.checked_at) : "not yet");

    fill("fs-table", (doc.disk || []).map((d) => el("tr", {},
      el("td", { className: "path", text: d.mount }),
      el("td", { className: "path", text: d.device }),
      el("td", { text: d.fstype }),
      el("td", { className: "num", text: bytes(d.total) }),
      el("td", { className: "num", text: bytes(d.used) }),
      el("td", { className: "num", text: bytes(d.free) }),
      el("td", {}, d.error ? el("span", { className: "outcome error", text: d.error }) : fsBar(d.percent)),
    )));
    fill("net-table", (doc.net || []).map((n) => el("tr", {},
      el("td", { text: n.iface }),
      el("td", { className: "path", text: (n.addresses || []).join(" ") }),
      el("td", { text: n.is_up === null || n.is_up === undefined ? "?" : n.is_up ? "up" : "down" }),
      el("td", { className: "num", text: rate(n.rx_bps) }),
      el("td", { className: "num", text: rate(n.tx_bps) }),
      el("td", { className: "num", text: bytes(n.bytes_recv) }),
      el("td", { className: "num", text: bytes(n.bytes_sent) }),
    )));

    const t = Number(doc.sampled_at) || Date.now() / 1000;
    const cpuValues = { total: cpu.percent === undefined ? null : cpu.percent };
    for (const [core, value] of Object.entries(cpu.per_cpu || {})) cpuValues[core] = value;
    cpuChart.add(t, cpuValues);
    const netValues = {};
    for (const n of doc.net || []) {
      netValues[n.iface + " rx"] = n.rx_bps;
      netValues[n.iface + " tx"] = n.tx_bps;
    }
    netChart.add(t, netValues);
  }

  function fsBar(value) {
    const node = el("progress", { max: "100" });
    node.value = value === null || value === undefined ? 0 : Number(value);
    node.classList.toggle("high", node.value >= 90);
    return el("span", {}, node, " " + percent(value));
  }

  function liveState(text, kind) {
    const node = $("live-state");
    node.textContent = text;
    node.className = "state " + (kind || "");
  }

  /* Read server-sent events from a fetch() body: resolves when the stream ends. */
  async function readStream(onData) {
    const controller = new AbortController();
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
    };
    let response;
    try {
      arm();
      response = await fetch("/systeminfo/stream", {
        headers: authHeaders({ Accept: "text/event-stream" }),
        cache: "no-store",
        signal: controller.signal,
      });
    } catch (e) {
      clearTimeout(watchdog);
      throw new Problem("network", 0, "cannot reach the server (connection refused or dropped)");
    }
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !type.startsWith("text/event-stream")) {
      clearTimeout(watchdog);
      let body = null;
      try {
        body = JSON.parse(await response.text());
      } catch (e) {
        body = null;
      }
      if (response.ok) return "unsupported"; // an old systeminfo: no stream
      throw problemFor(response.status, body, "/systeminfo/stream", response.headers);
    }
    keyAccepted();
    liveState("live (stream)", "live");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (e) {
          throw new Problem("network", 0, "the connection to the server dropped");
        }
        if (chunk.done) return "ended";
        arm();
        buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5));
          if (!data.length) continue; // a comment (keep-alive) or an empty event
          let doc;
          try {
            doc = JSON.parse(data.join("\n"));
          } catch (e) {
            throw new Problem("malformed", 200, "the systeminfo stream sent an event that is not valid JSON");
          }
          onData(doc);
        }
      }
    } finally {
      clearTimeout(watchdog);
      controller.abort();
    }
  }

  const live = {
    wake: null,
    abort: null,
    /* Cut a wait short (a new key was entered). */
    kick() {
      if (this.wake) this.wake();
    },
  };

  function napOrKick(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      live.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  function sampled(doc) {
    showSample(doc);
    showMessage("live-message", "");
  }

  async function liveLoop() {
    let stream = true; // try the stream first; retried now and then when polling
    let lastStreamTry = 0;
    let backoff = 1000;
    for (;;) {
      try {
        if (stream || Date.now() - lastStreamTry > 60000) {
          lastStreamTry = Date.now();
          liveState("connecting…", "");
          const how = await readStream(sampled);
          backoff = 1000;
          if (how === "ended") {
            // A reload of systeminfo or a server stop ends the stream cleanly.
            liveState("reconnecting…", "down");
            stream = true;
            await napOrKick(300);
            continue;
          }
          stream = false; // "unsupported": poll
        }
        const doc = await getJSON("/systeminfo");
        sampled(doc);
        liveState("live (polling)", "live");
        backoff = 1000;
        await napOrKick(POLL_MS);
      } catch (e) {
        const problem = e instanceof Problem ? e : new Problem("other", 0, String(e));
        if (problem.kind === "missing" && problem.what === "/systeminfo/stream") {
          stream = false; // no stream route: poll /systeminfo instead
          continue;
        }
        if (problem.kind === "missing") {
          showMessage("live-message", "The systeminfo plugin is not loaded on this server (404); retrying.", "warn");
        } else if (problem.kind === "unauthorized") {
          showMessage("live-message", "Host data needs a valid API key (" + problem.message + ").", "error");
        } else {
          showMessage("live-message", "Host data: " + problem.message + ". Retrying…", "error");
        }
        liveState(problem.kind === "network" ? "disconnected" : "error", "down");
        await pause(problem, backoff);
        backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
      }
    }
  }

  // -- plugins -----------------------------------------------------------------

  const outcomes = new Map(); // name -> {ok, text}
  const generations = new Map(); // name -> generation last shown
  let pluginNames = "";

  function outcomeCell(name) {
    const cell = el("td", { className: "outcome" });
    const outcome = outcomes.get(name);
    if (outcome) {
      cell.classList.add(outcome.ok ? "ok" : "error");
      cell.textContent = outcome.text;
    }
    return cell;
  }

  let shown = "";

  function showPlugins(answer) {
    const plugins = answer.plugins && typeof answer.plugins === "object" ? answer.plugins : {};
    // Rebuilt only when something changed, so a button is not replaced
    // under the pointer every few seconds.
    const signature = JSON.stringify([plugins, Array.from(outcomes)]);
    if (signature === shown) return;
    shown = signature;
    const names = Object.keys(plugins).sort();
    const rows = names.map((name) => {
      const p = plugins[name] || {};
      const previous = generations.get(name);
      generations.set(name, p.generation);
      const button = el("button", { type: "button", className: "reload", text: "Reload" });
      button.dataset.plugin = name;
      button.setAttribute("aria-label", "Reload " + name);
      const row = el("tr", { className: previous !== undefined && previous !== p.generation ? "changed" : "" },
        el("td", { className: "name", text: name }),
        el("td", { className: "path", text: p.route }),
        el("td", { className: "num generation", text: String(p.generation) }),
        el("td", { text: when(p.loaded_at) }),
        el("td", { text: p.auth }),
        el("td", { className: "path", text: p.file }),
        el("td", {}, button),
        outcomeCell(name),
      );
      row.dataset.plugin = name;
      return row;
    });
    // Plugins whose last reload failed and that serve no generation (a new
    // file that never loaded) still show their error.
    for (const [name, outcome] of outcomes) {
      if (plugins[name] || outcome.ok) continue;
      const button = el("button", { type: "button", className: "reload", text: "Reload" });
      button.dataset.plugin = name;
      const row = el("tr", { className: "missing" },
        el("td", { className: "name", text: name }),
        el("td", { className: "path", text: "/" + name }),
        el("td", { className: "num generation", text: "–" }),
        el("td", { text: "not loaded" }), el("td", {}), el("td", {}),
        el("td", {}, button),
        outcomeCell(name),
      );
      row.dataset.plugin = name;
      rows.push(row);
    }
    fill("plugins-table", rows);
    const joined = names.join(" ");
    if (joined !== pluginNames) {
      pluginNames = joined;
      api.stale = true;
      if (!$("panel-api").hidden) api.load();
    }
  }

  const plugins = {
    wake: null,
    async refresh() {
      const answer = await getJSON("/plugins");
      showPlugins(answer);
      showMessage("plugins-message", "");
      return answer;
    },
    async loop() {
      let backoff = 1000;
      for (;;) {
        try {
          await this.refresh();
          backoff = 1000;
          await new Promise((resolve) => {
            const timer = setTimeout(resolve, PLUGINS_MS);
            this.wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
        } catch (e) {
          const problem = e instanceof Problem ? e : new Problem("other", 0, String(e));
          showMessage("plugins-message", "Plugins: " + problem.message + ". Retrying…", "error");
          await pause(problem, backoff);
          backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
        }
      }
    },
  };

  async function reloadOne(name, button) {
    button.disabled = true;
    outcomes.set(name, { ok: true, text: "reloading…" });
    try {
      const answer = await request("/reload/" + encodeURIComponent(name), "POST");
      const body = answer.body || {};
      if (answer.status === 200 && body.success) {
        outcomes.set(name, { ok: true, text: "reloaded: generation " + body.generation });
      } else if (answer.status === 500 && body.success === false) {
        outcomes.set(name, {
          ok: false,
          text: "reload failed: " + (body.error || "unknown error") +
            (body.generation === null || body.generation === undefined
              ? "" : " (generation " + body.generation + " still serving)"),
        });
      } else {
        throw problemFor(answer.status, body, "/reload/" + name, answer.headers);
      }
    } catch (e) {
      const problem = e instanceof Problem ? e : new Problem("other", 0, String(e));
      outcomes.set(name, { ok: false, text: "reload not done: " + problem.message });
      if (problem.kind === "unauthorized") askForKey();
    }
    try {
      await plugins.refresh();
    } catch (e) {
      // The plugins loop reports it.
    }
  }

  async function reloadAll(button) {
    button.disabled = true;
    const out = $("reload-all-outcome");
    out.className = "outcome";
    out.textContent = "reloading every plugin…";
    try {
      const answer = await request("/reload/all", "POST");
      const body = answer.body || {};
      if ((answer.status === 200 || answer.status === 500) && body.failed && typeof body.failed === "object") {
        const failed = Object.entries(body.failed);
        const parts = [
          (failed.length ? "reloaded with errors" : "all plugins reloaded") + ": " +
            (body.loaded_plugins || []).length + " loaded",
        ];
        if ((body.added || []).length) parts.push("added " + body.added.join(", "));
        if ((body.removed || []).length) parts.push("removed " + body.removed.join(", "));
        for (const [name, error] of failed) {
          parts.push(name + " failed: " + error);
          outcomes.set(name, { ok: false, text: "reload failed: " + error });
        }
        for (const name of body.loaded_plugins || []) {
          if (!body.failed[name]) outcomes.set(name, { ok: true, text: "reloaded (all)" });
        }
        for (const name of body.removed || []) outcomes.delete(name);
        out.className = "outcome " + (failed.length ? "error" : "ok");
        out.textContent = parts.join("\n");
      } else {
        throw problemFor(answer.status, body, "/reload/all", answer.headers);
      }
    } catch (e) {
      const problem = e instanceof Problem ? e : new Problem("other", 0, String(e));
      out.className = "outcome error";
      out.textContent = "reload not done: " + problem.message;
      if (problem.kind === "unauthorized") askForKey();
    }
    button.disabled = false;
    try {
      await plugins.refresh();
    } catch (e) {
      // The plugins loop reports it.
    }
  }

  // -- API tab -----------------------------------------------------------------

  const METHODS = ["get", "head", "post", "put", "patch", "delete", "options"];

  function shellQuote(text) {
    return "'" + String(text).replace(/'/g, "'\\''") + "'";
  }

  function curl(method, path, params, secured) {
    const required = params.filter((p) => p.in === "query" && p.required);
    const qs = required.length
      ? "?" + required.map((p) => encodeURIComponent(p.name) + "=VALUE").join("&")
      : "";
    const parts = ["curl"];
    if (method !== "GET") parts.push(method === "HEAD" ? "-I" : "-X " + method);
    if (secured) parts.push('-H "Authorization: Bearer $PS_APIKEY"');
    parts.push(shellQuote(location.origin + path + qs));
    return parts.join(" ");
  }

  function routeCard(path, operations) {
    const card = el("article", { className: "route" });
    const heading = el("h3", {});
    for (const op of operations) heading.append(el("span", { className: "method", text: op.method }));
    heading.append(el("code", { text: path }));
    card.append(heading);
    const first = operations[0];
    if (first.summary) card.append(el("p", { text: first.summary }));
    if (first.description && first.description !== first.summary) {
      card.append(el("p", { className: "muted small", text: first.description }));
    }
    const params = first.parameters || [];
    if (params.length) {
      const list = el("ul", {});
      for (const p of params) {
        const schema = p.schema || {};
        list.append(el("li", {},
          el("code", { text: p.name }),
          " (" + [p.in, schema.type, p.required ? "required" : "optional"].filter(Boolean).join(", ") + ")",
          p.description ? " — " + p.description : "",
        ));
      }
      card.append(list);
    }
    if (first.auth) card.append(el("p", { className: "muted small", text: "auth: " + first.auth }));
    for (const op of operations) {
      if (op.method === "HEAD") continue;
      card.append(el("pre", {}, el("code", { className: "curl", text: curl(op.method, path, params, op.secured) })));
    }
    return card;
  }

  const api = {
    stale: true,
    busy: false,
    async load() {
      if (this.busy) return;
      this.busy = true;
      try {
        const list = $("api-list");
        let cards;
        const answer = await request("/openapi.json");
        if (answer.status === 200 && answer.body && answer.body.paths) {
          const doc = answer.body;
          const globalSecurity = doc.security || [];
          cards = Object.keys(doc.paths).sort().map((path) => {
            const item = doc.paths[path] || {};
            const ops = METHODS.filter((m) => item[m]).map((m) => {
              const op = item[m];
              const security = op.security !== undefined ? op.security : globalSecurity;
              return {
                method: m.toUpperCase(),
                summary: op.summary || "",
                description: op.description || "",
                parameters: (item.parameters || []).concat(op.parameters || []),
                secured: security.some((s) => Object.keys(s).length > 0),
              };
            });
            return ops.length ? routeCard(path, ops) : null;
          }).filter(Boolean);
          setText("api-source", "Every route served now, from /openapi.json (" +
            (doc.info && doc.info.title ? doc.info.title + " " + (doc.info.version || "") : "OpenAPI") + ").");
        } else if (answer.status === 404) {
          const body = await getJSON("/plugins");
          const all = body.plugins || {};
          cards = Object.keys(all).sort().map((name) => {
            const p = all[name] || {};
            return routeCard(p.route || "/" + name, [{
              method: "GET", summary: "", description: "", parameters: [],
              auth: p.auth, secured: p.auth !== "none",
            }]);
          });
          setText("api-source", "This server has no /openapi.json: the plugin routes from /plugins.");
        } else {
          throw problemFor(answer.status, answer.body, "/openapi.json", answer.headers);
        }
        list.replaceChildren(...cards);
        showMessage("api-message", "");
        this.stale = false;
      } catch (e) {
        const problem = e instanceof Problem ? e : new Problem("other", 0, String(e));
        showMessage("api-message", "API: " + problem.message + ". Retrying…", "error");
        if (problem.kind === "unauthorized") askForKey();
        setTimeout(() => {
          if (!$("panel-api").hidden) this.load();
        }, problem.kind === "unauthorized" ? AUTH_RETRY_MS : 3000);
      } finally {
        this.busy = false;
      }
    },
  };

  // -- tabs and wiring ---------------------------------------------------------

  function select(tab) {
    for (const name of ["host", "plugins", "api"]) {
      const on = name === tab;
      $("tab-" + name).setAttribute("aria-selected", on ? "true" : "false");
      $("panel-" + name).hidden = !on;
    }
    if (tab === "api" && api.stale) api.load();
    if (tab === "host") {
      cpuChart.resize();
      netChart.resize();
    }
    if (location.hash !== "#" + tab) history.replaceState(null, "", "#" + tab);
  }

  function start() {
    for (const name of ["host", "plugins", "api"]) {
      $("tab-" + name).addEventListener("click", () => select(name));
    }
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("key-input");
      const key = input.value.trim();
      input.value = "";
      useKey(key);
      if (plugins.wake) plugins.wake();
      if (!$("panel-api").hidden) api.load();
    });
    $("key-forget").addEventListener("click", () => {
      $("key-input").value = "";
      useKey("");
    });
    $("plugins-table").addEventListener("click", (event) => {
      const button = event.target.closest("button.reload");
      if (button) reloadOne(button.dataset.plugin, button);
    });
    $("reload-all").addEventListener("click", (event) => reloadAll(event.currentTarget));
    const wanted = location.hash.slice(1);
    select(["host", "plugins", "api"].includes(wanted) ? wanted : "host");
    liveLoop();
    plugins.loop();
  }

  if (typeof uPlot === "undefined") {
    document.addEventListener("DOMContentLoaded", () => {
      showMessage("live-message", "The chart library (vendor/uPlot.iife.min.js) did not load.", "error");
    });
    return;
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
