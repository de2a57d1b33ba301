/* console: drives a virtio-console (device ID 3) virtio-mmio device from ring 3 by polling.
 * Written from the VIRTIO 1.2 spec, 5.3. Only VERSION_1 is negotiated (no SIZE, MULTIPORT,
 * EMERG_WRITE), so the device has a single port 0 on receiveq (queue 0) and transmitq
 * (queue 1) and no control queues (5.3.2).
 *
 * Sequence: transmit `console: hello over virtio-console\n` as one chain of two
 * device-readable descriptors, wait for it to be used, print `console: sent` on COM1. Then
 * post 4 device-writable receive buffers of 64 bytes and poll for input:
 *   expect-input=1: wait (at most timeout= TSC cycles in total, default 1e10) for a line
 *                   ending in '\n', transmit `console: got <line>` (again two descriptors:
 *                   the prefix and the line) and print `console: echoed N bytes` (N = line
 *                   length including the '\n').
 *   otherwise:      poll for idle= TSC cycles (default 1e8) and report what arrived, if
 *                   anything (`console: received N bytes without expect-input`); not an error.
 * Exit 0: ok. Exit 1: failure (one line `console: <reason>`). Exit 3: no device. */
#include "rt.h"
#include "virtio.h"

/* ---- virtio-console (5.3) ---- */
#define VIRTIO_CONSOLE_F_SIZE        (1ull << 0)
#define VIRTIO_CONSOLE_F_MULTIPORT   (1ull << 1)
#define VIRTIO_CONSOLE_F_EMERG_WRITE (1ull << 2)

#define RECEIVEQ    0
#define TRANSMITQ   1

#define RX_BUFS     4
#define RX_BYTES    64
#define LINE_MAX    256

static uint8_t rx_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t tx_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t rx_bufs[RX_BUFS][RX_BYTES] __attribute__((aligned(64)));
static char line[LINE_MAX];

static const char hello1[] = "console: hello over ";
static const char hello2[] = "virtio-console\n";
static const char got_prefix[] = "console: got ";

static struct vdev dev;
static struct virtq rxq, txq;
static uint64_t timeout;

/* Sends a + b as one chain of two device-readable descriptors (0 -> 1) and waits for it to
 * be used. Returns 0, or prints why and returns -1. */
static int transmit2(const void *a, uint32_t alen, const void *b, uint32_t blen) {
    txq.desc[0].addr = (uint64_t)(uintptr_t)a;
    txq.desc[0].len = alen;
    txq.desc[0].flags = VIRTQ_DESC_F_NEXT;
    txq.desc[0].next = 1;
    txq.desc[1].addr = (uint64_t)(uintptr_t)b;
    txq.desc[1].len = blen;
    txq.desc[1].flags = 0;
    txq.desc[1].next = 0;
    vdev_submit(&dev, &txq, 0);
    uint32_t id = 0, len = 0;
    if (!vdev_poll_used(&dev, &txq, timeout, &id, &len)) {
        rt_printf("console: transmit of %u bytes not used within %lu cycles (used.idx %u)\n", alen + blen,
                  timeout, txq.used->idx);
        return -1;
    }
    if (id != 0) {
        rt_printf("console: transmitq used id %u, expected 0\n", id);
        return -1;
    }
    /* 5.3.6.2: the device writes nothing into transmit buffers; len is normally 0. Not checked. */
    (void)len;
    return 0;
}

static void post_rx(uint16_t i) {
    rxq.desc[i].addr = (uint64_t)(uintptr_t)rx_bufs[i];
    rxq.desc[i].len = RX_BYTES;
    rxq.desc[i].flags = VIRTQ_DESC_F_WRITE;
    rxq.desc[i].next = 0;
    vdev_submit(&dev, &rxq, i);
}

/* Polls the receiveq for `cycles`. Appends received bytes to line[]; with stop_at_nl, returns
 * as soon as a '\n' has arrived. Returns the number of bytes in line[] (bytes after the first
 * '\n' in the same buffer are dropped when stop_at_nl), or -1 on an error (printed). */
