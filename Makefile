# Tidemark: everyday commands. `make run` starts everything locally; `make test` tests it.
#
# uv is found on PATH, else used as a Python module (`pip install --user uv` does not
# always put its binary on PATH); `make bootstrap` installs it with pip when it is missing.

UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTHON ?= python3
# --frozen: run what uv.lock pins, never rewrite the lock as a side effect of running.
UV_RUN = $(UV) run $(if $(wildcard uv.lock),--frozen,)
PYTEST_ARGS ?=
TESTS ?=
# When set, `make test` writes pytest's exit status there: make itself reports any
# failed recipe as 2, and CI wants pytest's own code (5 means no tests were collected).
PYTEST_STATUS_FILE ?=
STATE_DIR ?= $(or $(TIDEMARK_STATE_DIR),$(CURDIR)/.state)

.DEFAULT_GOAL := help
.PHONY: help bootstrap sync run test lint format schemas bench bench-backup bench-relay bench-read-api bench-sse bench-retention bench-restore bench-alerts bench-replay \
	kafka-start kafka-stop postgres-start postgres-stop clean-state dlq-list dlq-redrive \
	rotate-secret-keys

help:
	@echo "make run            start PostgreSQL, Kafka, every service and a demo (Ctrl-C stops)"
	@echo "make test           run the tests (PYTEST_ARGS='-k backup -x' to narrow them, TESTS=paths to pick them)"
	@echo "make lint           ruff check, ruff format --check, mypy"
	@echo "make format         apply ruff's fixes and formatting"
	@echo "make schemas        write the message contracts' JSON Schemas, AsyncAPI, README's services"
	@echo "make bench          run every benchmark (bench-backup, bench-relay, bench-read-api, bench-sse, bench-retention, bench-restore, bench-alerts, bench-replay)"
	@echo "make bench-backup   measure the backup overhead against pg_dump | zstd"
	@echo "make bench-relay    relay and projection rates against plain aiokafka"
	@echo "make bench-read-api a page of backups over 100,000 against GET /health"
	@echo "make bench-sse      2,000 SSE clients on one gateway: delivery delay, completeness, RSS"
	@echo "make bench-retention a retention preview over 10,000 backups against loading them"
	@echo "make bench-restore  db, full and PITR restores against pg_restore, untar + start, PostgreSQL recovery"
	@echo "make bench-alerts   10,000 failed backups: to the alert listed and the webhook delivered, against Kafka"
	@echo "make bench-replay   tidemark events export over 1,000,000 stored events against a plain SQL read; peak RSS"
	@echo "make sync           install the locked dependencies into .venv"
	@echo "make kafka-start | kafka-stop | postgres-start | postgres-stop"
	@echo "make dlq-list [TOPIC=t]       list parked (dead-letter) messages as JSON lines"
	@echo "make dlq-redrive TOPIC=t [OFFSET=n]  re-drive every parked message of t (or one)"
	@echo "make rotate-secret-keys  re-seal stored secrets under the first of TIDEMARK_SECRETS_KEYS"
	@echo "make clean-state    stop the local servers and delete $(STATE_DIR)"

bootstrap:
	@if command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1; then :; \
	else \
		echo "uv not found: installing it with pip"; \
		$(PYTHON) -m pip install --quiet uv \
			|| $(PYTHON) -m pip install --quiet --user --break-system-packages uv; \
	fi

sync: bootstrap
	@if [ -f uv.lock ]; then $(UV) sync --all-packages --frozen; \
	else $(UV) sync --all-packages; fi

run: sync
	$(UV_RUN) tidemark-dev run

