/* SPDX-License-Identifier: MIT */
/*
 * runner.c - the program a driver's object is linked into: it plays the
 * kernel around the driver. For each scenario: learn the domain from the
 * daemon (devices, memory, hardware domain or not), load the module (its
 * module_init registers the IOMMU, which probes every device), run the
 * scenario through the IOMMU core's API, unload the module, and check every
 * result against the daemon's own view (control socket). One line per check,
 * then "N passed, M failed".
 *
 *   driver-bench --socket /tmp/xenemu-$UID/dom0.sock [--revision 1|2]
 *                [--scenario NAME|all] [--device SSSS:BB:DD.F] [--control PATH]
 *                [--domid N] [--debug]
 *
 * Exit status: 0 every check passed, 1 a check failed, 2 bad command line,
 * 3 the daemon's control socket or the domain cannot be reached.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <asm/xen/page.h>

#include "runner.h"

enum { EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE };

bool wb_check(struct wb_run *r, bool cond, const char *fmt, ...)
{
    va_list ap;

    printf("%s %s: ", cond ? "ok" : "FAIL", r->scenario);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    if (cond)
        r->passed++;
    else
        r->failed++;
    return cond;
}

int wb_device_ctx(struct wb_run *r, struct wb_sbdf dev)
{
    struct wb_domain_info now;
    unsigned int i;

    if (wb_ctl_domain_info(r->ctl, r->domid, &now))
        return -1;
    for (i = 0; i < now.nr_devices; i++)
        if (!memcmp(&now.devices[i], &dev, sizeof(dev)))
            return (int)now.device_ctx[i];
    return -1;
}

static void usage(FILE *to)
{
    unsigned int i;

    fprintf(to, "usage: driver-bench --socket PATH [--revision 1|2] [--scenario NAME|all]\n"
                "                    [--device SSSS:BB:DD.F] [--control PATH] [--domid N] [--debug]\n"
                "  --socket    the domain's socket (default $XENEMU_SOCKET)\n"
                "  --control   the control socket (default $XENEMU_CONTROL, else control.sock\n"
                "              beside the domain socket)\n"
                "  --domid     the domain (default: N of the socket's name domN.sock)\n"
                "  --revision  the PV-IOMMU revision the driver was built for and the daemon\n"
                "              serves (default 1)\n"
                "  --device    the device the scenarios map for (default the domain's first)\n"
                "  scenarios: all");
    for (i = 0; i < wb_nr_scenarios; i++)
        fprintf(to, " %s", wb_scenarios[i].name);
    fputc('\n', to);
}

/* The domain from its socket's name, dom<N>.sock, as the daemon names them. */
static int domid_from_socket(const char *path, unsigned int *domid)
{
    const char *base = strrchr(path, '/');
    unsigned int id;
    char end[6];

    base = base ? base + 1 : path;
    if (sscanf(base, "dom%u%5s", &id, end) != 2 || strcmp(end, ".sock") || id > 0x7fef)
        return -1;
    *domid = id;
    return 0;
}

/* The devices the domain owns, as struct pci_devs, and the scenario's device among them. */
static int learn_domain(struct wb_run *r, const char *device)
{
    unsigned int i;

    if (wb_ctl_domain_info(r->ctl, r->domid, &r->info))
        return -1;
    if (wb_core_add_devices(r->info.devices, r->info.nr_devices))
        return -1;
    r->dev = NULL;
    for (i = 0; i < r->info.nr_devices; i++) {
        char name[16];

        wb_format_sbdf(r->info.devices[i], name, sizeof(name));
        if (!device || !strcmp(device, name)) {
            r->dev = &wb_core_device(i)->dev;
            r->sbdf = r->info.devices[i];
            break;
        }
    }
    return 0;
}

/*
 * What module init must have done: every device probed and in its default
 * domain: Xen's context 0 for the identity domain, a context of its own for
 * a DMA domain.
 */
static void check_loaded(struct wb_run *r)
{
    unsigned int i;

    for (i = 0; i < wb_core_nr_devices(); i++) {
        struct pci_dev *p = wb_core_device(i);
        struct iommu_domain *def = wb_core_default_domain(&p->dev);
        bool identity = def && def->type == IOMMU_DOMAIN_IDENTITY;
        int ctx = wb_device_ctx(r, r->info.devices[i]);

        if (&p->dev == r->dev)
            r->default_ctx = ctx;
        wb_check(r, wb_core_probe_status(i) == 0 && def && (identity ? ctx == 0 : ctx > 0),
                 "probe %s: %d, default domain %s, daemon: in context %d", p->name,
                 wb_core_probe_status(i), !def ? "none" : identity ? "identity" : "DMA", ctx);
    }
}

