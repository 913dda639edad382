"""The models: speech to text, the chat backends, text to speech, and loading and fetching their files."""
