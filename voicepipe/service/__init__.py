"""The server: the aiohttp app, Twilio webhooks, the media-stream adapter, tokens, records, metrics, health, logs."""