/* The contexts the domain's devices sit in other than 0, each counted once. */
static unsigned int default_dma_contexts(const struct wb_domain_info *info)
{
    unsigned int i, j, n = 0;

    for (i = 0; i < info->nr_devices; i++) {
        bool seen = info->device_ctx[i] == 0;

        for (j = 0; j < i && !seen; j++)
            seen = info->device_ctx[j] == info->device_ctx[i];
        n += !seen;
    }
    return n;
}

/* What module exit must have left: nothing of the driver's, the daemon as before. */
static void check_unloaded(struct wb_run *r, unsigned int contexts_before, unsigned long warnings)
{
    struct wb_domain_info now;
    char problem[256];
    unsigned int i, back = 0;
    int consistent;

    for (i = 0; i < wb_core_nr_devices(); i++)
        back += wb_core_device(i)->dev.iommu == NULL;
    wb_check(r, back == wb_core_nr_devices() && !wb_core_registered(),
             "module exit released %u of %u devices and unregistered the IOMMU", back,
             wb_core_nr_devices());
    wb_check(r, wb_live_allocations() == 0, "module exit freed every allocation (%ld left)",
             wb_live_allocations());
    wb_check(r, wb_warnings() == warnings, "no WARN_ON fired (%lu)", wb_warnings() - warnings);
    int ret = wb_ctl_domain_info(r->ctl, r->domid, &now);

    if (wb_check(r, ret == 0, "info after exit%s%s", ret ? ": " : "", ret ? wb_ctl_error(r->ctl) : "")) {
        unsigned int in_zero = 0;

        for (i = 0; i < now.nr_devices; i++)
            in_zero += now.device_ctx[i] == 0;
        wb_check(r, now.nr_allocated == contexts_before,
                 "daemon: %u contexts allocated after exit, %u when the module was loaded "
                 "(its default DMA domains' not counted)", now.nr_allocated, contexts_before);
        wb_check(r, in_zero == now.nr_devices, "daemon: %u of %u devices back in context 0",
                 in_zero, now.nr_devices);
    }
    consistent = wb_ctl_check(r->ctl, problem, sizeof(problem));
    wb_check(r, consistent == 1, "daemon check: %s", consistent == 1 ? "consistent" :
             consistent == 0 ? problem : wb_ctl_error(r->ctl));
}

static void run_scenario(struct wb_run *r, const struct wb_scenario *sc, const char *device)
{
    struct wb_domain_info loaded;
    unsigned long warnings = wb_warnings();
    int ret;

    r->scenario = sc->name;
    ret = learn_domain(r, device);
    if (!wb_check(r, ret == 0 && r->dev && r->info.memory_pages >= WB_MIN_MEMORY_PAGES,
                  "domain %u: %u devices, %llu pages%s%s", r->domid, r->info.nr_devices,
                  (unsigned long long)r->info.memory_pages,
                  ret ? ": " : !r->dev ? (device ? ", none of them the --device asked for" : ", none")
                  : r->info.memory_pages < WB_MIN_MEMORY_PAGES ? ", fewer than the scenarios' 64 MiB" : "",
                  ret ? wb_ctl_error(r->ctl) : ""))
        return;
    wb_set_guest(sc->pv, r->info.hardware);
    if (sc->pv && !wb_check(r, wb_p2m_setup(r->info.memory_pages) == 0, "PV p2m over %llu gfns",
                            (unsigned long long)r->info.memory_pages))
        return;
    ret = wb_module_init();
    if (wb_check(r, ret == 0, "module init: %d", ret)) {
        /*
         * Module init may take contexts for good (revision 2's init): count
         * from here, less the default DMA domains' contexts probe made,
         * which module exit must free.
         */
        wb_ctl_domain_info(r->ctl, r->domid, &loaded);
        check_loaded(r);
        loaded.nr_allocated -= default_dma_contexts(&loaded);
        sc->run(r);
        wb_module_exit();
        /* A module without exit cannot be unloaded; the core lets go of it for the next scenario. */
        if (!wb_have_module_exit() && wb_core_unregister_for_driver())
            printf("note %s: the driver has no module_exit: the core released its devices and "
                   "unregistered its IOMMU\n", sc->name);
        check_unloaded(r, loaded.nr_allocated, warnings);
    }
    wb_p2m_teardown();
    wb_core_remove_devices();
}

