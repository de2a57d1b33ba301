/* blk: drives a virtio-blk (block, device ID 2) virtio-mmio device from ring 3 by polling.
 * Written from the VIRTIO 1.2 spec, 5.2. One request in flight at a time, each a chain of
 * three descriptors: 16-byte header (device-readable), data (device-readable for OUT,
 * device-writable for IN/GET_ID), 1-byte status (device-writable). FLUSH has no data part.
 *
 * Cmdline: mode=test (default) | check-pattern | read-only | bench; seed=N (default 1);
 *          timeout=<TSC cycles per request> (default 1e10); ms=<bench phase length, default
 *          2000>; tsc-khz=<override the TSC frequency used by bench>; bench-cycles=<phase
 *          length when the TSC frequency is unknown, default 4e9>.
 * Exit 0: ok. Exit 1: failure (one line `blk: <reason>`). Exit 3: no device. Exit 4: bad mode.
 *
 * Pattern: the 8-byte word i (0..63) of sector s holds
 *     ((seed & 0xffff) << 48) | (s << 6) | i
 * (little-endian; s < 2^42), so it depends only on the seed and the position. */
#include "rt.h"
#include "virtio.h"

/* ---- virtio-blk (5.2) ---- */
#define VIRTIO_BLK_F_RO        (1ull << 5)
#define VIRTIO_BLK_F_FLUSH     (1ull << 9)

#define VIRTIO_BLK_T_IN        0
#define VIRTIO_BLK_T_OUT       1
#define VIRTIO_BLK_T_FLUSH     4
#define VIRTIO_BLK_T_GET_ID    8

#define VIRTIO_BLK_S_OK        0
#define VIRTIO_BLK_S_IOERR     1
#define VIRTIO_BLK_S_UNSUPP    2

#define VIRTIO_BLK_ID_BYTES    20
#define SECTOR                 512u
#define CFG_CAPACITY           0x00      /* le64, in 512-byte sectors */

