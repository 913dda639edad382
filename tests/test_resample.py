import numpy as np

from voicepipe.audio.resample import StreamResampler, Upsampler2x, resample


def tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def level_db(samples: np.ndarray) -> float:
    rms = np.sqrt(np.mean(samples.astype(np.float64) ** 2)) + 1e-9
    return float(20 * np.log10(rms / 32768))


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def test_in_band_tone_keeps_frequency_and_level() -> None:
    out = resample(tone(1000, 22050), 22050, 8000)
    assert abs(len(out) - 8000) <= 2
    assert abs(dominant_frequency(out[400:-400], 8000) - 1000) < 5
    assert abs(level_db(out[400:-400]) - level_db(tone(1000, 22050))) < 0.5


def test_tone_above_nyquist_is_filtered_not_aliased() -> None:
    # 5 kHz cannot exist at 8 kHz; a naive decimator would fold it to 3 kHz at full level.
    out = resample(tone(5000, 22050), 22050, 8000)
    assert level_db(out[400:-400]) < level_db(tone(5000, 22050)) - 50


def test_streaming_in_chunks_equals_one_shot() -> None:
    signal = tone(440, 22050, seconds=2.0)
    whole = resample(signal, 22050, 8000)
    stream = StreamResampler(22050, 8000)
    pieces = [stream.process(signal[i : i + 1000]) for i in range(0, len(signal), 1000)]
    pieces.append(stream.process(np.zeros(0, dtype=np.int16), last=True))
    chunked = np.concatenate(pieces)
    assert len(chunked) == len(whole)
    assert np.max(np.abs(chunked.astype(np.int32) - whole.astype(np.int32))) <= 2


def test_the_upsampler_for_speech_detection_hands_out_every_chunk_at_once() -> None:
    signal = tone(1000, 8000, seconds=1.0)
    upsampler = Upsampler2x()
    pieces = [upsampler.process(signal[i : i + 160]) for i in range(0, len(signal), 160)]
    assert all(len(piece) == 320 for piece in pieces)  # no block held back
    out = (np.concatenate(pieces) * 32767).astype(np.int16)
    assert abs(dominant_frequency(out[400:], 16000) - 1000) < 5
    assert abs(level_db(out[400:]) - level_db(signal)) < 0.2


def test_the_upsampler_for_speech_detection_leaves_no_images() -> None:
    # Zero-stuffing mirrors 3 kHz to 5 kHz at full level; the filter must remove that copy.
    out = Upsampler2x().process(tone(3000, 8000, seconds=1.0))
    steady = out[400:]
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(len(steady))))
    image, signal = spectrum[5000 * len(steady) // 16000], spectrum[3000 * len(steady) // 16000]
    assert 20 * np.log10(image / signal) < -60
