# The two commands a newcomer needs (both install what is missing first):
#   make demo   — start Kafka + Redis locally and run the diskwatch demo
#   make test   — lint and run every test against the real local services
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv/bin

.PHONY: help bootstrap demo test lint up down bench

help:
	@echo "make demo   run the demo (installs deps, starts Kafka+Redis, stops them after)"
	@echo "make test   ruff + all tests against real local Kafka and Redis"
	@echo "make up / make down   start / stop the local stack; make bench: benchmarks"

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	@scripts/demo $(ARGS)

test: bootstrap
	@scripts/test $(ARGS)

lint: bootstrap
	$(VENV)/ruff check .

up:
	@deploy/local/stack up

down:
	@deploy/local/stack down

bench: bootstrap
	@scripts/bench
