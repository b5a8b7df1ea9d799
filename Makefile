# gencls: `make demo` (set-up, then the main job) and `make test` (set-up, then the tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GENCLS := $(VENV)/bin/gencls
STAMP  := $(VENV)/.gencls-installed

# Demo budget: 30 epochs of improved-gan on MNIST with 100 labels (about 11 minutes on 2 CPU cores),
# capped at 13 minutes of training on slower machines.
DEMO_EPOCHS ?= 30
DEMO_MINUTES ?= 13
DEMO_RUN    ?= runs/demo

# Debian packages: Fashion-MNIST (out-of-distribution data) and Chromium (the browser test).
# Installed only when missing; playwright drives /usr/bin/chromium and never downloads a browser.
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: setup system-deps demo test bench bench-speed bench-generation compare compare-fashion clean

setup: system-deps $(STAMP)

system-deps:
	@missing=""; \
	test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || missing="$$missing dataset-fashion-mnist"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(APT_GET) update -qq && $(APT_GET) install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 $$missing; \
	fi

# The comparison in the README: all 5 methods x 3 seeds, MNIST with 100 labels, a small budget per run.
# On a GPU: make compare COMPARE_DEVICE=cuda COMPARE_JOBS=15 COMPARE_MINUTES=7 COMPARE_EPOCHS=1000
COMPARE_MINUTES ?= 1.5
COMPARE_OUT     ?= runs/compare
COMPARE_EPOCHS  ?= 100
COMPARE_JOBS    ?= 1
COMPARE_DEVICE  ?= auto

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(GENCLS) data fetch mnist
	$(GENCLS) train --method improved-gan --dataset mnist --labels 100 --epochs $(DEMO_EPOCHS) --minutes $(DEMO_MINUTES) \
		--seed 1 --data-seed 1 --out $(DEMO_RUN) --overwrite
	$(GENCLS) evaluate $(DEMO_RUN)
	$(GENCLS) generate $(DEMO_RUN) --n 100 --out $(DEMO_RUN)/generated.png --seed 0

# The tests in 2 processes (pytest-xdist), one thread each: 14 min instead of 19.5 on this 2-core
# machine (AVX2, 7 Dec 2026). TEST_JOBS=0 runs them in this process.
TEST_JOBS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_JOBS) tests

bench: setup
	$(PY) benchmarks/mnist_ssl.py --method improved-gan --labels 100 --minutes 30 --out runs/bench-improved-gan.json

compare: setup
	$(GENCLS) data fetch mnist
	$(GENCLS) compare --methods improved-gan,acgan,vae-m2,aae,supervised --dataset mnist --labels 100 --seeds 3 \
		--epochs $(COMPARE_EPOCHS) --minutes $(COMPARE_MINUTES) --jobs $(COMPARE_JOBS) --threads 1 \
		--device $(COMPARE_DEVICE) --out $(COMPARE_OUT)
	$(GENCLS) report $(COMPARE_OUT)

# The Fashion-MNIST figures: improved-gan against supervised, 100 and 1000 labels, the same budget
# for both (FASHION_EPOCHS epochs of the unlabelled set, seeds 1..FASHION_SEEDS; on a GPU:
# make compare-fashion FASHION_DEVICE=cuda).
FASHION_EPOCHS ?= 30
FASHION_SEEDS  ?= 1
FASHION_DEVICE ?= auto
compare-fashion: setup
	$(GENCLS) data fetch fashion-mnist
	for n in 100 1000; do \
		$(GENCLS) compare --methods improved-gan,supervised --dataset fashion-mnist --labels $$n --seeds $(FASHION_SEEDS) \
			--epochs $(FASHION_EPOCHS) --device $(FASHION_DEVICE) --out runs/compare-fashion-$$n || exit 1; \
	done

# The generation table and per-class grids in docs/ (acgan 100 / all labels, improved-gan 100 labels).
bench-speed: setup
	$(PY) benchmarks/peak.py
	$(PY) benchmarks/speed.py --out runs/speed.json

bench-generation: setup
	$(PY) benchmarks/generation_table.py --minutes 4 --threads 1 --docs docs

clean:
	rm -rf $(VENV) runs .pytest_cache
