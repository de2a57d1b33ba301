/* memtouch: writes a position-dependent pattern to mib=N MiB (default 16) of RAM above the
 * image, verifies it, and prints a checksum that depends only on N.
 * Exit 0: ok. Exit 1: mismatch. Exit 2: N MiB does not fit in RAM below 4 GiB. */
#include "rt.h"

#define MIB          (1ull << 20)
#define ALIGN_2M(x)  (((x) + (2 * MIB - 1)) & ~(2 * MIB - 1))
#define MIN_START    (4 * MIB)
#define MAPPED_LIMIT (1ull << 32)

static inline uint64_t pattern(uint64_t index) {
    uint64_t x = (index + 1) * 0x9E3779B97F4A7C15ull;   /* xorshift64 of the offset */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

static uint64_t find_range(uint64_t bytes) {
    uint64_t lo = ALIGN_2M((uint64_t)(uintptr_t)_end);
    if (lo < MIN_START) lo = MIN_START;
    for (unsigned i = 0; i < rt_memmap_count(); i++) {
        const struct rt_memmap_entry *e = &rt_memmap()[i];
        if (e->type != RT_MEMMAP_RAM) continue;
        uint64_t start = ALIGN_2M(e->addr), end = e->addr + e->size;
        if (start < lo) start = lo;
        if (end > MAPPED_LIMIT) end = MAPPED_LIMIT;
        if (start < end && end - start >= bytes) return start;
    }
    return 0;
}

int main(void) {
    uint64_t mib = cmdline_u64("mib", 16);
    uint64_t bytes = mib * MIB;
    uint64_t base = (mib <= 4096) ? find_range(bytes) : 0;
    if (!base) {
        rt_printf("memtouch: %lu MiB does not fit in guest RAM\n", mib);
        if (!rt_memmap_count()) rt_puts("memtouch: no memmap in start_info\n");
        for (unsigned i = 0; i < rt_memmap_count(); i++)
            rt_printf("memtouch: memmap 0x%016lx-0x%016lx type %u\n", rt_memmap()[i].addr,
                      rt_memmap()[i].addr + rt_memmap()[i].size, rt_memmap()[i].type);
        return 2;
    }
    volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)base;
    uint64_t words = bytes / 8;

    uint64_t t0 = rdtsc();
    for (uint64_t i = 0; i < words; i++) p[i] = pattern(i);
    uint64_t sum = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < words; i++) {
        uint64_t v = p[i], want = pattern(i);
        if (v != want) {
            rt_printf("memtouch: mismatch at 0x%lx: read 0x%016lx expected 0x%016lx\n",
                      base + i * 8, v, want);
            return 1;
        }
        sum = (sum ^ v) * 0x9E3779B97F4A7C15ull;
        sum ^= sum >> 32;
    }
    uint64_t cycles = rdtsc() - t0;
    rt_printf("memtouch: wrote and verified %lu MiB checksum 0x%016lx in %lu cycles\n", mib, sum, cycles);
    return 0;
}
