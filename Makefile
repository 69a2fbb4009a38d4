# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := demo_out

.PHONY: demo test test-fast bench bench-quick faults clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m features.demo_data $(DEMO)/digits
	$(PY) run_extract.py --data $(DEMO)/digits --out $(DEMO)/digits-lite0.h5
	$(PY) run_head.py --features $(DEMO)/digits-lite0.h5 --clf logreg --out $(DEMO)/head
	$(PY) run_head.py predict --head $(DEMO)/head --features $(DEMO)/digits-lite0.h5 --split val --out $(DEMO)/val_predictions.csv
	$(PY) -m pipeline.fuse --head $(DEMO)/head --out $(DEMO)/model --finetune-epochs 3 --no-flip
	$(PY) -m pipeline.predict --model $(DEMO)/model --top-k 2 $$(ls $(DEMO)/digits/val/digit_3/* | head -n 4)

test: $(STAMP)
	$(PY) -m pytest -q

faults: $(STAMP)
	$(PY) benchmarks/faults.py --faults 200 --out RELIABILITY.md

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	PYTHONPATH=. $(PY) benchmarks/run.py

bench-quick: $(STAMP)
	PYTHONPATH=. $(PY) benchmarks/run.py --quick --out bench_out/BENCHMARKS-quick.md

clean:
	rm -rf $(DEMO) bench_out .pytest_cache
