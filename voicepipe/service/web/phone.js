// The test phone: it places a call the way Twilio does (POST /voice, then the Media Streams protocol on /media:
// connected, start, media, mark, stop; it echoes marks and honours clear), so a browser caller goes through the
// very code a phone call takes. Live per-turn timings from /stats; the transcript when the server keeps one.

const token = new URLSearchParams(location.search).get("token") || "";
const auth = token ? { Authorization: `Bearer ${token}` } : {};
const $ = (selector) => document.querySelector(selector);

// What the page exposes for tests and the curious: the call, and every byte of the agent's audio received.
window.voicepipe = { state: "idle", callSid: "", received: [], marksEchoed: 0, clears: 0, turns: [] };

function hex(bytes) {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function ulawDecode(byte) {
  const u = ~byte & 0xff;
  const exponent = (u >> 4) & 7;
  const sample = ((((u & 0x0f) << 3) + 0x84) << exponent) - 0x84;
  return (u & 0x80 ? -sample : sample) / 32768;
}

function toBase64(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function show(state, detail = "") {
  window.voicepipe.state = state;
  $("#state").textContent = detail ? `${state}: ${detail}` : state;
  $("#call").disabled = state !== "idle" && state !== "ended";
  $("#hangup").disabled = state !== "connected";
}

let session = null;

async function call() {
  show("calling");
  try {
    const config = await (await fetch("/phone/config", { headers: auth })).json();
    const context = new AudioContext({ sampleRate: 8000 });
    await context.audioWorklet.addModule("/web/phone-worklet.js");
    const microphone = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    const callSid = `CA${hex(16)}`;
    const streamSid = `MZ${hex(16)}`;
    const form = new URLSearchParams({ CallSid: callSid, AccountSid: config.account_sid, From: "browser",
                                       To: "voicepipe", Direction: "inbound", CallStatus: "ringing" });
    const answer = await fetch("/voice", { method: "POST", body: form, headers: auth });
    if (!answer.ok) throw new Error(`/voice answered ${answer.status}: ${await answer.text()}`);
    const twiml = new DOMParser().parseFromString(await answer.text(), "application/xml");
    const stream = twiml.querySelector("Connect > Stream");
    if (!stream) {
      show("ended", twiml.querySelector("Say")?.textContent || "the server did not connect the call");
      return;
    }
    const parameters = Object.fromEntries(Array.from(stream.querySelectorAll("Parameter"),
                                                     (p) => [p.getAttribute("name"), p.getAttribute("value")]));
    // Same origin as this page: the TwiML's wss:// URL names the public host Twilio would use.
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/media${token ? `?token=${encodeURIComponent(token)}` : ""}`);
    const capture = new AudioWorkletNode(context, "capture");
    const playback = new AudioWorkletNode(context, "playback");
    const source = context.createMediaStreamSource(microphone);
    playback.connect(context.destination);
    session = { ws, context, microphone, source, callSid, streamSid, sequence: 0, chunk: 0 };
    window.voicepipe.callSid = callSid;
    const send = (event) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ ...event, sequenceNumber: String(++session.sequence) }));
    };
    ws.onopen = () => {
      ws.send(JSON.stringify({ event: "connected", protocol: "Call", version: "1.0.0" }));
      send({ event: "start", streamSid, start: { accountSid: config.account_sid, streamSid, callSid,
             tracks: ["inbound"], customParameters: parameters,
             mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 } } });
      source.connect(capture);
      show("connected", callSid);
      poll();
    };
    capture.port.onmessage = (event) => {
      if (!session) return; // a frame that was on its way when the call ended
      session.chunk += 1;
      send({ event: "media", streamSid, media: { track: "inbound", chunk: String(session.chunk),
             timestamp: String(session.chunk * 20), payload: toBase64(event.data) } });
    };
    playback.port.onmessage = (event) => {
      window.voicepipe.marksEchoed += 1;
      send({ event: "mark", streamSid, mark: { name: event.data.name } });
    };
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.event === "media") {
        const bytes = fromBase64(message.media.payload);
        window.voicepipe.received.push(message.media.payload);
        playback.port.postMessage({ type: "audio", samples: Float32Array.from(bytes, ulawDecode) });
      } else if (message.event === "mark") {
        playback.port.postMessage({ type: "mark", name: message.mark.name });
      } else if (message.event === "clear") {
        window.voicepipe.clears += 1;
        playback.port.postMessage({ type: "clear" });
      }
    };
    ws.onclose = (event) => finish(event.reason || "the server ended the call");
  } catch (error) {
    show("ended", error.message);
  }
}

function finish(reason) {
  if (!session) return;
  const { ws, context, microphone, source, callSid, streamSid } = session;
  source.disconnect();
  if (ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ event: "stop", streamSid, stop: { accountSid: "", callSid } }));
    ws.close();
  }
  microphone.getTracks().forEach((track) => track.stop());
  context.close();
  session = null;
  show("ended", reason);
  setTimeout(() => refresh(callSid), 500);
}

const STAGES = [["vad_wait", "end of turn"], ["stt", "speech to text"], ["llm_first_token", "LLM first token"],
                ["tts_first_audio", "first audio"], ["voice_to_voice", "voice to voice"]];

async function refresh(callSid) {
  const stats = await (await fetch(`/stats?call_sid=${callSid}`, { headers: auth })).json();
  window.voicepipe.turns = stats.turns;
  const rows = stats.turns.map((turn) => `<tr><td>${turn.turn}</td>${STAGES.map(([key]) =>
    `<td>${turn[key] == null ? "" : Math.round(turn[key] * 1000)}</td>`).join("")}<td>${turn.end_of_turn}</td></tr>`);
  $("#turns tbody").innerHTML = rows.join("");
  const record = await fetch(`/api/calls/${callSid}`, { headers: auth });
  if (record.ok) {
    const transcript = (await record.json()).transcript;
    $("#transcript").innerHTML = transcript
      ? transcript.map((line) => `<p class="${line.role}"><b>${line.role === "user" ? "You" : "Agent"}:</b> ${
          line.content.replace(/[<&]/g, (c) => (c === "<" ? "&lt;" : "&amp;"))}</p>`).join("")
      : "<p class=\"muted\">Transcripts are off (VOICEPIPE_TRANSCRIPTS=1 keeps them).</p>";
  }
}

async function poll() {
  while (session) {
    await refresh(session.callSid).catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

$("#call").onclick = call;
$("#hangup").onclick = () => finish("you hung up");
$("#turns thead").innerHTML = `<tr><th>turn</th>${STAGES.map(([, label]) => `<th>${label} (ms)</th>`).join("")}<th>ended by</th></tr>`;
show("idle");
