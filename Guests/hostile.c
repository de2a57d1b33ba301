/* hostile: feeds malformed virtqueues to every VirtIO device it finds, one attack at a time,
 * and checks after each that the attacked device reports DEVICE_NEEDS_RESET, that every other
 * device still serves a well-formed request, and that the attacked device works again after a
 * reset. Runs on whichever transport the devices sit on (virtio-pci or virtio-mmio).
 *
 * Devices: virtio-rng and virtio-blk (required), virtio-console, virtio-net and virtio-vsock
 * (when present). The attacked queue is the request queue of rng and blk and the transmit
 * queue of the others; a well-formed request is a 64-byte entropy read, a one-sector read, a
 * two-byte console write, a 60-byte frame (broadcast, EtherType 0x88b5, the local experimental
 * one) and a vsock RST for a connection that does not exist.
 *
 * Attacks (VIRTIO 1.2 2.7 rules a device must enforce):
 *   loop             a descriptor whose next points at itself
 *   out-of-ram       a buffer address far beyond guest RAM
 *   oversized        a buffer length that runs past the end of RAM
 *   bad-head         an available-ring entry naming a descriptor beyond the queue size
 *   bad-next         a chain whose next index is beyond the queue size
 *   avail-jump       avail->idx moved by more than the queue size
 *   wrong-direction  a buffer in the direction the device does not expect (blk: a device-writable
 *                    request header; transmit queues: a device-writable buffer; rng: a
 *                    device-readable one)
 *
 * Cmdline: only=<attack> runs one attack; timeout=<TSC cycles> bounds each wait (default 1e10).
 * Exit 0: every attack handled. Exit 1: a device misbehaved (one line `hostile: <reason>`).
 * Exit 3: rng or blk is missing. */
#include "rt.h"
#include "virtio.h"

#define BAD_ADDR    0xFFFFF00000000000ull   /* far beyond any guest RAM */
#define MAX_QUEUES  3
#define SECTOR      512

struct blk_req_hdr { uint32_t type, reserved; uint64_t sector; };

struct target {
    const char *name;
    uint32_t id;
    unsigned queues;                      /* queues to set up */
    unsigned attacked;                    /* the queue attacks and requests go to */
    int present;
    struct vdev dev;
    struct virtq q[MAX_QUEUES];
};

static struct target targets[] = {
    { "virtio-rng", VIRTIO_ID_ENTROPY, 1, 0, 0, {0}, {{0}} },
    { "virtio-blk", VIRTIO_ID_BLOCK, 1, 0, 0, {0}, {{0}} },
    { "virtio-console", VIRTIO_ID_CONSOLE, 2, 1, 0, {0}, {{0}} },
    { "virtio-net", VIRTIO_ID_NET, 2, 1, 0, {0}, {{0}} },
    { "virtio-vsock", VIRTIO_ID_VSOCK, 3, 1, 0, {0}, {{0}} },
};
#define TARGETS (sizeof targets / sizeof targets[0])
enum { RNG, BLK, CONSOLE, NET, VSOCK };

static uint8_t rings[TARGETS][MAX_QUEUES][VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t buffer[SECTOR] __attribute__((aligned(512)));
static struct blk_req_hdr hdr __attribute__((aligned(16)));
static volatile uint8_t status_byte;
static uint64_t timeout;

static void put_le(uint8_t *p, uint64_t v, unsigned n) { for (unsigned i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i)); }

static int start(struct target *t) {
    if (vdev_init(&t->dev, 0)) goto fail;
    for (unsigned i = 0; i < t->queues; i++)
        if (vdev_queue_setup(&t->dev, &t->q[i], i, rings[t - targets][i])) goto fail;
    if (vdev_driver_ok(&t->dev)) goto fail;
    return 0;
fail:
    rt_printf("hostile: %s (%s): %s\n", t->name, t->dev.name, t->dev.error);
    return -1;
}

/* Fills descriptors 0.. of the attacked queue for a well-formed request; returns the chain
 * head and, in *data, the index of the descriptor that carries the request's buffer. */
static uint16_t good_chain(struct target *t, unsigned *data) {
    volatile struct virtq_desc *d = t->q[t->attacked].desc;
    unsigned kind = (unsigned)(t - targets);
    *data = 0;
    d[0].addr = (uint64_t)(uintptr_t)buffer;
    d[0].flags = 0;
    d[0].next = 0;
    switch (kind) {
    case RNG:
        d[0].len = 64;
        d[0].flags = VIRTQ_DESC_F_WRITE;
        break;
    case BLK:
        hdr.type = 0;                     /* VIRTIO_BLK_T_IN, sector 0 */
        hdr.reserved = 0;
        hdr.sector = 0;
        status_byte = 0xff;
        d[0].addr = (uint64_t)(uintptr_t)&hdr;
        d[0].len = sizeof hdr;
        d[0].flags = VIRTQ_DESC_F_NEXT;
        d[0].next = 1;
        d[1].addr = (uint64_t)(uintptr_t)buffer;
        d[1].len = SECTOR;
        d[1].flags = VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE;
        d[1].next = 2;
        d[2].addr = (uint64_t)(uintptr_t)&status_byte;
        d[2].len = 1;
        d[2].flags = VIRTQ_DESC_F_WRITE;
        d[2].next = 0;
        *data = 1;
        break;
    case CONSOLE:
        buffer[0] = '.';
        buffer[1] = '\n';
        d[0].len = 2;
        break;
    case NET:
        memset(buffer, 0, 12 + 60);                          /* virtio-net header, then the frame */
        memset(buffer + 12, 0xff, 6);                        /* broadcast */
        put_le(buffer + 12 + 6, 0x0000005452ull, 6);         /* 52:54:00:00:00:00, unicast */
        buffer[12 + 12] = 0x88;                              /* EtherType 0x88b5 */
        buffer[12 + 13] = 0xb5;
        d[0].len = 12 + 60;
        break;
    default: {                                               /* VSOCK: an RST nobody expects */
        uint64_t cid = vdev_config_read64(&t->dev, 0);
        memset(buffer, 0, 44);
        put_le(buffer + 0, cid, 8);                          /* src_cid */
        put_le(buffer + 8, 2, 8);                            /* dst_cid: the host */
        put_le(buffer + 16, 40000, 4);                       /* src_port */
        put_le(buffer + 20, 40001, 4);                       /* dst_port */
        put_le(buffer + 28, 1, 2);                           /* type: stream */
        put_le(buffer + 30, 3, 2);                           /* op: RST */
        d[0].len = 44;
        break;
    }
    }
    return 0;
}

