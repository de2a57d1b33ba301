/* rng: drives a virtio-rng (entropy, device ID 4) virtio-mmio device from ring 3 by polling.
 * Four requests of 64 device-writable bytes each; every buffer is pre-filled with a pattern,
 * and the used element must report id 0 and len 64 and the buffer must have changed.
 * Exit 0: ok. Exit 1: failure (one line `rng: <reason>`). Exit 3: no device. Exit 4: bad mode.
 * Cmdline: mode=normal (default) | bad-desc-oob | bad-desc-loop; timeout=<TSC cycles>;
 * bad-addr=<address> (bad-desc-oob only; default 0xFFFFF00000000000).
 * The bad modes post one malformed descriptor, then print what the device did and exit 0. */
#include "rt.h"
#include "virtio.h"

#define REQS       4
#define REQ_BYTES  64
#define PATTERN    0xA5
#define BAD_ADDR   0xFFFFF00000000000ull     /* far beyond any guest RAM */

static uint8_t ring_mem[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t bufs[REQS][REQ_BYTES] __attribute__((aligned(64)));

static int bad_mode(struct vdev *d, struct virtq *q, const char *mode, int loop, uint64_t timeout) {
    uint64_t bad_addr = cmdline_u64("bad-addr", BAD_ADDR);
    for (unsigned i = 0; i < REQ_BYTES; i++) bufs[0][i] = PATTERN;
    if (loop) {
        q->desc[0].addr = (uint64_t)(uintptr_t)bufs[0];
        q->desc[0].len = REQ_BYTES;
        q->desc[0].flags = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT;
        q->desc[0].next = 0;                    /* points at itself */
    } else {
        q->desc[0].addr = bad_addr;
        rt_printf("rng: mode %s: descriptor address 0x%lx len %u\n", mode, bad_addr, REQ_BYTES);
        q->desc[0].len = REQ_BYTES;
        q->desc[0].flags = VIRTQ_DESC_F_WRITE;
        q->desc[0].next = 0;
    }
    vdev_submit(d, q, 0);
    uint32_t id = 0, len = 0;
    uint64_t t0 = rdtsc();
    int got = vdev_poll_used(d, q, timeout, &id, &len);
    uint64_t dt = rdtsc() - t0;
    if (got)
        rt_printf("rng: mode %s: used element id %u len %u after %lu cycles (interrupt status 0x%x)\n",
                  mode, id, len, dt, d->isr_seen);
    else
        rt_printf("rng: mode %s: no used element after %lu cycles (used.idx %u, interrupt status 0x%x)\n",
                  mode, dt, q->used->idx, d->isr_seen);
    rt_printf("rng: device status 0x%x\n", vdev_status(d));
    vdev_reset(d);
    return 0;
}

int main(void) {
    char mode[32];
    cmdline_str("mode", "normal", mode, sizeof mode);
    int oob = strcmp(mode, "bad-desc-oob") == 0, loop = strcmp(mode, "bad-desc-loop") == 0;
    if (!oob && !loop && strcmp(mode, "normal") != 0) {
        rt_printf("rng: unknown mode %s\n", mode);
        return 4;
    }
    uint64_t timeout = cmdline_u64("timeout", (oob || loop) ? 500000000ull : 10000000000ull);

    struct vdev d;
    struct vdev_probe_stats st;
    if (vdev_find(VIRTIO_ID_ENTROPY, 0, &d, &st) != 0) {
        if (st.legacy)
            rt_printf("rng: note: legacy virtio-rng (%s) not supported\n", st.legacy_name);
        if (st.unusable)
            rt_printf("rng: note: unusable virtio-rng: %s\n", st.unusable_reason);
        rt_puts("rng: no virtio-rng device\n");
        return 3;
    }
    struct virtq q;
    if (vdev_init(&d, 0) || vdev_queue_setup(&d, &q, 0, ring_mem) || vdev_driver_ok(&d)) {
        rt_printf("rng: %s (%s, status 0x%x)\n", d.error, d.name, vdev_status(&d));
        return 1;
    }
    if (oob || loop) return bad_mode(&d, &q, mode, loop, timeout);

    for (unsigned r = 0; r < REQS; r++) {
        for (unsigned i = 0; i < REQ_BYTES; i++) bufs[r][i] = PATTERN;
        q.desc[0].addr = (uint64_t)(uintptr_t)bufs[r];
        q.desc[0].len = REQ_BYTES;
        q.desc[0].flags = VIRTQ_DESC_F_WRITE;
        q.desc[0].next = 0;
        vdev_submit(&d, &q, 0);
        uint32_t id, len;
        if (!vdev_poll_used(&d, &q, timeout, &id, &len)) {
            rt_printf("rng: request %u timed out after %lu cycles (used.idx %u, status 0x%x)\n",
                      r, timeout, q.used->idx, vdev_status(&d));
            vdev_fail(&d);
            return 1;
        }
        if (id != 0) { rt_printf("rng: request %u: used id %u, expected 0\n", r, id); vdev_fail(&d); return 1; }
        if (len != REQ_BYTES) {
            rt_printf("rng: request %u: used len %u, expected %u\n", r, len, REQ_BYTES);
            vdev_fail(&d);
            return 1;
        }
        unsigned changed = 0;
        for (unsigned i = 0; i < REQ_BYTES; i++) changed += bufs[r][i] != PATTERN;
        if (!changed) { rt_printf("rng: request %u: buffer unchanged\n", r); vdev_fail(&d); return 1; }
        for (unsigned p = 0; p < r; p++)
            if (memcmp(bufs[p], bufs[r], REQ_BYTES) == 0) {
                rt_printf("rng: requests %u and %u returned identical bytes\n", p, r);
                vdev_fail(&d);
                return 1;
            }
    }
    uint32_t s = vdev_status(&d);
    if (s & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        rt_printf("rng: device status 0x%x after the requests\n", s);
        return 1;
    }
    vdev_reset(&d);
    rt_printf("rng: got %u random bytes from virtio-rng (%s)\n", REQS * REQ_BYTES, d.name);
    return 0;
}
