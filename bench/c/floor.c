/* floor.c - what `make bench` compares the hardware's IOTLB hits against:
 * the same amount of memory work done by the plainest C loop. Built by
 * `make bench-tools` as build/libbench_floor.so and loaded by bench/hw.py,
 * so the product library carries no benchmark code. */
#include <stdint.h>

/* out[i] = table[(addrs[i] >> 12) & (n_table - 1)] for n addresses: one
 * array entry read per address, as an IOTLB hit reads one cached entry.
 * n_table must be a power of two (-1 otherwise). */
int floor_gather(const uint64_t *table, uint64_t n_table,
                 const uint64_t *addrs, uint64_t n, uint64_t *out)
{
    if (n_table == 0 || (n_table & (n_table - 1)))
        return -1;
    for (uint64_t i = 0; i < n; i++)
        out[i] = table[(addrs[i] >> 12) & (n_table - 1)];
    return 0;
}
