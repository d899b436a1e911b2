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

.PHONY: all run test test-tools bench bench-smoke bench-tools traces fuzz soak clients venv clean \
        install install-prefix-check uninstall browser

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
# The shared library: the soname carries SO_MAJOR, bumped when a change breaks
# programs linked against the previous library (a symbol gone or changed);
# clients/c/libxenemu.map says which symbols it exports.
SO_MAJOR    := 1
SO_VERSION  := $(SO_MAJOR).0.0
SHLIB       := $(BUILD)/libxenemu.so
CLIENT_OBJS := $(BUILD)/xenemu_client.o $(BUILD)/xenemu_client_v2.o $(BUILD)/xenemu_memory_op.o
EXAMPLES    := $(BUILD)/query_caps $(BUILD)/xen_iommu_driver $(BUILD)/xen_iommu_driver_v2 $(BUILD)/nested_guest_v2

clients: $(LIB) $(SHLIB) $(EXAMPLES)

# The client is thread-safe (per-thread connections, a lock per shared one):
# it is compiled, and everything linking libxenemu is linked, with -pthread.
# Its objects are position-independent: one set serves the .a and the .so.
CLIENT_CFLAGS := $(CFLAGS) $(WARN) -fPIC -pthread -D_POSIX_C_SOURCE=200809L

$(BUILD)/xenemu_client.o: clients/c/xenemu_client.c $(CLIENT_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CLIENT_CFLAGS) -Iabi -Iclients/c -c $< -o $@

# Revision 2's entry points see the revision-2 header (-Iabi/rev2 first); the
# transport they share with revision 1 is xenemu_client.o's.
$(BUILD)/xenemu_client_v2.o: clients/c/xenemu_client_v2.c $(CLIENT_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CLIENT_CFLAGS) -Iabi/rev2 -Iabi -Iclients/c -c $< -o $@

# memory_op is revision-independent: <xen/memory.h> is abi/'s for both.
$(BUILD)/xenemu_memory_op.o: clients/c/xenemu_memory_op.c $(CLIENT_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CLIENT_CFLAGS) -Iabi -Iclients/c -c $< -o $@

$(LIB): $(CLIENT_OBJS)
	rm -f $@
	ar rcs $@ $^

# libxenemu.so.1.0.0, its soname libxenemu.so.1 (what programs record and the
# loader looks for) and libxenemu.so (what -lxenemu finds) as links to it.
$(SHLIB).$(SO_VERSION): $(CLIENT_OBJS) clients/c/libxenemu.map
	$(CC) $(CFLAGS) -shared -pthread -Wl,-soname,libxenemu.so.$(SO_MAJOR) -Wl,-z,defs \
	    -Wl,--version-script=clients/c/libxenemu.map $(CLIENT_OBJS) -o $@

$(SHLIB): $(SHLIB).$(SO_VERSION)
	ln -sf libxenemu.so.$(SO_VERSION) $(SHLIB).$(SO_MAJOR)
	ln -sf libxenemu.so.$(SO_MAJOR) $@

$(BUILD)/%: clients/c/examples/%.c $(LIB) $(CLIENT_HDRS)
	$(CC) $(CFLAGS) $(WARN) -pthread -Iabi -Iclients/c $< $(LIB) -o $@

# Revision-2 examples (*_v2.c) see the revision-2 header, as xenemu_client_v2.o does.
$(BUILD)/%_v2: clients/c/examples/%_v2.c $(LIB) $(CLIENT_HDRS)
	$(CC) $(CFLAGS) $(WARN) -pthread -Iabi/rev2 -Iabi -Iclients/c $< $(LIB) -o $@