# With TESTS (paths), one pytest runs them; without, tests/shards.sh runs the whole suite as
# two pytest processes at once (tests/e2e, and the rest), each on its own Kafka and
# PostgreSQL.
test: sync
	@if [ -n "$(TESTS)" ]; then \
		status=0; $(UV_RUN) pytest $(TESTS) $(PYTEST_ARGS) || status=$$?; \
		if [ -n "$(PYTEST_STATUS_FILE)" ]; then echo $$status > "$(PYTEST_STATUS_FILE)"; fi; \
		exit $$status; \
	else \
		UV_RUN="$(UV_RUN)" STATE_DIR="$(STATE_DIR)" PYTEST_STATUS_FILE="$(PYTEST_STATUS_FILE)" \
			bash tests/shards.sh $(PYTEST_ARGS); \
	fi

lint: sync
	$(UV_RUN) ruff check .
	$(UV_RUN) ruff format --check .
	$(UV_RUN) mypy libs/*/src services/*/src

format: sync
	$(UV_RUN) ruff check --fix .
	$(UV_RUN) ruff format .

schemas: sync
	$(UV_RUN) python -m tidemark_contracts.schemas
	$(UV_RUN) python -m tidemark_contracts.asyncapi
	$(UV_RUN) python -m tidemark_devstack.readme

bench: bench-backup bench-relay bench-read-api bench-sse bench-retention bench-restore bench-alerts bench-replay

bench-backup: sync
	$(UV_RUN) python bench/backup_overhead.py

bench-relay: sync
	$(UV_RUN) python bench/relay.py

bench-read-api: sync
	$(UV_RUN) python bench/read_api.py

bench-sse: sync
	$(UV_RUN) python bench/sse_fanout.py

bench-retention: sync
	$(UV_RUN) python bench/retention.py

bench-restore: sync
	$(UV_RUN) python bench/restore.py

bench-alerts: sync
	$(UV_RUN) python bench/alerts.py

bench-replay: sync
	$(UV_RUN) python bench/replay.py

rotate-secret-keys: sync
	$(UV_RUN) python -m tidemark_platform.vault rotate

kafka-start: sync
	$(UV_RUN) tidemark-dev kafka start

kafka-stop: sync
	$(UV_RUN) tidemark-dev kafka stop

postgres-start: sync
	$(UV_RUN) tidemark-dev postgres start

postgres-stop: sync
	$(UV_RUN) tidemark-dev postgres stop

# Dead letters: messages parked on <topic>.dlq (see README, Operations).
TOPIC ?=
OFFSET ?=
dlq-list: sync
	$(UV_RUN) tidemark-dev dlq list $(if $(TOPIC),--topic $(TOPIC),)

dlq-redrive: sync
	@if [ -z "$(TOPIC)" ]; then echo "usage: make dlq-redrive TOPIC=backup.commands [OFFSET=n]"; exit 2; fi
	$(UV_RUN) tidemark-dev dlq redrive --topic $(TOPIC) $(if $(OFFSET),--offset $(OFFSET),--all)

# The test fixtures keep their servers under <state>/test; they are stopped too, since
# deleting a running server's directory leaves it running without its files.
clean-state: sync
	-TIDEMARK_STATE_DIR="$(STATE_DIR)" $(UV_RUN) tidemark-dev kafka stop
	-TIDEMARK_STATE_DIR="$(STATE_DIR)" $(UV_RUN) tidemark-dev postgres stop
	-TIDEMARK_STATE_DIR="$(STATE_DIR)/test" $(UV_RUN) tidemark-dev kafka stop
	-TIDEMARK_STATE_DIR="$(STATE_DIR)/test" $(UV_RUN) tidemark-dev postgres stop
	-for dir in "$(STATE_DIR)"/test/gw* "$(STATE_DIR)"/e2e/test "$(STATE_DIR)"/e2e/test/gw*; do \
		[ -d "$$dir" ] || continue; \
		TIDEMARK_STATE_DIR="$$dir" $(UV_RUN) tidemark-dev kafka stop; \
		TIDEMARK_STATE_DIR="$$dir" $(UV_RUN) tidemark-dev postgres stop; \
	done
	rm -rf "$(STATE_DIR)"
