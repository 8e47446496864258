# Every target creates .venv on first use from the pinned requirements.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

MODEL  ?=
OUT    ?= artifacts
CONFIG ?=
ARGS   ?=

ARG_MODEL  := $(if $(MODEL),--model '$(MODEL)')
ARG_CONFIG := $(if $(CONFIG),--config '$(CONFIG)')
STAGE_ARGS  = $(ARG_MODEL) $(ARG_CONFIG) --out '$(OUT)' $(ARGS)

.PHONY: venv convert export rewrite import compare zoo debug trainable-check transplant bench test fuzz clean

venv: $(STAMP)

# requirements-hub.txt: the hub extra (keras_hub backbones), --no-deps: keras-hub's
# tensorflow-text is not needed by its backbones (about 8 s to install)
$(STAMP): requirements.txt requirements-hub.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-hub.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

convert: $(STAMP)
	$(PY) -m pipeline convert $(STAGE_ARGS)

STAGE_TARGETS := export rewrite import compare
$(STAGE_TARGETS): $(STAMP)
	$(PY) -m pipeline $@ $(STAGE_ARGS)

# make zoo [CONFIG=configs/zoo.toml] [OUT=artifacts/zoo] [JOBS=n] [ARGS="--force --executor ray ..."]
JOBS     ?=
ZOO_OUT  := $(if $(filter command line environment,$(origin OUT)),$(OUT),artifacts/zoo)
ZOO_CONF := $(or $(CONFIG),configs/zoo.toml)
zoo: $(STAMP)
	$(PY) -m pipeline zoo --config '$(ZOO_CONF)' --out '$(ZOO_OUT)' $(if $(JOBS),--jobs $(JOBS)) $(ARGS)
# per-layer comparison at every stage; ARGS=--bisect also cuts out the failing layer
debug: $(STAMP)
	$(PY) -m pipeline debug $(STAGE_ARGS)
# convert (up-to-date stages skipped), then the port trains as Keras does: <model>/training/
trainable-check: $(STAMP)
	$(PY) -m pipeline convert $(STAGE_ARGS) || [ $$? -eq 1 ]
	$(PY) -m pipeline trainable-check $(STAGE_ARGS)
# Keras weights into your own module: make transplant MODEL=... INTO=path/net.py:MyNet [ARGS="--init-args '[...]'"]
INTO ?=
transplant: $(STAMP)
	$(PY) -m pipeline transplant $(STAGE_ARGS) --into '$(INTO)'
# converted models vs Keras/TF, onnxruntime, torchvision; conversion cost vs plain tf2onnx
bench: $(STAMP)
	$(PY) -m pipeline.tools.bench --out '$(OUT)/bench' $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

FUZZ_COUNT   ?= 64
FUZZ_SECONDS ?= 900
fuzz: $(STAMP)
	FUZZ_COUNT=$(FUZZ_COUNT) FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m pytest tests/test_fuzz.py -s $(ARGS)

clean:
	rm -rf $(OUT) .pytest_cache
