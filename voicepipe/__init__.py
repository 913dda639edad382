"""voicepipe: a self-hosted phone voice agent over Twilio Media Streams."""

__version__ = "0.1.0"
