# pixelmill — `make run` starts the whole stack, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test-deps run test test-unit test-integration test-e2e test-faults tiny-model bench bench-orchestration bench-diffusion bench-engine-options bench-pipeline bench-cache bench-depth bench-enhance-audit bench-cpu-backends bench-submit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# What the tests need beyond the venv: Debian's chromium (browser test) and prometheus (promtool),
# installed when missing (needs root), and the compose-spec JSON schema, fetched into .cache/.
test-deps: install .cache/compose-spec.json
	@bash scripts/install-system-deps.sh

.cache/compose-spec.json: scripts/fetch_compose_schema.py | $(BIN)/python
	$(BIN)/python scripts/fetch_compose_schema.py --force

run: install  ## start Redis (unless PIXELMILL_REDIS_URL is set), workers and the web server
	$(BIN)/pixelmill up

# The fault-injection tests mostly wait on clusters of their own (worker restarts, visibility
# timeouts): they run beside the rest, as a second pytest session, their report printed after.
test: test-deps  ## unit, integration (private Redis, real workers), end-to-end and fault-injection tests
	@mkdir -p var/test-artifacts
	@$(BIN)/python -m pytest -m faults tests/faults > var/test-artifacts/faults.log 2>&1 & faults=$$!; \
	$(BIN)/python -m pytest -m "not faults"; rest=$$?; \
	wait $$faults; faults_rc=$$?; \
	echo "--- fault-injection tests (tests/faults, run beside the rest) ---"; cat var/test-artifacts/faults.log; \
	exit $$(( rest || faults_rc ))

test-unit: test-deps
	$(BIN)/python -m pytest tests/unit

test-integration: test-deps
	$(BIN)/python -m pytest tests/integration

test-e2e: test-deps
	$(BIN)/python -m pytest tests/e2e

test-faults: install  ## fault injection only: killed workers, Redis restart, cancel, reaper (Redis and RabbitMQ brokers)
	$(BIN)/python -m pytest -m faults tests/faults

bench: bench-orchestration bench-submit bench-diffusion bench-engine-options bench-cache bench-pipeline bench-depth bench-enhance-audit bench-cpu-backends  ## all of them, ~16 min on 2 cores; each writes its section of docs/benchmarks.md

bench-orchestration: install  ## the pipeline with no-op engines vs a plain Celery chain of 4 no-op tasks: p50/p99, jobs/s
	$(BIN)/python bench/orchestration.py

bench-diffusion: install  ## images/s through pixelmill (batch 1, and 8 concurrent with dynamic batching) vs a raw diffusers loop
	$(BIN)/python bench/diffusion_service.py

bench-engine-options: install  ## sdpa vs math attention, channels_last, torch.compile, VAE slicing, batch 8 (tiny model on CPU)
	$(BIN)/python bench/engine_options.py

bench-gpu: install  ## SD 1.5-size, fp16, on a CUDA GPU: raw diffusers vs engine vs batching, the options; ControlNet, LoRA, prompt cache; face restoration, CLIPScore
	$(BIN)/python bench/gpu_sd15.py --write-docs
	$(BIN)/python bench/gpu_sd15.py --depth --write-docs
	$(BIN)/python bench/gpu_sd15.py --enhance-audit --write-docs

bench-submit: install  ## 50 clients posting to a `pixelmill up` stack vs a plain Flask app: p50/p99, submits/s, web CPU per submit
	$(BIN)/python bench/submit_load.py

bench-pipeline: install  ## style jobs through pixelmill vs the same engines in one process
	$(BIN)/python bench/pipeline_overhead.py

bench-cpu-backends: install  ## SD 1.5-size on this CPU: the engine with OpenVINO bf16/f32 and torch bf16 vs raw diffusers fp32, conversion cost (~10 min, ~13 GB RAM)
	$(BIN)/python bench/cpu_backends.py

bench-cache: install  ## latent cache: miss vs hit with the SD 1.5-size VAE, key and lookup times, hit ratio; writes docs/benchmarks.md
	$(BIN)/python bench/cache_bench.py

bench-depth: install  ## a ControlNet and a LoRA step vs a plain step, LoRA load vs cached switch, prompt-cache hit vs encode (tiny model on CPU)
	$(BIN)/python bench/generation_depth.py

bench-enhance-audit: install  ## face restoration per face on the CPU: detect, align, restorer session, paste back (tiny face models)
	$(BIN)/python bench/enhance_audit.py

tiny-model: install  ## the tiny random-weight model library in var/models (checkpoint, ControlNets, LoRA, depth, face models), offline
	$(BIN)/pixelmill tiny-model var/models
	@echo "now: PIXELMILL_DIFFUSION_MODEL=tiny make run"

clean:
	rm -rf $(VENV) var .pytest_cache .cache