struct blk_req_hdr {                     /* 5.2.6: le32 type, le32 reserved, le64 sector */
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

/* ---- test parameters ---- */
#define SPREAD_REQS    64        /* 4 KiB requests: first, last and 62 spread between */
#define SINGLE_REQS    9         /* 512-byte requests */
#define REQ4K_SECTORS  8
#define SEQ_BYTES      65536u    /* bench: sequential read size */
#define STATUS_UNSET   0xff      /* status byte before the device writes it */

static uint8_t ring_mem[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t data[SEQ_BYTES] __attribute__((aligned(4096)));
static struct blk_req_hdr hdr __attribute__((aligned(16)));
static volatile uint8_t status_byte;

static struct vdev dev;
static struct virtq q;
static uint64_t timeout;
static uint64_t capacity;                /* sectors */
static uint64_t seed;
static unsigned used_len_notes;

static inline uint64_t pattern_word(uint64_t s, unsigned i) {
    return ((seed & 0xffff) << 48) | (s << 6) | i;
}

static void fill_pattern_into(uint8_t *buf, uint64_t sector, unsigned nsect) {
    uint64_t *w = (uint64_t *)buf;
    for (unsigned k = 0; k < nsect; k++)
        for (unsigned i = 0; i < SECTOR / 8; i++) w[k * (SECTOR / 8) + i] = pattern_word(sector + k, i);
}

/* Returns 0, or prints the first bad sector and returns -1. */
static int check_pattern(uint64_t sector, unsigned nsect) {
    const uint64_t *w = (const uint64_t *)data;
    for (unsigned k = 0; k < nsect; k++)
        for (unsigned i = 0; i < SECTOR / 8; i++) {
            uint64_t want = pattern_word(sector + k, i), got = w[k * (SECTOR / 8) + i];
            if (got != want) {
                rt_printf("blk: mismatch in sector %lu at byte %u: read 0x%016lx expected 0x%016lx\n",
                          sector + k, i * 8, got, want);
                return -1;
            }
        }
    return 0;
}


/* One request, waited for. Returns the status byte the device wrote (0 = OK), or -1 on a
 * transport problem (timeout, wrong used id, status not written), after printing why. */
static int blk_request(uint32_t type, uint64_t sector, void *buf, uint32_t len) {
    hdr.type = type;
    hdr.reserved = 0;
    hdr.sector = sector;
    status_byte = STATUS_UNSET;
    int dev_writes = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;

    q.desc[0].addr = (uint64_t)(uintptr_t)&hdr;
    q.desc[0].len = sizeof hdr;
    q.desc[0].flags = VIRTQ_DESC_F_NEXT;
    q.desc[0].next = len ? 1 : 2;
    q.desc[1].addr = (uint64_t)(uintptr_t)buf;
    q.desc[1].len = len;
    q.desc[1].flags = VIRTQ_DESC_F_NEXT | (dev_writes ? VIRTQ_DESC_F_WRITE : 0);
    q.desc[1].next = 2;
    q.desc[2].addr = (uint64_t)(uintptr_t)&status_byte;
    q.desc[2].len = 1;
    q.desc[2].flags = VIRTQ_DESC_F_WRITE;
    q.desc[2].next = 0;
    vdev_submit(&dev, &q, 0);

    uint32_t id, ulen;
    if (!vdev_poll_used(&dev, &q, timeout, &id, &ulen)) {
        rt_printf("blk: request type %u sector %lu timed out after %lu cycles (used.idx %u, status 0x%x)\n",
                  type, sector, timeout, q.used->idx, vdev_status(&dev));
        return -1;
    }
    if (id != 0) {
        rt_printf("blk: request type %u sector %lu: used id %u, expected 0\n", type, sector, id);
        return -1;
    }
    uint8_t st = status_byte;
    if (st == STATUS_UNSET) {
        rt_printf("blk: request type %u sector %lu: device did not write the status byte\n", type, sector);
        return -1;
    }
    /* The used length should count the bytes written into device-writable buffers: data +
     * status for IN/GET_ID (GET_ID may write fewer than 20), 1 for OUT/FLUSH. Not fatal. */
    uint32_t want = dev_writes ? len + 1 : 1;
    if (st == VIRTIO_BLK_S_OK && ulen != want && !(type == VIRTIO_BLK_T_GET_ID && ulen <= want) &&
        used_len_notes++ == 0)
        rt_printf("blk: note: request type %u: used len %u, expected %u (not checked further)\n",
                  type, ulen, want);
    return st;
}

/* Runs a request that must succeed; prints and returns -1 otherwise. */
static int blk_ok(uint32_t type, uint64_t sector, void *buf, uint32_t len) {
    int st = blk_request(type, sector, buf, len);
    if (st == VIRTIO_BLK_S_OK) return 0;
    if (st > 0)
        rt_printf("blk: request type %u sector %lu len %u failed with status %d (%s)\n", type, sector, len, st,
                  st == VIRTIO_BLK_S_IOERR ? "IOERR" : st == VIRTIO_BLK_S_UNSUPP ? "UNSUPP" : "unknown");
    return -1;
}

/* Request r of the test set: returns its first sector and sector count. */
static void test_region(unsigned r, uint64_t *sector, unsigned *nsect) {
    if (r < SPREAD_REQS) {
        /* 4 KiB at 8-aligned positions from 0 to the last full 8 sectors. */
        uint64_t last = (capacity - REQ4K_SECTORS) & ~(uint64_t)(REQ4K_SECTORS - 1);
        uint64_t s = r == SPREAD_REQS - 1 ? capacity - REQ4K_SECTORS
                                          : (last / (SPREAD_REQS - 1) * r) & ~(uint64_t)(REQ4K_SECTORS - 1);
        *sector = s;
        *nsect = REQ4K_SECTORS;
    } else {
        /* Single sectors at odd positions spread over the disk, ending with the last one. */
        unsigned k = r - SPREAD_REQS;
        *sector = k == SINGLE_REQS - 1 ? capacity - 1 : ((capacity / SINGLE_REQS) * k + 3) | 1;
        *nsect = 1;
    }
}

static int write_and_verify(int write) {
    uint64_t total = 0;
    if (write)
        for (unsigned r = 0; r < SPREAD_REQS + SINGLE_REQS; r++) {
            uint64_t s;
            unsigned n;
            test_region(r, &s, &n);
            fill_pattern_into(data, s, n);
            if (blk_ok(VIRTIO_BLK_T_OUT, s, data, n * SECTOR)) return -1;
        }
    for (unsigned r = 0; r < SPREAD_REQS + SINGLE_REQS; r++) {
        uint64_t s;
        unsigned n;
        test_region(r, &s, &n);
        memset(data, 0xEE, n * SECTOR);
        if (blk_ok(VIRTIO_BLK_T_IN, s, data, n * SECTOR)) return -1;
        if (check_pattern(s, n)) return -1;
        total += n;
    }
    return (int)total;
}

/* GET_ID into `id` (printable characters only, NUL-terminated). Returns the status. */
static int get_id(char id[VIRTIO_BLK_ID_BYTES + 1]) {
    memset(data, 0, VIRTIO_BLK_ID_BYTES);
    int st = blk_request(VIRTIO_BLK_T_GET_ID, 0, data, VIRTIO_BLK_ID_BYTES);
    unsigned n = 0;
    if (st == VIRTIO_BLK_S_OK)
        for (; n < VIRTIO_BLK_ID_BYTES && data[n]; n++) id[n] = (data[n] >= 0x20 && data[n] < 0x7f) ? (char)data[n] : '?';
    id[n] = 0;
    return st;
}

/* ---- bench ---- */
/* CPUID as the VMM configured it (rt_cpuid runs it in ring 0, see README). */
static void cpuid0(uint32_t leaf, uint32_t r[4]) { rt_cpuid(leaf, 0, r); }

/* TSC frequency in kHz from the VMM's CPUID (ring 0, see README): leaf 0x15 (crystal * ratio),
 * else 0x16 (base MHz), else the hypervisor timing leaf 0x40000010 (EAX = TSC kHz). 0 = unknown. */
static uint64_t tsc_khz(const char **src) {
    uint32_t r[4];
    cpuid0(0, r);
    uint32_t max = r[0];
    if (max >= 0x15) {
        cpuid0(0x15, r);
        if (r[0] && r[1] && r[2]) { *src = "CPUID 0x15"; return (uint64_t)r[2] * r[1] / r[0] / 1000; }
    }
    if (max >= 0x16) {
        cpuid0(0x16, r);
        if (r[0] & 0xffff) { *src = "CPUID 0x16"; return (uint64_t)(r[0] & 0xffff) * 1000; }
    }
    cpuid0(1, r);
    if (r[2] & (1u << 31)) {                            /* hypervisor present */
        cpuid0(0x40000000, r);
        if (r[0] >= 0x40000010 && r[0] < 0x50000000) {
            cpuid0(0x40000010, r);
            if (r[0]) { *src = "CPUID 0x40000010"; return r[0]; }
        }
    }
    return 0;
}

static uint64_t rng_state;
static uint64_t xorshift(void) {
    uint64_t x = rng_state;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return rng_state = x;
}

/* Bench requests: up to MAX_QD in flight, request i on descriptors 3i..3i+2 with its own header,
 * status byte and data buffer. */
#define MAX_QD 16
static uint8_t bench_data[MAX_QD][SEQ_BYTES] __attribute__((aligned(4096)));
static struct blk_req_hdr bench_hdr[MAX_QD] __attribute__((aligned(16)));
static volatile uint8_t bench_status[MAX_QD];

/* Fills request slot `i` and publishes it in the available ring (no notification). */
static void bench_post(unsigned i, uint32_t type, uint64_t sector, uint32_t len) {
    unsigned d = 3 * i;
    bench_hdr[i].type = type;
    bench_hdr[i].reserved = 0;
    bench_hdr[i].sector = sector;
    bench_status[i] = STATUS_UNSET;
    q.desc[d].addr = (uint64_t)(uintptr_t)&bench_hdr[i];
    q.desc[d].len = sizeof bench_hdr[i];
    q.desc[d].flags = VIRTQ_DESC_F_NEXT;
    q.desc[d].next = (uint16_t)(d + 1);
    q.desc[d + 1].addr = (uint64_t)(uintptr_t)bench_data[i];
    q.desc[d + 1].len = len;
    q.desc[d + 1].flags = VIRTQ_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0);
    q.desc[d + 1].next = (uint16_t)(d + 2);
    q.desc[d + 2].addr = (uint64_t)(uintptr_t)&bench_status[i];
    q.desc[d + 2].len = 1;
    q.desc[d + 2].flags = VIRTQ_DESC_F_WRITE;
    q.desc[d + 2].next = 0;
    vdev_publish(&q, (uint16_t)d);
}

/* Runs one phase for `cycles` TSC cycles with `qd` requests in flight; returns the number of
 * requests completed, or -1. Completions are reaped in batches and answered with one notification. */
static long bench_phase(uint32_t type, int sequential, uint64_t cycles, unsigned qd) {
    uint32_t len = sequential ? SEQ_BYTES : 4096;
    uint64_t nsect = len / SECTOR, slots = capacity / nsect, next = 0;
    long n = 0;
    unsigned in_flight = 0, unnotified = 0;
    uint64_t t0 = rdtsc();
    for (unsigned i = 0; i < qd; i++) {
        uint64_t s = (sequential ? next++ % slots : xorshift() % slots) * nsect;
        if (type == VIRTIO_BLK_T_OUT) fill_pattern_into(bench_data[i], s, (unsigned)nsect);
        bench_post(i, type, s, len);
        in_flight++;
    }
    vdev_notify(&q);
    while (in_flight) {
        uint32_t id, ulen;
        if (!vdev_poll_used(&dev, &q, timeout, &id, &ulen)) {
            rt_printf("blk: bench request timed out after %lu cycles (used.idx %u, avail.idx %u, %u in flight, status 0x%x)\n",
                      timeout, q.used->idx, q.avail_idx, in_flight, vdev_status(&dev));
            return -1;
        }
        unsigned i = id / 3;
        if (id % 3 || i >= qd || bench_status[i] != VIRTIO_BLK_S_OK) {
            rt_printf("blk: bench request: used id %u, status %u\n", id, i < qd ? bench_status[i] : 0xff);
            return -1;
        }
        in_flight--;
        n++;
        if (rdtsc() - t0 < cycles) {
            uint64_t s = (sequential ? next++ % slots : xorshift() % slots) * nsect;
            if (type == VIRTIO_BLK_T_OUT) fill_pattern_into(bench_data[i], s, (unsigned)nsect);   /* keeps check-pattern valid */
            bench_post(i, type, s, len);
            in_flight++;
            unnotified = 1;
        }
        /* Nothing more to reap (or the phase is over): tell the device about what was posted. */
        if (unnotified && q.used->idx == q.last_used) {
            vdev_notify(&q);
            unnotified = 0;
        }
    }
    return n;
}

static int bench(int ro) {
    const char *src = "tsc-khz=";
    uint64_t khz = cmdline_u64("tsc-khz", 0);
    if (!khz) khz = tsc_khz(&src);
    uint64_t ms = cmdline_u64("ms", 2000);
    if (ms == 0) ms = 1;
    uint64_t cycles = khz ? khz * ms : cmdline_u64("bench-cycles", 4000000000ull);
    if (cycles < 1000) cycles = 1000;
    if (capacity < SEQ_BYTES / SECTOR) { rt_puts("blk: disk too small for bench (< 64 KiB)\n"); return 1; }
    unsigned qd = (unsigned)cmdline_u64("qd", 1);
    unsigned max_qd = q.num / 3 < MAX_QD ? q.num / 3 : MAX_QD;
    if (qd < 1 || qd > max_qd) { rt_printf("blk: qd=%u is out of range; give 1 to %u\n", qd, max_qd); return 1; }
    rng_state = 0x9E3779B97F4A7C15ull ^ seed;
    if (khz) rt_printf("blk-bench: TSC %lu kHz (%s), %lu ms per phase, %u requests in flight\n", khz, src, ms, qd);
    else rt_printf("blk-bench: TSC frequency unknown, %lu cycles per phase, %u requests in flight\n", cycles, qd);

    long rr = bench_phase(VIRTIO_BLK_T_IN, 0, cycles, qd);
    if (rr < 0) return 1;
    long rw = 0;
    if (!ro && (rw = bench_phase(VIRTIO_BLK_T_OUT, 0, cycles, qd)) < 0) return 1;
    long sr = bench_phase(VIRTIO_BLK_T_IN, 1, cycles, qd);
    if (sr < 0) return 1;

    if (khz) {
        /* ops / (cycles / (khz*1000)) = ops * khz * 1000 / cycles; MB = 10^6 bytes. */
        uint64_t secs_x1000 = cycles / khz;                       /* phase length in ms */
        uint64_t iops_r = (uint64_t)rr * 1000 / secs_x1000, iops_w = (uint64_t)rw * 1000 / secs_x1000;
        uint64_t mbs = (uint64_t)sr * SEQ_BYTES / 1000 / secs_x1000;
        if (ro) rt_printf("blk-bench: randread iops=%lu randwrite iops=- seqread MB/s=%lu\n", iops_r, mbs);
        else rt_printf("blk-bench: randread iops=%lu randwrite iops=%lu seqread MB/s=%lu\n", iops_r, iops_w, mbs);
    } else {
        rt_printf("blk-bench: randread cycles/op=%lu randwrite cycles/op=%lu seqread bytes/kcycle=%lu\n",
                  rr ? cycles / (uint64_t)rr : 0, rw ? cycles / (uint64_t)rw : 0,
                  (uint64_t)sr * SEQ_BYTES / (cycles / 1000));
    }
    return 0;
}

int main(void) {
    char mode[32];
    cmdline_str("mode", "test", mode, sizeof mode);
    int m_test = strcmp(mode, "test") == 0, m_check = strcmp(mode, "check-pattern") == 0;
    int m_ro = strcmp(mode, "read-only") == 0, m_bench = strcmp(mode, "bench") == 0;
    if (!m_test && !m_check && !m_ro && !m_bench) {
        rt_printf("blk: unknown mode %s\n", mode);
        return 4;
    }
    seed = cmdline_u64("seed", 1);
    timeout = cmdline_u64("timeout", 10000000000ull);

    struct vdev_probe_stats st;
    if (vdev_find(VIRTIO_ID_BLOCK, 0, &dev, &st) != 0) {
        if (st.legacy)
            rt_printf("blk: note: legacy virtio-blk (%s) not supported\n", st.legacy_name);
        if (st.unusable)
            rt_printf("blk: note: unusable virtio-blk: %s\n", st.unusable_reason);
        rt_puts("blk: no virtio-blk device\n");
        return 3;
    }
    /* VERSION_1 (always) and FLUSH when offered. RO is only read, not negotiated. */
    if (vdev_init(&dev, VIRTIO_BLK_F_FLUSH) || vdev_queue_setup(&dev, &q, 0, ring_mem) ||
        vdev_driver_ok(&dev)) {
        rt_printf("blk: %s (%s, status 0x%x)\n", dev.error, dev.name, vdev_status(&dev));
        return 1;
    }
    capacity = vdev_config_read64(&dev, CFG_CAPACITY);
    int ro = (dev.device_features & VIRTIO_BLK_F_RO) != 0;
    int flush = (dev.driver_features & VIRTIO_BLK_F_FLUSH) != 0;
    rt_printf("blk: %s: %lu sectors, features 0x%lx%s%s, queue size %u\n", dev.name, capacity,
              dev.device_features, ro ? " (read-only)" : "", flush ? " (flush)" : "", q.num);
    int rc = 1;

    if (m_ro) {
        if (!ro) { rt_puts("blk: mode read-only but the device does not offer VIRTIO_BLK_F_RO\n"); goto fail; }
        if (capacity < 1) { rt_puts("blk: empty disk\n"); goto fail; }
        /* Read sector 0, then try to write the same bytes back (harmless if it succeeded). */
        if (blk_ok(VIRTIO_BLK_T_IN, 0, data, SECTOR)) goto fail;
        int s = blk_request(VIRTIO_BLK_T_OUT, 0, data, SECTOR);
        if (s < 0) goto fail;
        if (s != VIRTIO_BLK_S_IOERR) {
            rt_printf("blk: write to a read-only disk returned status %d, expected IOERR (1)\n", s);
            goto fail;
        }
        rt_puts("blk: read-only disk refused the write\n");
        rc = 0;
    } else if (m_bench) {
        rc = bench(ro);
        if (rc) goto fail;
    } else {
        if (capacity < REQ4K_SECTORS) { rt_printf("blk: disk too small (%lu sectors, need 8)\n", capacity); goto fail; }
        if (m_test && ro) { rt_puts("blk: disk is read-only (VIRTIO_BLK_F_RO); use mode=read-only\n"); goto fail; }
        int n = write_and_verify(m_test);
        if (n < 0) goto fail;
        if (m_check) {
            rt_printf("blk: pattern verified on %d sectors\n", n);
        } else {
            if (flush && blk_ok(VIRTIO_BLK_T_FLUSH, 0, 0, 0)) goto fail;
            char id[VIRTIO_BLK_ID_BYTES + 1];
            int s = get_id(id);
            if (s < 0) goto fail;
            if (s != VIRTIO_BLK_S_OK) rt_printf("blk: note: GET_ID returned status %d\n", s);
            rt_printf("blk: wrote and verified %d sectors on a %lu MiB disk (serial \"%s\")\n", n,
                      capacity / 2048, id);
        }
        rc = 0;
    }
    uint32_t s = vdev_status(&dev);
    if (s & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        rt_printf("blk: device status 0x%x after the requests\n", s);
        return 1;
    }
    vdev_reset(&dev);
    return rc;
fail:
    vdev_fail(&dev);
    return 1;
}
