# xenemu: `make run` starts the daemon on the embedded default machine,
# `make test` runs every test. Both set everything up on first use.

PYTHON    ?= python3
VENV      := .venv
VPY       := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
BUILD     := build
CC        ?= gcc
CFLAGS    ?= -O2 -g
WARN      := -std=c99 -Wall -Wextra -Werror -pedantic
PYTEST_ARGS ?=

# The package is installed editable; the cffi extension is rebuilt whenever a
# C source, a header (hw.h is also the source of the cffi declarations) or the
# build script changes.
HW_SOURCES := $(wildcard cext/*.c cext/*.h) xenemu/hw/_build.py

.PHONY: all run test bench bench-smoke bench-tools traces fuzz soak clients venv clean

all: venv clients

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(HW_SOURCES)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# --- C client library and examples -------------------------------------
CLIENT_HDRS := $(wildcard abi/xen/*.h abi/rev2/xen/*.h abi/xenemu/*.h clients/c/examples/*.h) \
               clients/c/xenemu_client.h
LIB         := $(BUILD)/libxenemu.a
EXAMPLES    := $(BUILD)/query_caps $(BUILD)/xen_iommu_driver $(BUILD)/xen_iommu_driver_v2

clients: $(LIB) $(EXAMPLES)

# The client is thread-safe (per-thread connections, a lock per shared one):
# it is compiled, and everything linking libxenemu.a is linked, with -pthread.
$(BUILD)/xenemu_client.o: clients/c/xenemu_client.c $(CLIENT_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -D_POSIX_C_SOURCE=200809L -Iabi -Iclients/c -c $< -o $@

# Revision 2's entry points see the revision-2 header (-Iabi/rev2 first); the
# transport they share with revision 1 is xenemu_client.o's.
$(BUILD)/xenemu_client_v2.o: clients/c/xenemu_client_v2.c $(CLIENT_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -D_POSIX_C_SOURCE=200809L -Iabi/rev2 -Iabi -Iclients/c -c $< -o $@

# memory_op is revision-independent: <xen/memory.h> is abi/'s for both.
$(BUILD)/xenemu_memory_op.o: clients/c/xenemu_memory_op.c $(CLIENT_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -pthread -D_POSIX_C_SOURCE=200809L -Iabi -Iclients/c -c $< -o $@

$(LIB): $(BUILD)/xenemu_client.o $(BUILD)/xenemu_client_v2.o $(BUILD)/xenemu_memory_op.o
	rm -f $@
	ar rcs $@ $^

$(BUILD)/%: clients/c/examples/%.c $(LIB) $(CLIENT_HDRS)
	$(CC) $(CFLAGS) $(WARN) -pthread -Iabi -Iclients/c $< $(LIB) -o $@

# Revision-2 examples (*_v2.c) see the revision-2 header, as xenemu_client_v2.o does.
$(BUILD)/%_v2: clients/c/examples/%_v2.c $(LIB) $(CLIENT_HDRS)
	$(CC) $(CFLAGS) $(WARN) -pthread -Iabi/rev2 -Iabi -Iclients/c $< $(LIB) -o $@

# The guest-driver workbench: its library, the project's driver for both revisions.
include clients/linux/workbench.mk

# --- benchmark programs (bench/c): echo server, load generator, and the
# plain C loop the IOTLB hits are compared with (a shared object bench/hw.py
# loads, so that the product's cffi library has no benchmark code) ---------
BENCH_TOOLS := $(BUILD)/bench_echo $(BUILD)/bench_load $(BUILD)/libbench_floor.so

bench-tools: $(BENCH_TOOLS)

$(BUILD)/libbench_floor.so: bench/c/floor.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -shared -fPIC $< -o $@

$(BUILD)/bench_%: bench/c/%.c bench/c/common.h $(CLIENT_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -D_POSIX_C_SOURCE=200809L -Iabi $< -o $@

# --- running --------------------------------------------------------------
run: venv clients
	$(VENV)/bin/xenemu serve

# The tests run `python -m bench --smoke`, which needs the benchmark programs.
test: venv clients bench-tools
	$(VPY) -m pytest -q $(PYTEST_ARGS)

bench: venv clients bench-tools
	$(VPY) -m bench

bench-smoke: venv clients bench-tools
	$(VPY) -m bench --smoke

# Coverage-guided fuzzing under atheris for FUZZ_SECONDS per target; new
# inputs that add coverage land in tests/fuzz/corpus/ (make test replays them).
FUZZ_SECONDS ?= 300
fuzz: venv
	$(VPY) -m pip install -q --disable-pip-version-check 'atheris>=2.3'
	$(VPY) tests/fuzz/run.py --seconds $(FUZZ_SECONDS)

# Many clients on several domains for SOAK_SECONDS (make test runs 4 s of it).
SOAK_SECONDS ?= 180
soak: venv clients
	$(VPY) tests/soak.py --seconds $(SOAK_SECONDS)

# Re-record the committed trace corpus (tests/traces/) from tests/scenarios.py.
traces: venv clients
	$(VPY) tests/traces/record.py

clean:
	rm -rf $(BUILD) $(VENV) *.egg-info xenemu/hw/_hwlib.* .pytest_cache
