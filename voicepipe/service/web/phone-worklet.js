// The test phone's audio, on the audio thread. The AudioContext runs at 8 kHz, so the browser resamples the
// microphone to the phone's rate and the agent's audio back to the speakers; here it is only framed and coded.

const FRAME = 160; // 20 ms at 8 kHz: what Twilio sends in each media message

function ulawEncode(sample) {
  // G.711 mu-law of a 16-bit sample (the same table Twilio and audioop use).
  const BIAS = 0x84;
  const sign = sample < 0 ? 0x80 : 0;
  let magnitude = Math.min(Math.abs(sample), 32635) + BIAS;
  let exponent = 7;
  for (let mask = 0x4000; (magnitude & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (magnitude >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Uint8Array(FRAME);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (const value of channel) {
        const clamped = Math.max(-1, Math.min(1, value));
        this.frame[this.filled++] = ulawEncode(Math.round(clamped * 32767));
        if (this.filled === FRAME) {
          this.port.postMessage(this.frame.slice());
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

// Twilio's side of the agent's audio: a queue played in order; a mark is echoed when the audio before it has
// played; `clear` drops the queue and echoes every pending mark at once.
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; // {samples: Float32Array} or {mark: name}
    this.offset = 0;
    this.port.onmessage = (event) => {
      const message = event.data;
      if (message.type === "audio") this.queue.push({ samples: message.samples });
      else if (message.type === "mark") this.queue.push({ mark: message.name });
      else if (message.type === "clear") {
        for (const item of this.queue) if (item.mark !== undefined) this.port.postMessage({ type: "mark", name: item.mark });
        this.queue = [];
        this.offset = 0;
      }
    };
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let written = 0;
    while (written < out.length && this.queue.length) {
      const head = this.queue[0];
      if (head.mark !== undefined) {
        this.port.postMessage({ type: "mark", name: head.mark });
        this.queue.shift();
        continue;
      }
      const count = Math.min(out.length - written, head.samples.length - this.offset);
      out.set(head.samples.subarray(this.offset, this.offset + count), written);
      written += count;
      this.offset += count;
      if (this.offset >= head.samples.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    while (this.queue.length && this.queue[0].mark !== undefined) {
      this.port.postMessage({ type: "mark", name: this.queue.shift().mark }); // nothing left before it
    }
    return true;
  }
}

registerProcessor("capture", CaptureProcessor);
registerProcessor("playback", PlaybackProcessor);
