# The guest-driver workbench (clients/linux/, README there): Linux-flavoured
# include roots, the kernel shim, the IOMMU core and the runner in
# build/libxenemu_workbench.a, and the project's own driver built and linked
# against it for both PV-IOMMU revisions. Included from the top Makefile.

WB_DIR      := clients/linux
# A driver is compiled with these and nothing else (README "Build your driver").
WB_CFLAGS_REV1 := -I$(WB_DIR)/include -Iclients/c -Iabi
WB_CFLAGS_REV2 := -I$(WB_DIR)/include -Iclients/c -Iabi/rev2 -Iabi
# Kernel code is GNU C (statement expressions, typeof, #include_next), as Kbuild builds it.
WB_WARN     := -std=gnu11 -Wall -Wextra -Werror
WB_LIB      := $(BUILD)/libxenemu_workbench.a
WB_SRCS     := $(wildcard $(WB_DIR)/workbench/*.c)
WB_OBJS     := $(patsubst $(WB_DIR)/workbench/%.c,$(BUILD)/wb_%.o,$(WB_SRCS))
WB_HDRS     := $(shell find $(WB_DIR)/include -name '*.h') $(wildcard $(WB_DIR)/workbench/*.h) \
               $(CLIENT_HDRS)
WB_BENCHES  := $(BUILD)/xenemu_pviommu_bench_rev1 $(BUILD)/xenemu_pviommu_bench_rev2

.PHONY: workbench
workbench: $(WB_LIB) $(WB_BENCHES)
clients: workbench

# The library is revision-independent: it makes no PV-IOMMU call itself.
$(BUILD)/wb_%.o: $(WB_DIR)/workbench/%.c $(WB_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WB_WARN) -pthread $(WB_CFLAGS_REV1) -c $< -o $@

$(WB_LIB): $(WB_OBJS)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/xenemu-pviommu-rev%.o: $(WB_DIR)/drivers/xenemu-pviommu.c $(WB_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WB_WARN) $(WB_CFLAGS_REV$*) -c $< -o $@

$(BUILD)/xenemu_pviommu_bench_rev%: $(BUILD)/xenemu-pviommu-rev%.o $(WB_LIB) $(LIB)
	$(CC) $(CFLAGS) $< $(WB_LIB) $(LIB) -pthread -o $@
