# infergate: every target is one line that calls a script in ci/ or a tool.
# `make help` lists them.
.DEFAULT_GOAL := help
export MODEL_ID MODEL_NAME TASK BACKEND PORT FULL REGISTRY TAG PUSH ONLY DRY_RUN CONTAINER_ENGINE API_KEYS

run: ## Install what is missing and serve models locally (MODEL_ID=, MODEL_NAME=, TASK=, BACKEND=, PORT=, API_KEYS=1)
	@bash ci/run.sh

test: ## Install what is missing, then lint and run the tests (all but the slow checks)
	@bash ci/test.sh

test-slow: ## The slow checks: vLLM on the CPU, whole local stacks, the soak
	@bash ci/test.sh slow

test-all: ## make test, then make test-slow
	@bash ci/test.sh all

lint: ## ruff and mypy over services/, tests/ and bench/
	@bash ci/lint.sh

chart: ## helm lint, render, schema and Kubernetes validation of charts/infergate
	@bash ci/chart.sh

bench: ## Quick benchmarks into bench/results/ (FULL=1 for the whole set)
	@bash ci/bench.sh

images: ## Build the images the chart pulls (REGISTRY=, TAG=, PUSH=1, ONLY=, DRY_RUN=1)
	@bash ci/images.sh

locks: ## Regenerate ci/locks/ from the tested environments (.venv, .venv-vllm)
	@bash ci/locks.sh

models: ## Build the small offline test models into var/models
	@bash ci/models.sh

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

.PHONY: run test test-slow test-all lint chart bench images locks models help
