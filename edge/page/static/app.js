// MASF Edge operator page: plain JavaScript, no framework, nothing loaded from elsewhere.
// State comes from the page server as server-sent events (/events): "snapshot" (everything), "result" and
// "camera" (one camera), "gallery" (the evidence list) and "daemon" (reachability). The tile of a camera
// carries data-verdict, data-seq, data-heatmap-seq (the seq whose heatmap is displayed) and data-shown-at
// (browser time in ms when the newest result was fully on screen) for monitoring and tests.
"use strict";

(() => {
  const TOKEN_KEY = "masf-edge-page-token";
  const page = {
    offset: 0, // server clock minus browser clock (seconds)
    control: false,
    evidence: false,
    cameras: new Map(),
    gallery: new Map(), // key -> figure element
    daemon: null,
  };

  const $ = (sel, root = document) => root.querySelector(sel);
  const num = (x, digits = 3) =>
    x === null || x === undefined || !Number.isFinite(Number(x)) ? "–" : Number(x).toFixed(digits);
  const serverNow = () => Date.now() / 1000 + page.offset;

  function duration(s) {
    if (s < 60) return `${Math.floor(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function ago(t) {
    if (t === null || t === undefined) return "–";
    const s = Math.max(0, serverNow() - t);
    return s < 1 ? "just now" : `${duration(s)} ago`;
  }

  function clockText(t) {
    return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  }

  // ---------------------------------------------------------------------------------------- tiles

  function tileFor(name) {
    for (const t of document.querySelectorAll(".tile")) {
      if (t.dataset.camera === name) return t;
    }
    const t = $("#tile-template").content.firstElementChild.cloneNode(true);
    t.dataset.camera = name;
    $(".cam-name", t).textContent = name;
    wireControls(t, name);
    $("#cameras").appendChild(t);
    return t;
  }

  const STATE_TEXT = {
    running: ["running", "ok"],
    paused: ["paused", "warn"],
    starting: ["starting", "wait"],
    down: ["down", "bad"],
    stale: ["no news", "bad"],
    waiting: ["waiting", "wait"],
    no_daemon: ["no daemon", "bad"],
  };

  function setBadge(elem, text, kind) {
    elem.textContent = text;
    elem.className = elem.className.replace(/\bbadge-\w+/g, "").trim() + ` badge-${kind}`;
  }

  function renderCamera(cam) {
    page.cameras.set(cam.name, cam);
    const t = tileFor(cam.name);
    const r = cam.result;
    const [stateText, stateKind] = STATE_TEXT[cam.state] || [cam.state, "wait"];
    setBadge($(".state", t), stateText, stateKind);
    $(".state", t).title = cam.detail || "";
    $(".model", t).textContent = [cam.part, cam.model_version].filter(Boolean).join(" · ") || "no model";
    t.classList.toggle("unhealthy", !cam.healthy);

    const verdict = r ? r.verdict : "";
    t.dataset.verdict = verdict;
    t.dataset.seq = String(r ? r.seq : 0);
    const v = $(".verdict", t);
    v.textContent = verdict || "no result";
    v.className = `verdict verdict-${verdict || "none"}`;

    const scoreText = $(".score-text", t);
    const reason = $(".reason", t);
    if (r && r.score !== null && r.score !== undefined) {
      const cmp = r.score >= r.threshold ? "≥" : "<";
      scoreText.textContent = `score ${num(r.score)} ${cmp} threshold ${num(r.threshold)}`;
    } else if (r) {
      scoreText.textContent = `no score (threshold ${num(r.threshold)})`;
    } else {
      scoreText.textContent = "";
    }
    const notes = [];
    if (r && r.verdict === "UNKNOWN") notes.push(`${r.reason || "unknown"}${r.detail ? ": " + r.detail : ""}`);
    if (r) notes.push(`threshold from ${r.threshold_source}`);
    if (r && cam.threshold !== null && cam.threshold !== undefined && cam.threshold !== r.threshold) {
      notes.push(`now ${num(cam.threshold)} (${cam.threshold_source})`);
    }
    if (r && r.regions && r.regions.length) notes.push(`${r.regions.length} region(s)`);
    reason.textContent = notes.join(" · ");
    drawBar(t, r);

    if (r && r.frame && r.frame.width > 0 && r.frame.height > 0) {
      for (const f of t.querySelectorAll(".panel .frame")) f.style.aspectRatio = `${r.frame.width} / ${r.frame.height}`;
    }
    setHeatmap(t, cam);
    setOverlay(t, cam);

    const c = cam.counts || {};
    $(".n-pass", t).textContent = c.PASS ?? 0;
    $(".n-fail", t).textContent = c.FAIL ?? 0;
    $(".n-unknown", t).textContent = c.UNKNOWN ?? 0;
    $(".fps", t).textContent = `${num(cam.fps, 1)} /s`;
    const lat = r && r.latency_ms ? r.latency_ms : null;
    let latency = lat ? `${num(lat.total, 1)} ms` : "–";
    if (lat && cam.received && r.timestamps) {
      latency += ` (+${num(Math.max(0, cam.received - r.timestamps.published) * 1000, 0)} ms to page)`;
    }
    $(".latency", t).textContent = latency;
    $(".latency", t).title = lat ? `infer ${num(lat.infer, 1)} ms, queue ${num(lat.queue, 1)} ms` : "";
    $(".seq", t).textContent = r ? `#${r.seq} · ${r.acquisition_id}` : "–";
    updateAge(t, cam);

    const controls = $(".controls", t);
    controls.hidden = !page.control;
    $(".pause", t).disabled = !!cam.paused;
    $(".resume", t).disabled = !cam.paused;
    const input = $(".thr-value", t);
    if (document.activeElement !== input && cam.threshold !== null && cam.threshold !== undefined) {
      input.value = Number(cam.threshold).toPrecision(4);
    }
    if (!cam.heatmap_url && r) markShown(t, r.seq);
  }

  function drawBar(t, r) {
    const fill = $(".fill", t);
    const thr = $(".thr", t);
    if (!r || r.score === null || r.score === undefined) {
      fill.style.width = "0%";
      thr.style.left = "0%";
      return;
    }
    const hi = r.heatmap && r.heatmap.hi !== null ? r.heatmap.hi : 0;
    const scale = Math.max(hi, r.threshold * 1.5, r.score * 1.1, 1e-9);
    fill.style.width = `${Math.min(100, (100 * r.score) / scale)}%`;
    fill.className = `fill ${r.score >= r.threshold ? "over" : "under"}`;
    thr.style.left = `${Math.min(100, (100 * r.threshold) / scale)}%`;
  }

  function markShown(t, seq) {
    if (t.dataset.seq === String(seq) && t.dataset.shownSeq !== String(seq)) {
      t.dataset.shownSeq = String(seq);
      t.dataset.shownAt = String(Date.now());
    }
  }

  function setHeatmap(t, cam) {
    const r = cam.result;
    const img = $("img.heatmap", t);
    const ph = $(".heat .placeholder", t);
    const legend = $(".legend", t);
    if (!cam.heatmap_url) {
      delete img.dataset.want;
      img.hidden = true;
      img.removeAttribute("src");
      t.dataset.heatmapSeq = "";
      ph.hidden = false;
      ph.textContent = r ? "no heatmap published with this result" : "waiting for the first result";
      drawRegions(t, null);
      legend.hidden = true;
      return;
    }
    if (img.dataset.want === cam.heatmap_url) return; // this one is loading or shown
    img.dataset.want = cam.heatmap_url;
    const url = cam.heatmap_url;
    const pre = new Image();
    pre.onload = () => {
      if (img.dataset.want !== url) return; // a newer result came meanwhile
      const done = () => {
        if (img.dataset.want !== url) return;
        img.hidden = false;
        ph.hidden = true;
        drawRegions(t, r);
        drawLegend(t, r);
        t.dataset.heatmapSeq = String(r.seq);
        markShown(t, r.seq);
      };
      img.src = url;
      if (img.complete && img.naturalWidth > 0) done();
      else img.addEventListener("load", done, { once: true });
    };
    pre.onerror = () => {
      if (img.dataset.want !== url) return;
      img.hidden = true;
      ph.hidden = false;
      ph.textContent = "heatmap no longer kept by the page server";
    };
    pre.src = url;
  }

  function drawLegend(t, r) {
    const legend = $(".legend", t);
    const h = r && r.heatmap;
    if (!h || h.lo === null || h.hi === null) {
      legend.hidden = true;
      return;
    }
    legend.hidden = false;
    $(".lo", legend).textContent = num(h.lo, 2);
    $(".hi", legend).textContent = num(h.hi, 2);
    const span = h.hi - h.lo;
    const at = span > 0 ? Math.min(1, Math.max(0, (r.threshold - h.lo) / span)) : 0;
    const tick = $(".tick", legend);
    tick.style.left = `${(100 * at).toFixed(1)}%`;
    tick.title = `threshold ${num(r.threshold)}`;
  }

  const SVG = "http://www.w3.org/2000/svg";

  function drawRegions(t, r) {
    const svg = $("svg.regions", t);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (!r || !r.frame || !r.regions || !r.regions.length) {
      svg.removeAttribute("viewBox");
      return;
    }
    const { width, height } = r.frame;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const fontSize = Math.max(8, width / 28);
    for (const reg of r.regions) {
      const [x, y, w, h] = reg.bbox;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", x);
      rect.setAttribute("y", y);
      rect.setAttribute("width", Math.max(1, w));
      rect.setAttribute("height", Math.max(1, h));
      rect.setAttribute("class", "region");
      svg.appendChild(rect);
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", x);
      label.setAttribute("y", Math.max(fontSize, y - fontSize * 0.25));
      label.setAttribute("font-size", fontSize);
      label.setAttribute("class", "region-label");
      label.textContent = num(reg.peak, 2);
      svg.appendChild(label);
    }
  }

  function setOverlay(t, cam) {
    const r = cam.result;
    const ev = cam.evidence;
    const img = $("img.overlay", t);
    const link = $(".overlay-link", t);
    const ph = $(".evid .placeholder", t);
    if (!ev || !ev.overlay) {
      delete img.dataset.want;
      img.hidden = true;
      img.removeAttribute("src");
      link.removeAttribute("href");
      ph.hidden = false;
      if (!page.evidence) ph.textContent = "evidence store off (evidence.dir not set)";
      else if (!r) ph.textContent = "";
      else if (r.verdict === "PASS") ph.textContent = "frames are kept for FAIL / UNKNOWN only";
      else ph.textContent = "waiting for the evidence store…";
      t.dataset.overlaySeq = "";
      return;
    }
    if (img.dataset.want === ev.overlay) return;
    img.dataset.want = ev.overlay;
    img.onload = () => {
      if (img.dataset.want !== ev.overlay) return;
      img.hidden = false;
      ph.hidden = true;
      t.dataset.overlaySeq = String(ev.seq);
    };
    img.src = ev.overlay;
    link.href = ev.image || ev.overlay;
    link.title = "open the stored frame";
  }

  function updateAge(t, cam) {
    const r = cam.result;
    $(".age", t).textContent = r && r.timestamps ? `${clockText(r.timestamps.published)} · ${ago(r.timestamps.published)}` : "–";
  }

  // ---------------------------------------------------------------------------------------- control

  function wireControls(t, name) {
    const msg = $(".control-msg", t);
    const send = async (body, what) => {
      const token = $("#token").value.trim();
      if (!token) {
        msg.textContent = "enter the control token above first";
        return;
      }
      msg.textContent = `${what}…`;
      try {
        const res = await fetch("/api/control", {
          method: "POST",
          cache: "no-store",
          headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
          body: JSON.stringify(body),
        });
        const reply = await res.json().catch(() => ({}));
        msg.textContent = res.ok ? `${what}: done` : `${what}: ${reply.error || res.status}`;
      } catch (err) {
        msg.textContent = `${what}: ${err}`;
      }
    };
    $(".pause", t).addEventListener("click", () => send({ cmd: "pause", camera: name }, "pause"));
    $(".resume", t).addEventListener("click", () => send({ cmd: "resume", camera: name }, "resume"));
    $(".thr-set", t).addEventListener("click", () => {
      const value = Number($(".thr-value", t).value);
      if (!Number.isFinite(value)) {
        msg.textContent = "threshold: not a number";
        return;
      }
      if (window.confirm(`Set the threshold of ${name} to ${value}? Verdicts change at once.`)) {
        send({ cmd: "threshold", camera: name, value }, "threshold");
      }
    });
    $(".thr-reset", t).addEventListener("click", () =>
      send({ cmd: "threshold", camera: name, reset: true }, "threshold reset"),
    );
  }

  function setupControlBar() {
    const bar = $("#control-bar");
    bar.hidden = !page.control;
    const input = $("#token");
    if (!input.dataset.wired) {
      input.dataset.wired = "1";
      input.value = sessionStorage.getItem(TOKEN_KEY) || "";
      input.addEventListener("change", () => sessionStorage.setItem(TOKEN_KEY, input.value.trim()));
      $("#token-forget").addEventListener("click", () => {
        sessionStorage.removeItem(TOKEN_KEY);
        input.value = "";
      });
    }
  }

  // ---------------------------------------------------------------------------------------- line, gallery

  function renderDaemon(d) {
    page.daemon = d;
    const badge = $("#daemon");
    if (!d.reachable) {
      setBadge(badge, "daemon not reachable", "bad");
      badge.title = d.error || "";
      return;
    }
    const degraded = Object.keys(d.degraded || {});
    const up = d.started ? ` · up ${duration(Math.max(0, serverNow() - d.started))}` : "";
    setBadge(badge, `daemon ${d.state}${up}`, degraded.length ? "warn" : d.state === "running" ? "ok" : "warn");
    badge.title = degraded.length ? `degraded: ${degraded.join(", ")}` : "";
  }

  function galleryItem(item) {
    const fig = document.createElement("figure");
    fig.className = `g-item g-${item.verdict}`;
    const a = document.createElement("a");
    a.target = "_blank";
    a.rel = "noopener";
    a.href = item.image || item.overlay || item.header;
    if (item.overlay) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = `${item.camera} ${item.verdict} #${item.seq}`;
      img.src = item.overlay;
      a.appendChild(img);
    } else {
      const ph = document.createElement("div");
      ph.className = "placeholder";
      ph.textContent = "no image";
      a.appendChild(ph);
    }
    fig.appendChild(a);
    const cap = document.createElement("figcaption");
    const v = document.createElement("b");
    v.className = `verdict-${item.verdict}`;
    v.textContent = item.verdict;
    cap.appendChild(v);
    const score = item.score === null || item.score === undefined ? item.reason || "no score" : `score ${num(item.score)}`;
    const when = item.published ? clockText(item.published) : "";
    cap.appendChild(document.createTextNode(` ${item.camera} #${item.seq} · ${score} · ${when}`));
    fig.appendChild(cap);
    return fig;
  }

  function renderGallery(items) {
    const box = $("#gallery");
    const note = $("#gallery-note");
    if (!page.evidence) {
      note.hidden = false;
      note.textContent = "The evidence store is off (evidence.dir is not set in the line config): nothing to show.";
    } else {
      note.hidden = items.length > 0;
      note.textContent = "No FAIL or UNKNOWN stored yet.";
    }
    $("#gallery-count").textContent = items.length ? `(${items.length})` : "";
    const keep = new Map();
    const nodes = [];
    for (const item of items) {
      const key = `${item.header}|${item.overlay}`;
      const node = page.gallery.get(key) || galleryItem(item);
      keep.set(key, node);
      nodes.push(node);
    }
    page.gallery = keep;
    box.replaceChildren(...nodes);
  }

  function renderSnapshot(s) {
    page.offset = s.server_time - Date.now() / 1000;
    page.control = !!s.page.control;
    page.evidence = !!s.page.evidence;
    $("#line").textContent = s.line;
    document.title = `MASF Edge · ${s.line}`;
    setupControlBar();
    renderDaemon(s.daemon);
    for (const cam of s.cameras) renderCamera(cam);
    renderGallery(s.gallery || []);
    document.body.dataset.live = "1";
  }

  // ---------------------------------------------------------------------------------------- events

  function connect() {
    const conn = $("#conn");
    const es = new EventSource("/events");
    const on = (name, fn) =>
      es.addEventListener(name, (e) => {
        try {
          fn(JSON.parse(e.data));
        } catch (err) {
          console.error(name, err);
        }
      });
    es.onopen = () => setBadge(conn, "live", "ok");
    es.onerror = () => {
      setBadge(conn, "reconnecting…", "bad");
      document.body.dataset.live = "0";
    };
    on("snapshot", renderSnapshot);
    on("result", renderCamera);
    on("camera", renderCamera);
    on("gallery", renderGallery);
    on("daemon", renderDaemon);
  }

  function tick() {
    $("#clock").textContent = clockText(serverNow());
    if (page.daemon) renderDaemon(page.daemon);
    for (const t of document.querySelectorAll(".tile")) {
      const cam = page.cameras.get(t.dataset.camera);
      if (cam) updateAge(t, cam);
    }
  }

  connect();
  tick();
  setInterval(tick, 1000);
})();
