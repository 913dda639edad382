// The calls dashboard: recent calls from the records, one call's turns stage by stage, latency percentiles, a
// histogram and the latency over time, interruptions and fallbacks, and the models' status. Plain SVG, no
// libraries: it works offline.

const token = new URLSearchParams(location.search).get("token") || "";
const auth = token ? { Authorization: `Bearer ${token}` } : {};
const $ = (selector) => document.querySelector(selector);
const SVG = "http://www.w3.org/2000/svg";
const STAGES = [["vad_wait", "end of turn", "#8fa3bf"], ["stt", "speech to text", "#5b8def"],
                ["llm_first_token", "LLM first token", "#f0a43a"], ["tts_first_audio", "first audio", "#43a36b"]];
let selected = "";

async function get(path) {
  const response = await fetch(path, { headers: auth });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function draw(svg, tag, attributes, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (text !== undefined) element.textContent = text;
  svg.appendChild(element);
  return element;
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : null;
}

const ms = (seconds) => (seconds == null ? "" : Math.round(seconds * 1000));
const escape = (text) => String(text).replace(/[<&"]/g, (c) => ({ "<": "&lt;", "&": "&amp;", '"': "&quot;" })[c]);

function histogram(latencies) {
  const svg = $("#histogram");
  svg.replaceChildren();
  const sorted = [...latencies].sort((a, b) => a - b);
  const [p50, p95] = [percentile(sorted, 0.5), percentile(sorted, 0.95)];
  $("#percentiles").textContent = sorted.length
    ? `p50 ${ms(p50)} ms, p95 ${ms(p95)} ms over ${sorted.length} turns` : "no turns yet";
  const bins = new Array(30).fill(0); // 100 ms each, up to 3 s (the last bin holds the rest)
  for (const value of sorted) bins[Math.min(29, Math.floor(value * 10))] += 1;
  const top = Math.max(1, ...bins);
  bins.forEach((count, index) => {
    const height = (count / top) * 140;
    draw(svg, "rect", { x: 20 + index * 14, y: 150 - height, width: 12, height, fill: "#5b8def" },
         undefined).appendChild(document.createElementNS(SVG, "title")).textContent = `${index * 100} ms: ${count}`;
  });
  for (const second of [0, 1, 2, 3]) draw(svg, "text", { x: 20 + second * 140, y: 166 }, `${second} s`);
  for (const [value, label] of [[p50, "p50"], [p95, "p95"]]) {
    if (value == null) continue;
    const x = 20 + Math.min(value, 3) * 140;
    draw(svg, "line", { x1: x, x2: x, y1: 5, y2: 150, stroke: "#b42318", "stroke-dasharray": "3 2" });
    draw(svg, "text", { x: x + 3, y: label === "p50" ? 14 : 28 }, label);
  }
}

function overTime(turns) {
  const svg = $("#over-time");
  svg.replaceChildren();
  const points = turns.filter((t) => t.voice_to_voice != null && t.ended_at);
  if (!points.length) return;
  const [first, last] = [points[0].ended_at, points[points.length - 1].ended_at];
  const span = Math.max(1, last - first);
  const top = Math.max(1, ...points.map((t) => t.voice_to_voice));
  draw(svg, "line", { x1: 40, x2: 450, y1: 170, y2: 170, stroke: "#c7ccd8" });
  for (const fraction of [0, 0.5, 1]) {
    draw(svg, "text", { x: 2, y: 170 - fraction * 150 + 4 }, `${ms(top * fraction)} ms`);
  }
  draw(svg, "text", { x: 40, y: 190 }, new Date(first * 1000).toLocaleTimeString());
  draw(svg, "text", { x: 380, y: 190 }, new Date(last * 1000).toLocaleTimeString());
  for (const turn of points) {
    const x = 40 + ((turn.ended_at - first) / span) * 410;
    const y = 170 - (turn.voice_to_voice / top) * 150;
    draw(svg, "circle", { cx: x, cy: y, r: 3, fill: turn.cut_in ? "#b42318" : "#5b8def" })
      .appendChild(document.createElementNS(SVG, "title")).textContent = `${ms(turn.voice_to_voice)} ms`;
  }
}

function events(turns, health) {
  const svg = $("#events");
  svg.replaceChildren();
  const fallbacks = Object.values(health.llm?.fallbacks || {}).reduce((a, b) => a + b, 0);
  const counts = [["barge-ins", turns.filter((t) => t.interrupted).length],
                  ["false alarms resumed", turns.reduce((a, t) => a + (t.false_alarms || 0), 0)],
                  ["cut-ins", turns.filter((t) => t.cut_in).length],
                  // each a cut-in on a machine fast enough to have had the reply ready (the caller went on)
                  ["pauses judged early", turns.reduce((a, t) => a + (t.judged_early || 0), 0)],
                  ["LLM fallbacks", fallbacks]];
  const top = Math.max(1, ...counts.map(([, n]) => n));
  counts.forEach(([label, count], index) => {
    const y = 10 + index * 36;
    draw(svg, "text", { x: 0, y: y + 16 }, label);
    draw(svg, "rect", { x: 150, y, width: Math.max(2, (count / top) * 270), height: 22, fill: "#f0a43a" });
    draw(svg, "text", { x: 155 + (count / top) * 270, y: y + 16 }, count);
  });
}

function status(health) {
  const llm = health.llm || {};
  const local = typeof llm.local === "object" ? llm.local : llm;
  const rows = [["status", health.status], ["device", health.device], ["LLM backend", llm.backend],
                ["LLM model", local.model || llm.model], ["active calls", health.active_calls],
                ["failing stages", (health.failing || []).join(", ") || "none"],
                ["model load (s)", Object.entries(health.model_load_seconds || {}).map(([k, v]) => `${k} ${v}`).join(", ")]];
  $("#status").innerHTML = rows.map(([k, v]) => `<dt>${k}</dt><dd>${escape(v ?? "")}</dd>`).join("");
}

function calls(list) {
  $("#calls tbody").innerHTML = list.map((call) => {
    const duration = call.ended_at && call.started_at ? (call.ended_at - call.started_at).toFixed(1) : "";
    const started = new Date((call.started_at || call.created_at) * 1000).toLocaleString();
    return `<tr data-call-sid="${escape(call.call_sid)}" class="${call.call_sid === selected ? "selected" : ""}">
      <td>${escape(call.call_sid)}</td><td>${started}</td><td>${escape(call.direction)}</td>
      <td class="outcome-${escape(call.outcome)}">${escape(call.outcome || "(in progress)")}</td>
      <td>${duration}</td><td>${call.turns}</td><td>${ms(call.voice_to_voice_p50)}</td></tr>`;
  }).join("");
  for (const row of document.querySelectorAll("#calls tr[data-call-sid]")) {
    row.onclick = () => detail(row.dataset.callSid);
  }
}

async function detail(callSid) {
  selected = callSid;
  const call = await get(`/api/calls/${callSid}`);
  $("#call-detail").hidden = false;
  $("#detail-sid").textContent = callSid;
  $("#legend").replaceChildren(...[...STAGES, ["", "voice to voice", "#b42318"]].map(([, label, color]) => {
    const item = document.createElement("span");
    const swatch = item.appendChild(document.createElement("i"));
    swatch.style.background = color; // set through the DOM: the page's CSP forbids inline style attributes
    item.append(label);
    return item;
  }));
  const svg = $("#timeline");
  svg.replaceChildren();
  const turns = call.turn_timings || [];
  const top = Math.max(1, ...turns.map((t) => Math.max(t.voice_to_voice || 0,
    STAGES.reduce((sum, [key]) => sum + (t[key] || 0), 0))));
  const scale = 640 / top; // room on the right for the label
  svg.setAttribute("viewBox", `0 0 920 ${30 + turns.length * 28}`);
  turns.forEach((turn, index) => {
    const y = 10 + index * 28;
    draw(svg, "text", { x: 0, y: y + 14 }, `turn ${turn.turn}`);
    let x = 60;
    for (const [key, label, color] of STAGES) {
      const width = (turn[key] || 0) * scale;
      if (width > 0) {
        draw(svg, "rect", { x, y, width, height: 18, fill: color, class: "stage" })
          .appendChild(document.createElementNS(SVG, "title")).textContent = `${label}: ${ms(turn[key])} ms`;
      }
      x += width;
    }
    if (turn.voice_to_voice != null) {
      const vx = 60 + turn.voice_to_voice * scale;
      draw(svg, "line", { x1: vx, x2: vx, y1: y - 2, y2: y + 20, stroke: "#b42318", "stroke-width": 2 });
      draw(svg, "text", { x: Math.max(vx, x) + 6, y: y + 14 },
           `${ms(turn.voice_to_voice)} ms to the first audio${turn.interrupted ? ", interrupted" : ""}`);
    }
  });
  const history = (call.status_history || []).map((s) => s.status).join(" → ");
  $("#detail-status").textContent = `${call.outcome || "in progress"}; ${call.direction || ""} from ${call.from_number || "?"}` +
    (history ? `; Twilio status: ${history}` : "") + (call.answered_by ? `; answered by ${call.answered_by}` : "");
  for (const row of document.querySelectorAll("#calls tr[data-call-sid]")) {
    row.classList.toggle("selected", row.dataset.callSid === callSid);
  }
}

async function update() {
  try {
    const [health, list, turns] = await Promise.all([get("/healthz").catch((e) => ({ status: e.message })),
                                                     get("/api/calls?limit=50"), get("/api/turns?limit=500")]);
    histogram(turns.turns.filter((t) => t.voice_to_voice != null).map((t) => t.voice_to_voice));
    overTime(turns.turns);
    events(turns.turns, health);
    status(health);
    calls(list.calls);
    if (selected) await detail(selected);
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    $("#updated").textContent = `could not update: ${error.message}`;
  }
}

update();
setInterval(update, 5000);
