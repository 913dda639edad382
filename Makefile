# voicepipe: `make run` serves calls, `make test` runs the tests; both set up first (idempotent).
VENV := .venv

.PHONY: setup run test bench clean

setup:
	./scripts/setup.sh

run: setup
	$(VENV)/bin/voicepipe serve

# The tests also use the multilingual whisper (Spanish), espeak-ng (Spanish test speech) and chromium (browser tests).
test:
	./scripts/setup.sh default multilingual-stt
	./scripts/test_deps.sh
	$(VENV)/bin/python -m pytest

bench: setup
	$(VENV)/bin/python scripts/bench.py

clean:
	rm -rf $(VENV) .pytest_cache
