import numpy as np

from voicepipe.audio.levels import trim_quiet


def test_trim_quiet_cuts_edges_and_keeps_a_margin() -> None:
    sound = np.concatenate([np.zeros(100, np.int16), np.full(50, 1000, np.int16), np.full(30, 10, np.int16)])
    assert len(trim_quiet(sound)) == 50
    assert len(trim_quiet(sound, end=False)) == 80
    assert len(trim_quiet(sound, end=False, margin=20)) == 100
    assert len(trim_quiet(np.zeros(10, np.int16))) == 0
