"""Twilio's side of a call: the Media Streams wire format, mark-paced playback, REST calls and signatures."""
