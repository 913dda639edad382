import sys

import numpy as np
import pytest

from voicepipe.audio.codec import float_to_pcm16, pcm16_to_ulaw, ulaw_to_pcm16

# Values from the G.711 tables (ITU-T G.711, and every mu-law implementation since).
KNOWN_DECODE = {0xFF: 0, 0x7F: 0, 0x80: 32124, 0x00: -32124, 0xF0: 120, 0x70: -120, 0xEF: 132, 0x8F: 16764}
KNOWN_ENCODE = {0: 0xFF, 32767: 0x80, -32768: 0x00, 8: 0xFE, -8: 0x7E, 100: 0xF2, 1000: 0xCE, -1000: 0x4E}


@pytest.mark.parametrize(("code", "sample"), KNOWN_DECODE.items())
def test_decode_known_values(code: int, sample: int) -> None:
    assert ulaw_to_pcm16(bytes([code]))[0] == sample


@pytest.mark.parametrize(("sample", "code"), KNOWN_ENCODE.items())
def test_encode_known_values(sample: int, code: int) -> None:
    assert pcm16_to_ulaw(np.array([sample], dtype=np.int16)) == bytes([code])


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="audioop was removed in Python 3.13")
def test_matches_audioop_for_every_sample_and_code() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    samples = np.arange(-32768, 32768, dtype=np.int16)
    assert pcm16_to_ulaw(samples) == audioop.lin2ulaw(samples.tobytes(), 2)
    codes = bytes(range(256))
    reference = np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16)
    assert np.array_equal(ulaw_to_pcm16(codes), reference)


def test_round_trip_error_is_within_the_segment_step() -> None:
    samples = np.arange(-32000, 32000, 7, dtype=np.int16)
    decoded = ulaw_to_pcm16(pcm16_to_ulaw(samples)).astype(np.int32)
    error = np.abs(decoded - samples)
    # mu-law quantises logarithmically (16 steps per doubling): error stays within half a step (under 4%), plus the 14-bit floor shift near zero.
    assert np.all(error <= np.maximum(20, np.abs(samples.astype(np.int32)) * 0.04))


def test_float_to_pcm16_clips() -> None:
    assert float_to_pcm16(np.array([-2.0, 0.0, 0.5, 2.0])).tolist() == [-32767, 0, 16383, 32767]