/* One well-formed request on t's attacked queue, which must complete. */
static int serve_check(struct target *t, const char *when) {
    unsigned data;
    struct virtq *q = &t->q[t->attacked];
    vdev_submit(&t->dev, q, good_chain(t, &data));
    uint32_t id, len;
    if (!vdev_poll_used(&t->dev, q, timeout, &id, &len)) {
        rt_printf("hostile: %s %s: request timed out (status 0x%x)\n", t->name, when, vdev_status(&t->dev));
        return -1;
    }
    if (t == &targets[BLK] && status_byte != 0) {
        rt_printf("hostile: %s %s: request status %u\n", t->name, when, status_byte);
        return -1;
    }
    return 0;
}

/* Posts the malformed request `attack` on t's attacked queue. Returns -1 for an unknown attack. */
static int post_attack(struct target *t, const char *attack) {
    struct virtq *q = &t->q[t->attacked];
    volatile struct virtq_desc *d = q->desc;
    unsigned data;
    uint16_t head = good_chain(t, &data);
    if (!strcmp(attack, "loop")) {
        d[0].flags |= VIRTQ_DESC_F_NEXT;
        d[0].next = 0;
    } else if (!strcmp(attack, "out-of-ram")) {
        d[data].addr = BAD_ADDR;
    } else if (!strcmp(attack, "oversized")) {
        d[data].len = 0xfffff000u;
    } else if (!strcmp(attack, "bad-head")) {
        head = (uint16_t)(q->num + 5);
    } else if (!strcmp(attack, "bad-next")) {
        d[0].flags |= VIRTQ_DESC_F_NEXT;
        d[0].next = (uint16_t)(q->num + 7);
    } else if (!strcmp(attack, "avail-jump")) {
        vdev_publish(q, head);
        q->avail_idx = (uint16_t)(q->avail_idx + q->num + 1);
        q->avail->idx = q->avail_idx;
        vdev_notify(q);
        return 0;
    } else if (!strcmp(attack, "wrong-direction")) {
        d[0].flags ^= VIRTQ_DESC_F_WRITE;
    } else {
        return -1;
    }
    vdev_submit(&t->dev, q, head);
    return 0;
}

static int attack(struct target *t, const char *name) {
    if (post_attack(t, name)) {
        rt_printf("hostile: unknown attack %s\n", name);
        return -1;
    }
    uint64_t t0 = rdtsc();
    while (!(vdev_status(&t->dev) & VIRTIO_STATUS_DEVICE_NEEDS_RESET) && rdtsc() - t0 < timeout) cpu_relax();
    uint8_t status = vdev_status(&t->dev);
    if (!(status & VIRTIO_STATUS_DEVICE_NEEDS_RESET)) {
        rt_printf("hostile: %s %s: no DEVICE_NEEDS_RESET (status 0x%x, used.idx %u)\n", t->name, name, status,
                  t->q[t->attacked].used->idx);
        return -1;
    }
    unsigned others = 0;
    for (unsigned i = 0; i < TARGETS; i++) {
        if (!targets[i].present || &targets[i] == t) continue;
        if (serve_check(&targets[i], "while another device is broken")) return -1;
        others++;
    }
    vdev_reset(&t->dev);
    if (start(t) || serve_check(t, "after its reset")) return -1;
    rt_printf("hostile: %s %s: DEVICE_NEEDS_RESET (status 0x%x); %u other device(s) kept working; recovered after reset\n",
              t->name, name, status, others);
    return 0;
}

int main(void) {
    static const char *const attacks[] = {
        "loop", "out-of-ram", "oversized", "bad-head", "bad-next", "avail-jump", "wrong-direction",
    };
    char only[32];
    cmdline_str("only", "", only, sizeof only);
    timeout = cmdline_u64("timeout", 10000000000ull);
    unsigned devices = 0;
    for (unsigned i = 0; i < TARGETS; i++) {
        targets[i].present = vdev_find(targets[i].id, 0, &targets[i].dev, 0) == 0;
        if (!targets[i].present) continue;
        if (start(&targets[i])) return 1;
        devices++;
    }
    if (!targets[RNG].present || !targets[BLK].present) {
        rt_puts("hostile: needs a virtio-rng and a virtio-blk device\n");
        return 3;
    }
    unsigned survived = 0;
    for (unsigned i = 0; i < TARGETS; i++) {
        if (!targets[i].present) continue;
        for (unsigned a = 0; a < sizeof attacks / sizeof attacks[0]; a++) {
            if (only[0] && strcmp(only, attacks[a])) continue;
            if (attack(&targets[i], attacks[a])) return 1;
            survived++;
        }
    }
    if (!survived) {
        rt_printf("hostile: unknown attack %s\n", only);
        return 4;
    }
    rt_printf("hostile: %u attacks on %u devices, each device reset itself and the others kept working\n", survived,
              devices);
    return 0;
}
