/*
 * op_runner - issue pv_iommu_op structs read from stdin, one hex line each,
 * through HYPERVISOR_iommu_op; print "<ret> <hex of the struct after>" per
 * line. Lets the tests run any table of cases through the C client.
 * Exit 3 when the daemon cannot be reached (the client's reason on stderr).
 */
#include <stdio.h>
#include <string.h>

#include "xenemu_client.h"

int main(void)
{
    char line[256];

    while (fgets(line, sizeof(line), stdin)) {
        struct pv_iommu_op op;
        unsigned char *p = (unsigned char *)&op;
        size_t i;
        long ret;

        if (strlen(line) < 2 * sizeof(op))
            return 2;
        for (i = 0; i < sizeof(op); i++) {
            unsigned int byte;
            if (sscanf(line + 2 * i, "%2x", &byte) != 1)
                return 2;
            p[i] = (unsigned char)byte;
        }
        ret = HYPERVISOR_iommu_op(&op);
        printf("%ld ", ret);
        if (ret == -XEN_ENOSYS && *xenemu_last_error()) {
            printf("\n");
            fprintf(stderr, "op_runner: %s\n", xenemu_last_error());
            return 3;
        }
        for (i = 0; i < sizeof(op); i++)
            printf("%02x", p[i]);
        printf("\n");
        fflush(stdout);
    }
    return 0;
}