int main(int argc, char **argv)
{
    const char *socket = getenv("XENEMU_SOCKET"), *control = getenv("XENEMU_CONTROL");
    const char *scenario = "all", *device = NULL;
    struct wb_run r;
    char err[256], control_buf[4096];
    bool have_domid = false, found = false;
    unsigned int i;
    int a;

    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(&r, 0, sizeof(r));
    r.revision = 1;
    for (a = 1; a < argc; a++) {
        const char *opt = argv[a], *val = a + 1 < argc ? argv[a + 1] : NULL;
        char *end;

        if (!strcmp(opt, "-h") || !strcmp(opt, "--help")) {
            usage(stdout);
            return EXIT_OK;
        }
        if (!strcmp(opt, "--debug")) {
            wb_debug = 1;
            continue;
        }
        if (!val) {
            fprintf(stderr, "driver-bench: %s needs a value\n", opt);
            usage(stderr);
            return EXIT_USAGE;
        }
        a++;
        if (!strcmp(opt, "--socket")) {
            socket = val;
        } else if (!strcmp(opt, "--control")) {
            control = val;
        } else if (!strcmp(opt, "--scenario")) {
            scenario = val;
        } else if (!strcmp(opt, "--device")) {
            device = val;
        } else if (!strcmp(opt, "--domid")) {
            unsigned long v = strtoul(val, &end, 0);

            if (*end || !*val || v > 0x7fef) {
                fprintf(stderr, "driver-bench: bad --domid: %s\n", val);
                return EXIT_USAGE;
            }
            r.domid = (unsigned int)v;
            have_domid = true;
        } else if (!strcmp(opt, "--revision")) {
            if (strcmp(val, "1") && strcmp(val, "2")) {
                fprintf(stderr, "driver-bench: --revision is 1 or 2, not %s\n", val);
                return EXIT_USAGE;
            }
            r.revision = val[0] - '0';
        } else {
            fprintf(stderr, "driver-bench: unknown option %s\n", opt);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    for (i = 0; i < wb_nr_scenarios; i++)
        found |= !strcmp(scenario, "all") || !strcmp(scenario, wb_scenarios[i].name);
    if (!found) {
        fprintf(stderr, "driver-bench: no scenario %s\n", scenario);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!socket || !*socket) {
        fprintf(stderr, "driver-bench: no domain socket: --socket PATH or XENEMU_SOCKET\n");
        return EXIT_USAGE;
    }
    if (!have_domid && domid_from_socket(socket, &r.domid)) {
        fprintf(stderr, "driver-bench: cannot tell the domain from %s: give --domid\n", socket);
        return EXIT_USAGE;
    }
    if (!control || !*control) {
        const char *slash = strrchr(socket, '/');
        int dirlen = slash ? (int)(slash - socket) : 1;

        snprintf(control_buf, sizeof(control_buf), "%.*s/control.sock", dirlen, slash ? socket : ".");
        control = control_buf;
    }
    if (!wb_have_module()) {
        fprintf(stderr, "driver-bench: the program has no module_init: link a driver object\n");
        return EXIT_USAGE;
    }
    /* The driver's hypercalls go to the domain socket: HYPERVISOR_* read it on first use. */
    setenv("XENEMU_SOCKET", socket, 1);
    r.ctl = wb_ctl_open(control, err, sizeof(err));
    if (!r.ctl) {
        fprintf(stderr, "driver-bench: %s\n", err);
        return EXIT_UNREACHABLE;
    }
    /* A driver built for one revision cannot talk to a machine of the other. */
    struct wb_domain_info probe;
    if (wb_ctl_domain_info(r.ctl, r.domid, &probe) == 0 && probe.revision &&
        probe.revision != (unsigned int)r.revision) {
        fprintf(stderr, "driver-bench: the daemon serves PV-IOMMU revision %u, the driver was "
                "built for revision %d (--revision)\n", probe.revision, r.revision);
        wb_ctl_close(r.ctl);
        return EXIT_USAGE;
    }
    printf("driver-bench: domain %u (%s), revision %d, control %s\n", r.domid, socket, r.revision,
           control);
    for (i = 0; i < wb_nr_scenarios; i++)
        if (!strcmp(scenario, "all") || !strcmp(scenario, wb_scenarios[i].name))
            run_scenario(&r, &wb_scenarios[i], device);
    wb_ctl_close(r.ctl);
    printf("%u passed, %u failed\n", r.passed, r.failed);
    return r.failed ? EXIT_FAILED : EXIT_OK;
}
