PYTHON ?= python3
OPTIMUM_VENV ?= bench/.venv-optimum
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test docs test-slow browser test-browser report-screenshot bench bench-quick bench-optimum bench-optimum-infer bench-genai bench-corpus bench-corpus-transformers clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: setup
	$(PY) -m shapetrace demo --out demo-out

# the suite on $(TEST_WORKERS) processes, one test file per worker at a time (pytest-xdist --dist loadfile): 16 min
# instead of 27 on 2 cores; TEST_WORKERS=0 runs it in this process
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# the manual (docs/) as a site in site/; --strict: a broken link or a renamed function fails the build
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

test-slow: setup
	$(PY) -m pytest -q -m slow

# Debian's chromium for the report's browser test (tests marked `browser`; skipped where chromium is absent)
browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test-browser: setup browser
	$(PY) -m pytest -q -m browser

# the README's screenshot of the HTML report, taken by the browser test
report-screenshot: setup browser
	SHAPETRACE_SCREENSHOT=docs/report.png $(PY) -m pytest -q -m browser

# the deploy section's (d) rows run optimum-intel in its own venv (below)
bench: setup $(OPTIMUM_VENV)/.installed
	$(PY) bench/run.py --venv-optimum $(OPTIMUM_VENV)
	$(PY) bench/generation.py

bench-quick: setup
	$(PY) bench/run.py --quick

# diffusers' own test pipelines through record -> export -> verify -> load (needs DIFFUSERS_MIRROR; hours on 2 cores,
# resumable: BUDGET=3600 make bench-corpus stops starting cases after an hour, the next run goes on)
bench-corpus: setup
	$(PY) -m pip install -q pytest parameterized requests-mock ftfy torchsde
	$(PY) bench/corpus.py $(if $(BUDGET),--budget $(BUDGET),)

# transformers' own model tests through record -> export -> verify -> load (needs TRANSFORMERS_MIRROR; the first run
# also OVERLAY=<transformers sdist>, see ../shared/corpus/README.md; resumable: BUDGET=3600, KIND=generate)
bench-corpus-transformers: setup
	$(PY) -m pip install -q pytest parameterized httpx
	$(PY) bench/corpus_transformers.py $(if $(BUDGET),--budget $(BUDGET),) $(if $(KIND),--kind $(KIND),) $(if $(OVERLAY),--overlay $(OVERLAY),)

clean:
	rm -rf $(VENV) demo-out .pytest_cache site

# optimum-cli in its own venv (optimum-intel 2.2.0 pins huggingface-hub<1.22, diffusers 0.42.1 needs >=1.32)
$(OPTIMUM_VENV)/.installed:
	test -x $(OPTIMUM_VENV)/bin/python || $(PYTHON) -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/pip install -q --upgrade pip
	$(OPTIMUM_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(OPTIMUM_VENV)/bin/pip install -q "optimum-intel[openvino,diffusers]==2.2.0" diffusers==0.39.0 transformers==5.5.4
	touch $@

bench-optimum: setup $(OPTIMUM_VENV)/.installed
	$(PY) bench/optimum_compare.py --venv-optimum $(OPTIMUM_VENV)

# same work as optimum-intel: plain SD 1.5 end to end, shapetrace's variants vs OVStableDiffusionPipeline's
bench-optimum-infer: setup $(OPTIMUM_VENV)/.installed
	$(PY) bench/optimum_infer.py --venv-optimum $(OPTIMUM_VENV)

# issue #21: the GPT-2-small-size decoder in PyTorch, shapetrace.load stateful, GenAI LLMPipeline on shapetrace's
# genai/ folder, optimum-intel's OVModelForCausalLM and GenAI on optimum-intel's export; ContinuousBatchingPipeline
bench-genai: setup $(OPTIMUM_VENV)/.installed
	$(PY) bench/genai_llm.py --venv-optimum $(OPTIMUM_VENV)
