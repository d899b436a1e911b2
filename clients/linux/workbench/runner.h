/* SPDX-License-Identifier: MIT */
/* runner.h - between the runner's main (runner.c) and its scenarios (scenarios.c). */
#ifndef WB_RUNNER_H
#define WB_RUNNER_H

#include "workbench.h"

struct wb_run {
    struct wb_ctl *ctl;
    unsigned int domid;
    int revision;
    struct wb_domain_info info;      /* the domain as the daemon saw it at module init */
    struct device *dev;              /* the device the scenarios map for */
    struct wb_sbdf sbdf;
    int default_ctx;                 /* the device's context in its default domain, after probe */
    const char *scenario;
    unsigned int passed, failed;
};

/* One line per check: "ok SCENARIO: what" or "FAIL SCENARIO: what: why". Returns cond. */
bool wb_check(struct wb_run *r, bool cond, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

struct wb_scenario {
    const char *name;
    bool pv;                         /* run as a PV guest (scattered p2m) */
    void (*run)(struct wb_run *r);
};

extern const struct wb_scenario wb_scenarios[];
extern const unsigned int wb_nr_scenarios;

/* The scenarios' buffers lie in the domain's first 64 MiB (pfns below 0x4000). */
#define WB_MIN_MEMORY_PAGES 0x4000UL

/* The context the daemon says the device is in, or -1. */
int wb_device_ctx(struct wb_run *r, struct wb_sbdf dev);

#endif
