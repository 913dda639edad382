"""Caller audio: mu-law codec, resampling, voice activity and turn detection (all in audio time)."""