static int receive(uint64_t cycles, int stop_at_nl, int *got_nl) {
    unsigned n = 0;
    *got_nl = 0;
    uint64_t t0 = rdtsc();
    for (;;) {
        uint64_t el = rdtsc() - t0;
        if (el >= cycles) return (int)n;
        uint32_t id = 0, len = 0;
        if (!vdev_poll_used(&dev, &rxq, cycles - el, &id, &len)) return (int)n;
        if (id >= RX_BUFS) {
            rt_printf("console: receiveq used id %u, expected 0..%u\n", id, RX_BUFS - 1);
            return -1;
        }
        if (len > RX_BYTES) {
            rt_printf("console: receiveq used len %u exceeds the %u-byte buffer\n", len, RX_BYTES);
            return -1;
        }
        for (uint32_t k = 0; k < len && !*got_nl; k++) {
            if (n >= LINE_MAX) {
                rt_printf("console: input line longer than %u bytes\n", LINE_MAX);
                return -1;
            }
            char c = (char)rx_bufs[id][k];
            line[n++] = c;
            if (c == '\n' && stop_at_nl) *got_nl = 1;
        }
        post_rx((uint16_t)id);                   /* give the buffer back */
        if (*got_nl) return (int)n;
    }
}

int main(void) {
    timeout = cmdline_u64("timeout", 10000000000ull);
    uint64_t idle = cmdline_u64("idle", 100000000ull);
    int expect_input = cmdline_u64("expect-input", 0) != 0;

    struct vdev_probe_stats st;
    if (vdev_find(VIRTIO_ID_CONSOLE, 0, &dev, &st) != 0) {
        if (st.legacy)
            rt_printf("console: note: legacy virtio-console (%s) not supported\n", st.legacy_name);
        if (st.unusable)
            rt_printf("console: note: unusable virtio-console: %s\n", st.unusable_reason);
        rt_puts("console: no virtio-console device\n");
        return 3;
    }
    /* VERSION_1 only: without MULTIPORT, port 0 uses queues 0/1 and there is no control queue. */
    if (vdev_init(&dev, 0) || vdev_queue_setup(&dev, &rxq, RECEIVEQ, rx_ring) ||
        vdev_queue_setup(&dev, &txq, TRANSMITQ, tx_ring) || vdev_driver_ok(&dev)) {
        rt_printf("console: %s (%s, status 0x%x)\n", dev.error, dev.name, vdev_status(&dev));
        return 1;
    }
    rt_printf("console: %s: features 0x%lx%s, accepted 0x%lx, queue sizes %u/%u\n", dev.name,
              dev.device_features, (dev.device_features & VIRTIO_CONSOLE_F_MULTIPORT) ? " (multiport offered)" : "",
              dev.driver_features, rxq.num, txq.num);

    if (transmit2(hello1, sizeof hello1 - 1, hello2, sizeof hello2 - 1)) goto fail;
    rt_puts("console: sent\n");

    for (uint16_t i = 0; i < RX_BUFS; i++) post_rx(i);
    int nl = 0;
    if (expect_input) {
        int n = receive(timeout, 1, &nl);
        if (n < 0) goto fail;
        if (!nl) {
            rt_printf("console: no complete input line within %lu cycles (%d bytes received)\n", timeout, n);
            goto fail;
        }
        if (transmit2(got_prefix, sizeof got_prefix - 1, line, (uint32_t)n)) goto fail;
        rt_printf("console: echoed %d bytes\n", n);
    } else {
        int n = receive(idle, 0, &nl);
        if (n < 0) goto fail;
        if (n > 0) rt_printf("console: received %d bytes without expect-input\n", n);
    }

    uint32_t s = vdev_status(&dev);
    if (s & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        rt_printf("console: device status 0x%x at the end\n", s);
        return 1;
    }
    vdev_reset(&dev);
    return 0;
fail:
    vdev_fail(&dev);
    return 1;
}
