// flowyard dashboard, run page: follows a running run over Server-Sent Events.
//
// - DAG (dag.py): step.started/completed/failed/skipped/retrying of this run set data-state
//   on its g.node (ui.css colours it); sub-workflow runs' events do not touch it.
// - #events-live: one <li> per event (at most MAX_EVENTS; step.progress of a step key updates
//   its line in place; step.delta goes to #deltas instead).
// - #deltas: streamed text (step.delta), one <pre> per (run id, step key).
// - run.finished of this run: #run-status is updated at once; unless newer events follow (a
//   resumed run), the cancel button is hidden and #run-details reloaded by htmx; the stream
//   is closed when the server ends it.
// Events are queued as they arrive and applied once per animation frame (a stream catching
// up delivers hundreds at once). Server data only ever reaches the page as text (textContent, Text nodes, attributes set by
// setAttribute/dataset): never as HTML.
// For tests and benchmarks: window.flowyardLive = {applied (events), lastSeq (highest stored
// seq of this run applied), maxApplyMs (longest time from an event's arrival to the end of
// the batch that applied it), maxBatchMs (longest batch), batches, errors (events or
// requests that failed, quietly)}; document.body.dataset.lastEventSeq = lastSeq.
"use strict";
(() => {
  const live = document.getElementById("run-live");
  if (!live) return;
  const runId = live.dataset.runId || "";
  const eventsUrl = live.dataset.eventsUrl || "";
  const stats = { applied: 0, lastSeq: 0, maxApplyMs: 0, maxBatchMs: 0, batches: 0, errors: 0 };
  window.flowyardLive = stats;

  const MAX_EVENTS = 500;
  const MAX_DELTA_CHARS = 200000; // per <pre>: older text is cut first
  const NODE_STATES = {
    "step.started": "running",
    "step.completed": "completed",
    "step.failed": "failed",
    "step.skipped": "skipped",
    "step.retrying": "retrying",
  };
  // EventSource delivers an event with an `event:` field only to listeners of that type.
  const TYPES = [
    "run.started", "run.finished", "step.started", "step.completed", "step.failed",
    "step.skipped", "step.retrying", "step.delta", "step.progress", "step.usage", "log",
    "llm.call", "llm.error", "tool.call", "agent.started", "agent.turn", "agent.memory",
    "router.choice", "router.state_error", "budget.exceeded",
  ];

  // ---- DAG nodes: a Map built once (1,000 steps: no selector per event)
  let nodes = null;
  function indexNodes() {
    nodes = new Map();
    for (const g of document.querySelectorAll("#dag g.node")) {
      nodes.set(g.getAttribute("data-step"), g);
    }
  }
  function nodeOf(stepId) {
    if (nodes === null) indexNodes();
    let g = nodes.get(stepId);
    if (g && !g.isConnected) { // the DAG was swapped by htmx: index the new one
      indexNodes();
      g = nodes.get(stepId);
    }
    return g;
  }

  // ---- events list
  const list = document.getElementById("events-live");
  let listAtBottom = true;
  let scrollQueued = false;
  const dirtyPres = new Set();
  const progressLines = new Map(); // run id + step key -> <li> of its latest step.progress
  if (list) {
    list.addEventListener("scroll", () => {
      listAtBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    }, { passive: true });
  }
  function queueScroll() { // one layout per frame, however many events arrived in it
    if (scrollQueued) return;
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      if (list && listAtBottom) list.scrollTop = list.scrollHeight;
      for (const pre of dirtyPres) {
        if (pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 80) {
          pre.scrollTop = pre.scrollHeight;
        }
      }
      dirtyPres.clear();
    });
  }

  const pad = (n) => String(n).padStart(2, "0");
  function clock(t) {
    const d = typeof t === "number" ? new Date(t * 1000) : new Date(t || Date.now());
    if (Number.isNaN(d.getTime())) return "";
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  const text = (v) => (v === undefined || v === null ? "" : String(v));
  function detail(ev, d) {
    switch (ev.type) {
      case "step.started": return text(d.uses);
      case "step.completed":
        return [d.resumed ? "resumed" : "", d.attempts > 1 ? `${d.attempts} attempts` : "",
          d.fallback ? `fallback after ${text(d.error_type) || "error"}` : ""]
          .filter(Boolean).join(", ");
      case "step.failed":
        return [d.status && d.status !== "failed" ? d.status : "", text(d.error_type),
          text(d.error)].filter(Boolean).join(": ");
      case "step.retrying":
        return `attempt ${text(d.attempt)}${d.step_key && d.step_key !== ev.step_id ? ` of ${d.step_key}` : ""}` +
          (typeof d.wait_s === "number" ? `, next in ${d.wait_s.toFixed(1)} s` : "") +
          (d.error ? `: ${text(d.error)}` : "");
      case "step.skipped": return text(d.reason);
      case "step.progress":
        return `${text(d.step_key)} ${text(d.description)} ${text(d.done)}` +
          (d.total !== undefined && d.total !== null ? `/${text(d.total)}` : "") +
          ` ${text(d.unit)}`;
      case "run.started": return text(d.workflow);
      case "run.finished": return text(d.status);
      case "log": return `[${text(d.level)}] ${text(d.message)}`;
      default: {
        const json = JSON.stringify(d);
        return json && json !== "{}" ? json : "";
      }
    }
  }
  function fillLine(li, ev, d) {
    const full = detail(ev, d);
    const time = document.createElement("time");
    time.textContent = clock(ev.time);
    const type = document.createElement("span");
    type.className = "type";
    type.textContent = ev.type;
    const step = document.createElement("span");
    step.className = "step";
    step.textContent = text(ev.step_id) +
      (ev.run_id && ev.run_id !== runId ? ` (sub-run ${text(ev.run_id).slice(0, 8)})` : "");
    const info = document.createElement("span");
    info.className = "detail";
    info.textContent = full.length > 300 ? `${full.slice(0, 299)}…` : full;
    if (full.length > 60) info.title = full.slice(0, 4000);
    li.replaceChildren(time, type, step, info);
  }
  function addLine(ev, d) {
    if (!list) return;
    let li = null;
    const progressKey = ev.type === "step.progress" ? `${ev.run_id}\u0000${text(d.step_key)}` : null;
    if (progressKey !== null) {
      li = progressLines.get(progressKey) || null;
      if (li && !li.isConnected) li = null;
    }
    if (li === null) {
      li = document.createElement("li");
      li.className = `ev-${ev.type.replace(/[^A-Za-z0-9_-]+/g, "-")}`;
      li.dataset.type = ev.type;
      if (ev.step_id) li.dataset.step = ev.step_id;
      if (progressKey !== null) progressLines.set(progressKey, li);
      list.append(li);
      while (list.childElementCount > MAX_EVENTS) list.firstElementChild.remove();
    }
    if (ev.seq) li.dataset.seq = String(ev.seq);
    fillLine(li, ev, d);
    queueScroll();
  }

  // ---- token deltas
  const deltasBox = document.getElementById("deltas");
  const streams = new Map(); // run id + step key -> {section, pre, body (Text), attempt}
  function addDelta(ev, d) {
    if (!deltasBox) return;
    const key = text(d.step_key || ev.step_id);
    const id = `${ev.run_id}\u0000${key}`;
    let s = streams.get(id);
    if (!s) {
      const section = document.createElement("section");
      section.className = "delta";
      section.dataset.runId = text(ev.run_id);
      section.dataset.stepKey = key;
      const heading = document.createElement("h3");
      heading.textContent = ev.run_id === runId ? key
        : `${key} (sub-run ${text(ev.run_id).slice(0, 8)})`;
      const pre = document.createElement("pre");
      const body = document.createTextNode("");
      pre.append(body);
      section.append(heading, pre);
      deltasBox.append(section);
      s = { section, pre, body, attempt: d.attempt };
      streams.set(id, s);
    }
    if (d.attempt !== undefined && s.attempt !== undefined && d.attempt !== s.attempt) {
      s.body.appendData(`\n--- attempt ${text(d.attempt)} ---\n`);
      s.section.classList.remove("done");
    }
    s.attempt = d.attempt;
    if (typeof d.text === "string" && d.text) s.body.appendData(d.text);
    if (s.body.length > MAX_DELTA_CHARS) s.body.deleteData(0, s.body.length - MAX_DELTA_CHARS);
    if (d.final) s.section.classList.add("done");
    dirtyPres.add(s.pre);
    queueScroll();
  }

  // ---- run status and end
  function setStatus(status) {
    const el = document.getElementById("run-status");
    if (!el || !status) return;
    el.textContent = status;
    el.dataset.status = status;
    for (const c of Array.from(el.classList)) {
      if (c.startsWith("status-")) el.classList.remove(c);
    }
    el.classList.add(`status-${status.replace(/[^A-Za-z0-9_-]+/g, "")}`);
  }
  // The end. A run.finished may be an old one: the stream replays the run's log from the
  // start, and a resumed run has one per earlier attempt, followed by more events. So the
  // page settles (controls hidden, details reloaded) once no newer event followed it for
  // SETTLE_MS, and closes the stream when the server ends it after a run.finished (the
  // server does so only once the run stays ended; EventSource would reconnect).
  const SETTLE_MS = 300;
  let source = null;
  let finishedSeq = 0; // seq of the run.finished that is, so far, the last stored event
  let settleTimer = 0;
  function controls(show) { // what only a live run offers (the cancel button)
    const button = document.getElementById("cancel-run");
    const form = button && (button.closest("form") || button);
    if (form) form.hidden = !show;
  }
  function finished(seq, d) {
    setStatus(text(d.status));
    finishedSeq = seq || finishedSeq || 1;
    clearTimeout(settleTimer);
    settleTimer = setTimeout(settle, SETTLE_MS);
  }
  function resumed() { // a newer stored event: that run.finished was not the last word
    finishedSeq = 0;
    clearTimeout(settleTimer);
    settleTimer = 0;
  }
  function settle() {
    settleTimer = 0;
    controls(false);
    if (window.htmx && document.getElementById("run-details")) refreshDetails();
  }
  function streamEnded() {
    live.dataset.ended = "true";
    if (source) source.close();
    if (settleTimer) { // ended before SETTLE_MS: settle now
      clearTimeout(settleTimer);
      settle();
    }
  }
  function refreshDetails() {
    try {
      const done = window.htmx.ajax("GET", location.pathname,
        { target: "#run-details", select: "#run-details", swap: "outerHTML" });
      if (done && typeof done.catch === "function") done.catch(() => { stats.errors += 1; });
    } catch (e) {
      stats.errors += 1;
    }
  }

  function apply(ev, showLine) {
    const own = ev.run_id === runId;
    const seq = Number(ev.seq) || 0;
    if (own && seq > 0 && seq <= stats.lastSeq) return; // seen before a reconnection
    const d = ev.data && typeof ev.data === "object" ? ev.data : {};
    const state = NODE_STATES[ev.type];
    if (state && own && ev.step_id) {
      const g = nodeOf(ev.step_id);
      if (g) {
        g.setAttribute("data-state",
          ev.type === "step.failed" && d.status === "cancelled" ? "cancelled" : state);
      }
    }
    if (ev.type === "step.delta") addDelta(ev, d);
    else if (showLine) addLine(ev, d);
    if (own && seq > 0 && finishedSeq > 0 && ev.type !== "run.finished") resumed();
    if (own && ev.type === "run.started") {
      setStatus("running");
      controls(true);
    }
    if (own && ev.type === "run.finished") finished(seq, d);
    stats.applied += 1;
    if (own && seq > 0) stats.lastSeq = seq;
  }

  // ---- batches: a stream catching up sends hundreds of events in one network chunk, which
  // the browser dispatches in one task; they are queued and applied once per frame, and only
  // the lines that stay in #events-live are built.
  const queue = []; // [event, performance.now() when it arrived]
  let flushQueued = false;
  function scheduleFlush() {
    if (flushQueued) return;
    flushQueued = true;
    if (document.hidden) setTimeout(flush, 200); // no frames in a background tab
    else requestAnimationFrame(flush);
  }
  function flush() {
    flushQueued = false;
    if (!queue.length) return;
    const start = performance.now();
    const batch = queue.splice(0);
    let skip = -MAX_EVENTS; // lines beyond the last MAX_EVENTS would be dropped at once
    for (const item of batch) if (item[0].type !== "step.delta") skip += 1;
    for (const [ev] of batch) {
      const line = ev.type !== "step.delta" && skip-- <= 0;
      try {
        apply(ev, line);
      } catch (e) { // one odd event must not stop the page from following the run
        stats.errors += 1;
      }
    }
    if (stats.lastSeq) document.body.dataset.lastEventSeq = String(stats.lastSeq);
    const end = performance.now();
    stats.batches += 1;
    stats.maxBatchMs = Math.max(stats.maxBatchMs, end - start);
    stats.maxApplyMs = Math.max(stats.maxApplyMs, end - batch[0][1]);
  }

  function onMessage(message) {
    const arrived = performance.now();
    let ev;
    try {
      ev = JSON.parse(message.data);
    } catch (e) {
      stats.errors += 1;
      return;
    }
    if (!ev || typeof ev !== "object") return;
    if (typeof ev.type !== "string") ev.type = message.type;
    queue.push([ev, arrived]);
    scheduleFlush();
  }

  if (live.dataset.ended === "false" && eventsUrl && typeof EventSource === "function") {
    indexNodes(); // now, not while the first event waits
    try {
      source = new EventSource(eventsUrl);
    } catch (e) {
      source = null;
    }
    if (source) {
      for (const type of TYPES) source.addEventListener(type, onMessage);
      source.onmessage = onMessage;
      source.onerror = () => { // else the browser reconnects by itself (with Last-Event-ID)
        flush();
        if (finishedSeq > 0) streamEnded();
        live.dataset.stream = source.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
      };
      source.onopen = () => { live.dataset.stream = "open"; };
    }
  }
})();