# --- installing the C client for harnesses built elsewhere ---------------
# make install PREFIX=/usr/local [DESTDIR=staging]: headers under
# INCLUDEDIR/xenemu-client (revision 1's root; rev2/ in it is revision 2's,
# put first), both libraries, and pkg-config files generated for PREFIX
# (xenemu-client.pc, xenemu-client-rev2.pc). DESTDIR stages the tree without
# changing the paths written into it. make uninstall removes what install put.
PREFIX       ?= /usr/local
LIBDIR       ?= $(PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
VERSION       = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

# What install copies; another library adds its files to these lists.
# INSTALL_HEADERS: SRC:DEST, DEST under INCLUDEDIR. INSTALL_LIBS: files into
# LIBDIR. INSTALL_LINKS: NAME:TARGET symbolic links in LIBDIR. INSTALL_PC:
# templates (NAME.pc.in) whose @PREFIX@ @LIBDIR@ @INCLUDEDIR@ @VERSION@ are
# filled in, installed as NAME.pc into PKGCONFIGDIR.
CLIENT_INCLUDE  := xenemu-client
INSTALL_HEADERS := $(foreach h,$(wildcard abi/xen/*.h abi/rev2/xen/*.h abi/xenemu/*.h), \
                     $(h):$(CLIENT_INCLUDE)/$(h:abi/%=%)) \
                   clients/c/xenemu_client.h:$(CLIENT_INCLUDE)/xenemu_client.h
INSTALL_LIBS    := $(LIB) $(SHLIB).$(SO_VERSION)
INSTALL_LINKS   := libxenemu.so.$(SO_MAJOR):libxenemu.so.$(SO_VERSION) \
                   libxenemu.so:libxenemu.so.$(SO_MAJOR)
INSTALL_PC      := clients/c/xenemu-client.pc.in clients/c/xenemu-client-rev2.pc.in

# The guest-driver workbench: its library, the project's driver for both
# revisions; installed beside the client (its include root under
# INCLUDEDIR/xenemu-workbench, pkg-config xenemu-workbench[-rev2]).
include clients/linux/workbench.mk
INSTALL_HEADERS += $(foreach h,$(shell find $(WB_DIR)/include -name '*.h'), \
                     $(h):xenemu-workbench/$(h:$(WB_DIR)/include/%=%))
INSTALL_LIBS    += $(WB_LIB)
INSTALL_PC      += $(WB_DIR)/xenemu-workbench.pc.in $(WB_DIR)/xenemu-workbench-rev2.pc.in

# The paths go into the .pc files, read where the tree ends up: absolute only.
install-prefix-check:
	@for dir in "$(PREFIX)" "$(LIBDIR)" "$(INCLUDEDIR)" "$(PKGCONFIGDIR)"; do case "$$dir" in /*) ;; \
	  *) echo "make: PREFIX, LIBDIR, INCLUDEDIR and PKGCONFIGDIR must be absolute paths, not '$$dir'"; \
	     exit 2;; esac; done

install: install-prefix-check $(INSTALL_LIBS)
	@set -e; for pair in $(INSTALL_HEADERS); do \
	  dest="$(DESTDIR)$(INCLUDEDIR)/$${pair#*:}"; \
	  install -d "$${dest%/*}"; install -m 644 "$${pair%%:*}" "$$dest"; done
	install -d "$(DESTDIR)$(LIBDIR)" "$(DESTDIR)$(PKGCONFIGDIR)"
	install -m 644 $(filter %.a,$(INSTALL_LIBS)) "$(DESTDIR)$(LIBDIR)"
	install -m 755 $(filter-out %.a,$(INSTALL_LIBS)) "$(DESTDIR)$(LIBDIR)"
	@set -e; for pair in $(INSTALL_LINKS); do \
	  ln -sfn "$${pair#*:}" "$(DESTDIR)$(LIBDIR)/$${pair%%:*}"; done
	@set -e; for pc in $(INSTALL_PC); do \
	  name=$${pc##*/}; sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    "$$pc" > "$(DESTDIR)$(PKGCONFIGDIR)/$${name%.in}"; done
	@echo "installed into $(DESTDIR)$(PREFIX): PKG_CONFIG_PATH=$(PKGCONFIGDIR) pkg-config --cflags --libs xenemu-client"

# Removes the files install put there, then the include directories it made
# (rmdir -p on the path below INCLUDEDIR: INCLUDEDIR itself stays).
uninstall: install-prefix-check
	@set -e; for pair in $(INSTALL_HEADERS); do \
	  rm -f "$(DESTDIR)$(INCLUDEDIR)/$${pair#*:}"; done
	@set -e; for pair in $(INSTALL_HEADERS); do dir=$${pair#*:}; dir=$${dir%/*}; \
	  if [ -d "$(DESTDIR)$(INCLUDEDIR)/$$dir" ]; then \
	    (cd "$(DESTDIR)$(INCLUDEDIR)" && rmdir -p --ignore-fail-on-non-empty "$$dir"); fi; done
	@set -e; for lib in $(notdir $(INSTALL_LIBS)) $(foreach l,$(INSTALL_LINKS),$(firstword $(subst :, ,$(l)))); do \
	  rm -f "$(DESTDIR)$(LIBDIR)/$$lib"; done
	@set -e; for pc in $(notdir $(INSTALL_PC:.in=)); do rm -f "$(DESTDIR)$(PKGCONFIGDIR)/$$pc"; done


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

# Chromium from Debian's packages, for the test that renders a trace report in a
# real browser (tests/test_trace_report.py: it skips, saying why, without one).
# Installed where we are root and have apt-get (~30 s, once); elsewhere a note.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  echo "make browser: installing chromium (Debian's package)" && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    >/dev/null; } || \
	  echo "make browser: no $(CHROMIUM), and it cannot be installed here (needs root and" \
	       "apt-get): the browser test of trace reports will skip"

# The README's screenshot of a trace report, taken by that test's browser.
docs/trace-report.png: browser venv
	XENEMU_REPORT_SCREENSHOT=$(abspath $@) $(VPY) -m pytest -q tests/test_trace_report.py -k browser

# The suite runs twice (issue 17): with the C fast path, as the daemon runs by
# default, then with XENEMU_FAST_PATH=0, every hypercall (committed traces'
# replays included) answered by the Python handlers alone. The second pass
# leaves out what builds no Engine from the environment: the simulated
# hardware's own tests (tests/hw, but for its bench smoke run, which serves
# hypercalls) and the differential test, which runs both paths itself. Each
# pass spreads its tests over TEST_JOBS pytest-xdist workers (0: in process).
# The tests run `python -m bench --smoke`, which needs the benchmark programs.
TEST_JOBS ?= 2
PYTHON_PASS_SKIP := tests/test_fastpath_equivalence.py \
                    $(filter-out tests/hw/test_bench_smoke.py,$(wildcard tests/hw/test_*.py))

test: venv clients bench-tools test-tools browser
	@echo "make test: pass 1 of 2, the C fast path on"
	$(VPY) -m pytest -q -n $(TEST_JOBS) $(PYTEST_ARGS)
	@echo "make test: pass 2 of 2, XENEMU_FAST_PATH=0 (the Python handlers alone)"
	XENEMU_FAST_PATH=0 $(VPY) -m pytest -q -n $(TEST_JOBS) \
	    $(addprefix --ignore=,$(PYTHON_PASS_SKIP)) $(PYTEST_ARGS)

# tests/test_install.py builds against an installed tree with pkg-config:
# installed here when absent and we may (root, apt-get), else that test skips.
test-tools:
	@command -v pkg-config >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get -qq update && \
	    apt-get -qq install -y pkg-config >/dev/null; } || \
	  echo "make test: no pkg-config (apt-get install pkg-config): tests/test_install.py skips"

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
