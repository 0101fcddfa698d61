// The status page: polls api/status and follows the server-sent events of
// `events`. Every value is written with textContent (never as markup), so a
// worker name or an event that looks like HTML stays text.
"use strict";

(() => {
  const POLL_MS = 3000;
  const MAX_EVENTS = 200;
  const SOON_SECONDS = 14 * 86400;

  const byId = (id) => document.getElementById(id);

  function node(tag, text, className) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (className) e.className = className;
    return e;
  }

  function pill(text, tone) {
    return node("span", text, "pill " + tone);
  }

  // "45s", "5m", "2h 10m", "3d 4h": a duration in seconds, for people.
  function span(seconds) {
    let s = Math.round(Math.abs(seconds));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return s % 60 ? m + "m " + (s % 60) + "s" : m + "m";
    const h = Math.floor(m / 60);
    if (h < 48) return m % 60 ? h + "h " + (m % 60) + "m" : h + "h";
    const d = Math.floor(h / 24);
    return h % 24 ? d + "d " + (h % 24) + "h" : d + "d";
  }

  // A time relative to the status's generation time: "12s ago", "in 5m".
  function when(iso, now) {
    if (!iso) return null;
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return iso;
    const delta = (t - now) / 1000;
    if (Math.abs(delta) < 1) return "now";
    return delta > 0 ? "in " + span(delta) : span(delta) + " ago";
  }

  function timeCell(iso, now, pastIsDue) {
    const td = node("td", null, "when");
    if (!iso) {
      td.textContent = "–";
      td.classList.add("none");
      return td;
    }
    const delta = Date.parse(iso) - now;
    td.textContent = pastIsDue && delta <= 0 ? "due" : when(iso, now);
    td.title = iso;
    return td;
  }

  const TONES = {
    healthy: "good", running: "good",
    degraded: "warn", provisioning: "warn", starting: "warn", stopping: "warn", destroying: "warn",
    unknown: "muted", stopped: "muted", destroyed: "muted",
    unhealthy: "bad", failed: "bad",
  };

  // Fills `table` with `rows`, one column per entry of `columns`:
  // {label, cell(row) -> string | Node | null}. Each cell carries its label,
  // which the phone layout shows beside the value.
  function fill(table, columns, rows, emptyText) {
    const head = node("thead");
    const headRow = node("tr");
    for (const column of columns) headRow.append(node("th", column.label));
    head.append(headRow);
    const body = node("tbody");
    if (rows.length === 0) {
      const tr = node("tr");
      const td = node("td", emptyText, "empty-row");
      td.colSpan = columns.length;
      tr.append(td);
      body.append(tr);
    }
    for (const row of rows) {
      const tr = node("tr");
      for (const column of columns) {
        let value = column.cell(row);
        let td;
        if (value instanceof HTMLTableCellElement) {
          td = value;
        } else {
          td = node("td");
          if (value instanceof Node) td.append(value);
          else if (value === null || value === undefined || value === "") {
            td.textContent = "–";
            td.classList.add("none");
          } else td.textContent = String(value);
        }
        td.dataset.label = column.label;
        if (column.key) td.dataset.col = column.key;
        tr.append(td);
      }
      body.append(tr);
    }
    table.replaceChildren(head, body);
  }

  function schedule(w) {
    if (w.schedule) return w.timezone ? w.schedule + " (" + w.timezone + ")" : w.schedule;
    if (w.kind === "periodic") return "every " + span(w.interval);
    if (w.kind === "event") {
      const types = w.subscriptions || [];
      return types.includes(">") ? "on every event" : "on " + types.join(", ");
    }
    return "at start";
  }

  function errorCell(message, at, now) {
    const td = node("td");
    if (!message && !at) {
      td.textContent = "–";
      td.classList.add("none");
      return td;
    }
    if (message) {
      td.classList.add("error");
      td.textContent = at ? message + " (" + when(at, now) + ")" : message;
    } else {
      // A later run succeeded: say when the last failure was, not what it was.
      td.textContent = "last failed " + when(at, now);
      td.classList.add("muted");
    }
    if (at) td.title = at;
    return td;
  }

  function renderWorkers(workers, now) {
    const columns = [
      { label: "Name", key: "name", cell: (w) => w.name },
      { label: "Process", key: "process", cell: (w) => w.process },
      { label: "Kind", cell: (w) => w.kind + (w.scope === "node" ? " · node " + (w.node || "") : "") },
      { label: "Schedule", cell: schedule },
      { label: "Last run", cell: (w) => timeCell(w.last_run, now, false) },
      { label: "Next run", cell: (w) => timeCell(w.next_run, now, true) },
      { label: "Runs", cell: (w) => w.run_count },
      {
        label: "Errors",
        cell: (w) => (w.error_count ? pill(w.error_count, "bad") : "0"),
      },
      {
        label: "Dead letters",
        cell: (w) => (w.dead_letter_count ? pill(w.dead_letter_count, "warn") : "0"),
      },
      { label: "Last error", cell: (w) => errorCell(w.last_error, w.last_error_at, now) },
    ];
    // Pausing comes with the worker controls: shown when the answer says.
    if (workers.some((w) => "paused" in w)) {
      columns.splice(2, 0, {
        label: "Paused",
        key: "paused",
        cell: (w) => (w.paused ? pill("paused", "warn") : "no"),
      });
    }
    columns.splice(2, 0, {
      label: "State",
      cell: (w) => (w.running ? pill("running", "good") : "idle"),
    });
    fill(byId("workers"), columns, workers, "No workers answered.");
  }

  function renderNodes(nodes, now) {
    fill(byId("nodes"), [
      { label: "Node", key: "name", cell: (n) => n.name },
      { label: "State", cell: (n) => pill(n.live ? "live" : "dead", n.live ? "good" : "bad") },
      { label: "Last heartbeat", cell: (n) => timeCell(n.last_heartbeat, now, false) },
      {
        label: "Processes",
        cell: (n) => (n.processes || []).map((p) => p.process + (p.live ? "" : " (gone)")).join(", "),
      },
      { label: "Instances", cell: (n) => n.instances || 0 },
    ], nodes, "No nodes.");
  }

  function renderInstances(instances, now) {
    fill(byId("instances"), [
      { label: "Name", key: "name", cell: (i) => i.name },
      { label: "Provider", cell: (i) => i.provider },
      { label: "Node", cell: (i) => i.node },
      { label: "Desired", cell: (i) => i.desired },
      { label: "State", cell: (i) => pill(i.state, TONES[i.state] || "muted") },
      { label: "Health", cell: (i) => pill(i.health, TONES[i.health] || "muted") },
      { label: "Updated", cell: (i) => timeCell(i.updated, now, false) },
      { label: "Error", cell: (i) => errorCell(i.state_error, null, now) },
    ], instances, "No instances.");
  }

  function renderChecks(checks, now) {
    fill(byId("checks"), [
      { label: "Instance", key: "instance", cell: (c) => c.instance },
      { label: "Check", cell: (c) => c.check + " (" + c.type + ")" },
      { label: "Status", cell: (c) => pill(c.status, TONES[c.status] || "muted") },
      { label: "Last checked", cell: (c) => timeCell(c.last_checked, now, false) },
      {
        label: "Latency",
        cell: (c) => (typeof c.last_latency === "number" ? Math.round(c.last_latency * 1000) + " ms" : null),
      },
      { label: "Message", cell: (c) => c.last_message },
    ], checks, "No health checks.");
  }

  function renderCerts(certs, now) {
    fill(byId("certs"), [
      { label: "Hostname", key: "hostname", cell: (c) => c.hostname },
      { label: "Instance", cell: (c) => c.instance },
      { label: "Issuer", cell: (c) => c.issuer },
      {
        label: "Expires",
        cell: (c) => {
          if (!c.not_after) return pill("no certificate", "warn");
          const left = typeof c.time_left === "number" ? c.time_left : 0;
          const tone = left <= 0 ? "bad" : left < SOON_SECONDS ? "warn" : "good";
          const td = node("td");
          td.append(pill(when(c.not_after, now), tone));
          td.title = c.not_after;
          return td;
        },
      },
      { label: "Renew", cell: (c) => timeCell(c.renew_at, now, true) },
      { label: "Last error", cell: (c) => errorCell(c.last_error, null, now) },
    ], certs, "No domains.");
  }

  function setFigure(id, text, attention) {
    const e = byId(id);
    e.textContent = text;
    e.parentElement.classList.toggle("attention", Boolean(attention));
  }

  function render(status) {
    const now = Date.parse(status.generated) || Date.now();
    byId("process").textContent = "process " + status.process;
    byId("node").textContent = "node " + status.node;
    byId("generated").textContent = new Date(now).toLocaleTimeString();
    byId("generated").title = status.generated;

    const workers = status.workers || [];
    const nodes = status.nodes || [];
    const instances = status.instances || [];
    const checks = status.checks || [];
    const certs = status.certs || [];
    renderWorkers(workers, now);
    renderNodes(nodes, now);
    renderInstances(instances, now);
    renderChecks(checks, now);
    renderCerts(certs, now);

    const failing = workers.filter((w) => w.last_error).length;
    setFigure("sum-workers", String(new Set(workers.map((w) => w.name)).size));
    setFigure("sum-failing", String(failing), failing > 0);
    setFigure("sum-nodes", nodes.filter((n) => n.live).length + " / " + nodes.length,
      nodes.some((n) => !n.live));
    setFigure("sum-instances",
      instances.filter((i) => i.state === "running").length + " / " + instances.length);
    const unhealthy = instances.filter((i) => i.health === "unhealthy").length;
    setFigure("sum-unhealthy", String(unhealthy), unhealthy > 0);
    const due = certs.filter((c) => typeof c.time_left !== "number" || c.time_left < SOON_SECONDS).length;
    setFigure("sum-certs", String(due), due > 0);

    const problems = byId("problems");
    const entries = Object.entries(status.problems || {});
    problems.hidden = entries.length === 0;
    problems.textContent = entries.map(([part, why]) => part + ": " + why).join("\n");
  }

  function connection(text, live) {
    const e = byId("connection");
    e.textContent = text;
    e.classList.toggle("live", live);
    e.classList.toggle("stale", !live);
  }

  async function poll() {
    try {
      const response = await fetch("api/status", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      connection("live", true);
    } catch (err) {
      connection("not updated: " + (err && err.message ? err.message : err), false);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  // Events: newest first, at most MAX_EVENTS; an event seen twice (a
  // reconnect is given the latest again) is shown once.
  const seen = new Set();
  let shown = 0;

  function addEvent(event) {
    const key = event.source + "\u0000" + event.id;
    if (seen.has(key)) return;
    seen.add(key);
    const list = byId("events");
    const li = node("li", null, "new");
    li.dataset.type = event.type;
    li.dataset.key = key;
    const time = node("span", event.time ? new Date(event.time).toLocaleTimeString() : "", "time");
    if (event.time) time.title = event.time;
    li.append(
      time,
      node("span", event.type, "type"),
      node("span", event.subject || "", "subject"),
      node("span", summary(event), "data"),
    );
    list.prepend(li);
    shown += 1;
    while (list.children.length > MAX_EVENTS) {
      const last = list.lastElementChild;
      const old = last.dataset.key;
      if (old) seen.delete(old);
      last.remove();
    }
    byId("events-empty").hidden = true;
    byId("events-count").textContent = "(" + shown + ")";
  }

  function summary(event) {
    const parts = ["from " + event.source];
    const data = event.data && Object.keys(event.data).length ? JSON.stringify(event.data) : "";
    if (data) parts.push(data.length > 240 ? data.slice(0, 240) + "…" : data);
    return parts.join(" ");
  }

  function follow() {
    const source = new EventSource("events");
    source.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (err) {
        return; // the server sends JSON only; anything else is not an event
      }
      addEvent(event);
    };
  }

  poll();
  follow();
})();
