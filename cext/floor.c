/* floor.c - what `make bench` compares the hardware against: the same
 * amount of memory work done by the plainest C loop. */
#include "hw.h"

int hw_floor_gather(const uint64_t *table, uint64_t n_table,
                    const uint64_t *addrs, uint64_t n, uint64_t *out)
{
    if (n_table == 0 || (n_table & (n_table - 1)))
        return HW_E_INVAL;
    for (uint64_t i = 0; i < n; i++)
        out[i] = table[(addrs[i] >> HW_PAGE_SHIFT) & (n_table - 1)];
    return HW_OK;
}
