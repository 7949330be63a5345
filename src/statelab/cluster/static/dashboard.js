/* statelab lab dashboard: polls the control API, draws requests per second,
 * and sends the operations the buttons name. No libraries, no build step. */
(function () {
  "use strict";

  const POLL_MS = 1000;
  const WINDOW_S = 60;
  const EVENTS_SHOWN = 300;
  const COLORS = ["#1f5fbf", "#c0392b", "#1e8449", "#7d3c98", "#b9770e", "#117a8b", "#6e2c00", "#b03a6f"];

  const $ = (sel) => document.querySelector(sel);
  const history = new Map(); // replica -> [{t, rps}]
  const previous = new Map(); // replica -> {t, requests}
  const colors = new Map();
  let lastEvent = 0;
  let latest = null;

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    (children || []).forEach((c) => node.append(c));
    return node;
  }

  function notice(text, kind) {
    const p = el("p", { className: kind, textContent: text });
    if (kind === "error") p.setAttribute("role", "alert");
    $("#notice").replaceChildren(p);
  }

  function colorOf(id) {
    if (!colors.has(id)) colors.set(id, COLORS[colors.size % COLORS.length]);
    return colors.get(id);
  }

  async function call(method, path) {
    let response;
    try {
      response = await fetch(path, { method: method, headers: { Accept: "application/json" }, cache: "no-store" });
    } catch (err) {
      throw new Error("the control API does not answer (is `statelab up` still running?)");
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      throw new Error((body && (body.error || body.detail)) || "the control API answered " + response.status);
    }
    return body;
  }

  // -- operations -------------------------------------------------------------
  const OPS = {
    add: () => ["POST", "/replicas", "Added a replica"],
    "rolling-restart": () => ["POST", "/rolling-restart", "Rolling restart finished"],
    "redis-kill": () => ["POST", "/redis/restart?mode=kill", "Redis killed and restarted"],
    "redis-clean": () => ["POST", "/redis/restart?mode=clean", "Redis restarted cleanly"],
    // Workers are addressed like replicas by the control API (/replicas/w1/...).
    kill: (id) => ["POST", "/replicas/" + id + "/kill?signal=KILL", "Sent SIGKILL to " + id],
    term: (id) => ["POST", "/replicas/" + id + "/kill?signal=TERM", "Sent SIGTERM to " + id],
    start: (id) => ["POST", "/replicas/" + id + "/start", "Started " + id],
    drain: (id) => ["POST", "/replicas/" + id + "/drain", "Draining " + id],
    remove: (id) => ["DELETE", "/replicas/" + id, "Removed " + id],
  };

  async function run(button) {
    const [method, path, done] = OPS[button.dataset.op](button.dataset.replica);
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    notice((button.getAttribute("aria-label") || button.textContent) + "…", "ok");
    try {
      await call(method, path);
      notice(done + ".", "ok");
    } catch (err) {
      notice(err.message, "error");
    } finally {
      button.removeAttribute("aria-busy");
      button.disabled = false;
      poll(true);
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-op]");
    if (button && !button.disabled) run(button);
  });

  // -- replicas ---------------------------------------------------------------
  const ACTIONS = [
    ["kill", "Kill -9", "danger", "Kill %s with SIGKILL (a crash)"],
    ["term", "SIGTERM", "", "Stop %s gracefully with SIGTERM"],
    ["start", "Start", "", "Start %s or put it back in rotation"],
    ["drain", "Drain", "", "Drain %s: no new requests"],
    ["remove", "Remove", "", "Drain, stop and remove %s"],
  ];

  function replicaRow(r) {
    const row = el("tr");
    row.dataset.replica = r.id;
    const cells = [el("th", { scope: "row", textContent: r.id })];
    for (let i = 0; i < 7; i++) cells.push(el("td"));
    const actions = el("td", { className: "actions" });
    for (const [op, label, cls, aria] of ACTIONS) {
      const b = el("button", { type: "button", textContent: label, className: cls });
      b.dataset.op = op;
      b.dataset.replica = r.id;
      b.dataset.testid = op + "-" + r.id;
      b.setAttribute("aria-label", aria.replace("%s", r.id));
      actions.append(b);
    }
    cells.push(actions);
    row.append(...cells);
    return row;
  }

  function renderReplicas(status, rates) {
    const body = $("#replicas");
    const seen = new Set();
    const many = status.replicas.length > 1;
    for (const r of status.replicas) {
      seen.add(r.id);
      let row = body.querySelector('tr[data-replica="' + r.id + '"]');
      if (!row || !row.querySelector("td.actions")) {
        const fresh = replicaRow(r);
        if (row) row.replaceWith(fresh);
        else body.append(fresh);
        row = fresh;
      }
      row.dataset.state = r.state;
      const td = row.querySelectorAll("td");
      td[0].textContent = r.state;
      td[0].className = "state " + r.state;
      td[1].textContent = r.pid == null ? "–" : String(r.pid);
      td[2].textContent = String(r.port);
      td[3].textContent = r.lb_status || "–";
      td[4].textContent = rates.has(r.id) ? rates.get(r.id).toFixed(1) : "–";
      td[4].className = "num";
      td[5].textContent = String(r.requests);
      td[5].className = "num";
      td[6].textContent = String(r.sessions);
      td[6].className = "num";
      const can = {
        kill: r.alive,
        term: r.alive,
        start: !r.alive || r.state === "draining" || r.state === "down",
        drain: r.alive && r.state === "up",
        remove: many,
      };
      row.querySelectorAll("button[data-op]").forEach((b) => {
        if (b.getAttribute("aria-busy") !== "true") b.disabled = !can[b.dataset.op];
      });
    }
    body.querySelectorAll("tr[data-replica]").forEach((row) => {
      if (!seen.has(row.dataset.replica)) row.remove();
    });
  }

  // -- services ---------------------------------------------------------------
  function service(title, state, facts) {
    const dl = el("dl");
    for (const [k, v] of facts) {
      if (v === undefined || v === null || v === "") continue;
      dl.append(el("dt", { textContent: k }), el("dd", { textContent: String(v) }));
    }
    const head = el("h3", {}, [title + " ", el("span", { className: "state " + state, textContent: state })]);
    const box = el("div", { className: "service" }, [head, dl]);
    box.dataset.service = title.toLowerCase();
    box.dataset.state = state;
    return box;
  }

  function renderServices(s) {
    const boxes = [];
    if (s.redis) {
      boxes.push(
        service("Redis", s.redis.state, [
          ["topology", s.redis.topology],
          ["primary", s.redis.topology === "cluster" ? "" : s.redis.name],
          ["pid", s.redis.pid],
          ["url", s.redis.url],
        ])
      );
    } else {
      boxes.push(service("Redis", "unused", [["why", "no placement of this profile needs it"]]));
    }
    const db = s.database || {};
    const isPg = /^postgres/.test(db.url || "");
    boxes.push(service(isPg ? "PostgreSQL" : "SQLite", db.state || "up", [["pid", db.pid], ["url", db.url]]));
    if (s.haproxy) {
      const h = s.haproxy;
      boxes.push(
        service("HAProxy", h.state, [
          ["pid", h.pid],
          ["port", h.port],
          ["responses", h.requests],
          ["LB sessions", h.sessions],
          ["retries", h.retries],
          ["redispatches", h.redispatches],
        ])
      );
    }
    $("#services").replaceChildren(...boxes);
  }

  // Workers: rows updated in place, like replicas, so a focused button stays put.
  const WORKER_ACTIONS = [
    ["kill", "Kill -9", "danger", "Kill worker %s with SIGKILL (a crash)"],
    ["term", "SIGTERM", "", "Stop worker %s gracefully with SIGTERM"],
    ["start", "Start", "", "Start worker %s"],
  ];

  function workerRow(w) {
    const row = el("tr");
    row.dataset.worker = w.id;
    const actions = el("td", { className: "actions" });
    for (const [op, label, cls, aria] of WORKER_ACTIONS) {
      const b = el("button", { type: "button", textContent: label, className: cls });
      b.dataset.op = op;
      b.dataset.replica = w.id;
      b.setAttribute("aria-label", aria.replace("%s", w.id));
      actions.append(b);
    }
    row.append(el("th", { scope: "row", textContent: w.id }), el("td"), el("td"), actions);
    return row;
  }

  function renderWorkers(s) {
    const workers = (s.workers || []).filter(Boolean);
    const body = $("#workers");
    $("#no-workers").hidden = workers.length > 0;
    $("#no-workers").textContent = "No job workers: jobs are " + ((s.placements && s.placements.jobs) || "?") + ".";
    body.closest("table").hidden = workers.length === 0;
    const seen = new Set();
    for (const w of workers) {
      const id = w.id || w.name;
      seen.add(id);
      let row = body.querySelector('tr[data-worker="' + id + '"]');
      if (!row) {
        row = workerRow({ id: id });
        body.append(row);
      }
      const alive = w.state === "up";
      row.dataset.state = alive ? "up" : "down";
      const td = row.querySelectorAll("td");
      td[0].textContent = w.state;
      td[0].className = "state " + (alive ? "up" : "down");
      td[1].textContent = w.pid == null ? "–" : String(w.pid);
      row.querySelectorAll("button[data-op]").forEach((b) => {
        if (b.getAttribute("aria-busy") !== "true") b.disabled = b.dataset.op === "start" ? alive : !alive;
      });
    }
    body.querySelectorAll("tr[data-worker]").forEach((row) => {
      if (!seen.has(row.dataset.worker)) row.remove();
    });
  }

  // Redis processes (a primary, replicas, sentinels or cluster nodes): each can be
  // killed and started by name through the same routes as a replica.
  const REDIS_ACTIONS = [
    ["kill", "Kill -9", "danger", "Kill Redis process %s with SIGKILL (a crash)"],
    ["start", "Start", "", "Start Redis process %s again"],
  ];

  function redisDetail(p) {
    if (p.role === "primary") return (p.slots != null ? p.slots + " slots, " : "") + p.replicas + " replica(s)";
    if (p.role === "replica") return "of port " + p.primary_port + ", link " + p.link;
    if (p.role === "sentinel") return p.sees_primary ? "sees the primary on port " + p.sees_primary : "";
    return "";
  }

  function renderRedis(s) {
    const panel = $("#redis-panel");
    const processes = (s.redis && s.redis.processes) || [];
    panel.hidden = processes.length === 0;
    $("#redis-topology").textContent = s.redis ? s.redis.topology + ": " + s.redis.url : "";
    const body = $("#redis-processes");
    const seen = new Set();
    for (const p of processes) {
      seen.add(p.name);
      let row = body.querySelector('tr[data-redis="' + p.name + '"]');
      if (!row) {
        row = el("tr");
        row.dataset.redis = p.name;
        const actions = el("td", { className: "actions" });
        for (const [op, label, cls, aria] of REDIS_ACTIONS) {
          const b = el("button", { type: "button", textContent: label, className: cls });
          b.dataset.op = op;
          b.dataset.replica = p.name;
          b.setAttribute("aria-label", aria.replace("%s", p.name));
          actions.append(b);
        }
        row.append(el("th", { scope: "row", textContent: p.name }), el("td"), el("td"), el("td"), el("td"), el("td"), actions);
        body.append(row);
      }
      const alive = p.state === "up";
      row.dataset.state = p.state;
      const td = row.querySelectorAll("td");
      td[0].textContent = p.role || "–";
      td[1].textContent = p.state;
      td[1].className = "state " + (alive ? "up" : "down");
      td[2].textContent = p.pid == null ? "–" : String(p.pid);
      td[3].textContent = String(p.port);
      td[4].textContent = redisDetail(p);
      row.querySelectorAll("button[data-op]").forEach((b) => {
        if (b.getAttribute("aria-busy") !== "true") b.disabled = b.dataset.op === "start" ? alive : !alive;
      });
    }
    body.querySelectorAll("tr[data-redis]").forEach((row) => {
      if (!seen.has(row.dataset.redis)) row.remove();
    });
  }

  // -- chart ------------------------------------------------------------------
  function rates(status, now) {
    const out = new Map();
    for (const r of status.replicas) {
      const prev = previous.get(r.id);
      previous.set(r.id, { t: now, requests: r.requests });
      if (!prev || now <= prev.t) continue;
      const rps = Math.max(0, (r.requests - prev.requests) / ((now - prev.t) / 1000));
      out.set(r.id, rps);
      if (!history.has(r.id)) history.set(r.id, []);
      const series = history.get(r.id);
      series.push({ t: now, rps: rps });
      while (series.length && series[0].t < now - WINDOW_S * 1000) series.shift();
    }
    for (const id of Array.from(history.keys())) {
      if (!status.replicas.some((r) => r.id === id)) history.delete(id);
    }
    return out;
  }

  function draw(now) {
    const canvas = $("#chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const left = 40, right = 8, top = 8, bottom = 22;
    const w = width - left - right, h = height - top - bottom;
    let max = 4;
    history.forEach((s) => s.forEach((p) => (max = Math.max(max, p.rps))));
    max = niceCeil(max);
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#4d5665";
    g.strokeStyle = "#dde3ec";
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = top + h - (h * i) / 4;
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(left + w, y);
      g.stroke();
      g.fillText(String(Math.round((max * i) / 4)), 4, y + 4);
    }
    for (let s = 0; s <= WINDOW_S; s += 15) {
      const x = left + w - (w * s) / WINDOW_S;
      g.fillText(s === 0 ? "now" : "-" + s + "s", x - 12, height - 6);
    }
    history.forEach((series, id) => {
      g.strokeStyle = colorOf(id);
      g.lineWidth = 2;
      g.beginPath();
      series.forEach((p, i) => {
        const x = left + w - (w * (now - p.t)) / (WINDOW_S * 1000);
        const y = top + h - (h * p.rps) / max;
        if (i === 0) g.moveTo(x, y);
        else g.lineTo(x, y);
      });
      g.stroke();
    });
  }

  function niceCeil(v) {
    const steps = [4, 8, 12, 20, 40, 60, 100, 200, 400, 600, 1000, 2000, 4000, 6000, 10000, 20000, 40000];
    for (const s of steps) if (v <= s) return s;
    return Math.ceil(v / 20000) * 20000;
  }

  function renderLegend(status, current) {
    const items = status.replicas.map((r) => {
      const value = current.has(r.id) ? current.get(r.id).toFixed(1) : "–";
      const li = el("li", {}, [
        el("span", { className: "swatch" }),
        el("span", { textContent: r.id + ": " + value + " req/s" + (r.state === "up" ? "" : " (" + r.state + ")") }),
      ]);
      li.firstChild.style.background = colorOf(r.id);
      li.dataset.replica = r.id;
      return li;
    });
    $("#legend").replaceChildren(...items);
  }

  // -- events -----------------------------------------------------------------
  function eventItem(e) {
    const when = new Date(e.ts * 1000);
    const stamp = when.toLocaleTimeString([], { hour12: false }) + "." + String(when.getMilliseconds()).padStart(3, "0");
    const rest = Object.entries(e)
      .filter(([k]) => !["ts", "at", "event", "target"].includes(k))
      .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v))
      .join(" ");
    let cls = "name";
    if (/kill/.test(e.event)) cls += " kill";
    if (/exited|DOWN/.test(e.event + " " + (e.now || ""))) cls += " exited";
    const li = el("li", {}, [
      el("time", { dateTime: e.at || when.toISOString(), textContent: stamp }),
      el("span", { className: cls, textContent: e.event }),
      el("span", { textContent: e.target ? e.target + " " : "" }),
      el("span", { className: "detail", textContent: rest }),
    ]);
    li.dataset.event = e.event;
    if (e.target) li.dataset.target = e.target;
    return li;
  }

  function renderEvents(events) {
    if (!events.length) return;
    const list = $("#events");
    const fresh = events.slice(-EVENTS_SHOWN).map(eventItem).reverse();
    list.prepend(...fresh);
    while (list.children.length > EVENTS_SHOWN) list.lastElementChild.remove();
    lastEvent = events[events.length - 1].ts;
  }

  // -- polling ----------------------------------------------------------------
  let polling = false;
  let timer = null;

  function show(status, now) {
    latest = status;
    const current = rates(status, now);
    $("#profile").textContent = status.profile;
    $("#self-heal").textContent = status.self_heal ? "on" : "off";
    renderReplicas(status, current);
    renderServices(status);
    renderWorkers(status);
    renderRedis(status);
    renderLegend(status, current);
    draw(now);
  }

  async function poll(soon) {
    if (soon) {
      window.clearTimeout(timer);
    }
    if (polling) return;
    polling = true;
    const link = $("#link");
    try {
      const [status, events] = await Promise.all([call("GET", "/status"), call("GET", "/events?since=" + lastEvent)]);
      show(status, Date.now());
      renderEvents(events);
      link.textContent = "live";
      link.className = "link-state up";
    } catch (err) {
      link.textContent = "control API not answering";
      link.className = "link-state down";
    } finally {
      polling = false;
      window.clearTimeout(timer);
      timer = window.setTimeout(poll, POLL_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    try {
      show(JSON.parse($("#initial-status").textContent), Date.now());
    } catch (err) {
      /* the first poll fills the page */
    }
    window.addEventListener("resize", () => latest && draw(Date.now()));
    poll();
  });
})();
