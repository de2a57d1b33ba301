/* hostile: feeds malformed virtqueues to a virtio-rng and a virtio-blk device, one attack at a
 * time, and checks after each that the attacked device reports DEVICE_NEEDS_RESET, that the
 * other device still serves requests, and that the attacked device works again after a reset.
 * Runs on whichever transport the devices sit on (virtio-pci or virtio-mmio).
 *
 * Attacks (VIRTIO 1.2 2.7 rules a device must enforce):
 *   loop             a descriptor whose next points at itself
 *   out-of-ram       a buffer address far beyond guest RAM
 *   oversized        a buffer length that runs past the end of RAM
 *   bad-head         an available-ring entry naming a descriptor beyond the queue size
 *   bad-next         a chain whose next index is beyond the queue size
 *   avail-jump       avail->idx moved by more than the queue size
 *   wrong-direction  rng: a device-readable buffer; blk: a device-writable request header
 *
 * Cmdline: only=<attack> runs one attack; timeout=<TSC cycles> bounds each wait (default 1e10).
 * Exit 0: every attack handled. Exit 1: a device misbehaved (one line `hostile: <reason>`).
 * Exit 3: a device is missing. */
#include "rt.h"
#include "virtio.h"

#define BAD_ADDR    0xFFFFF00000000000ull   /* far beyond any guest RAM */
#define RNG_BYTES   64
#define SECTOR      512

struct blk_req_hdr { uint32_t type, reserved; uint64_t sector; };

struct target {
    const char *name;
    uint32_t id;
    struct vdev dev;
    struct virtq q;
    uint8_t *ring;
};

static uint8_t rng_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t blk_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t buffer[SECTOR] __attribute__((aligned(512)));
static struct blk_req_hdr hdr __attribute__((aligned(16)));
static volatile uint8_t status_byte;
static uint64_t timeout;

static struct target rng = { "virtio-rng", VIRTIO_ID_ENTROPY, {0}, {0}, rng_ring };
static struct target blk = { "virtio-blk", VIRTIO_ID_BLOCK, {0}, {0}, blk_ring };

static int start(struct target *t) {
    if (vdev_init(&t->dev, 0) || vdev_queue_setup(&t->dev, &t->q, 0, t->ring) || vdev_driver_ok(&t->dev)) {
        rt_printf("hostile: %s (%s): %s\n", t->name, t->dev.name, t->dev.error);
        return -1;
    }
    return 0;
}

/* Fills descriptors 0.. for a well-formed request on `t`; returns the chain head. */
static uint16_t good_chain(struct target *t) {
    volatile struct virtq_desc *d = t->q.desc;
    if (t == &rng) {
        d[0].addr = (uint64_t)(uintptr_t)buffer;
        d[0].len = RNG_BYTES;
        d[0].flags = VIRTQ_DESC_F_WRITE;
        d[0].next = 0;
        return 0;
    }
    hdr.type = 0;                         /* VIRTIO_BLK_T_IN, sector 0 */
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
    return 0;
}

/* One well-formed request, which must complete. */
static int serve_check(struct target *t, const char *when) {
    vdev_submit(&t->dev, &t->q, good_chain(t));
    uint32_t id, len;
    if (!vdev_poll_used(&t->dev, &t->q, timeout, &id, &len)) {
        rt_printf("hostile: %s %s: request timed out (status 0x%x)\n", t->name, when, vdev_status(&t->dev));
        return -1;
    }
    if (t == &blk && status_byte != 0) {
        rt_printf("hostile: %s %s: request status %u\n", t->name, when, status_byte);
        return -1;
    }
    return 0;
}

/* Posts the malformed request `attack` on t's queue. Returns -1 for an unknown attack. */
static int post_attack(struct target *t, const char *attack) {
    volatile struct virtq_desc *d = t->q.desc;
    uint16_t head = good_chain(t);
    if (!strcmp(attack, "loop")) {
        d[0].flags |= VIRTQ_DESC_F_NEXT;
        d[0].next = 0;
    } else if (!strcmp(attack, "out-of-ram")) {
        d[t == &rng ? 0 : 1].addr = BAD_ADDR;
    } else if (!strcmp(attack, "oversized")) {
        d[t == &rng ? 0 : 1].len = 0xfffff000u;
    } else if (!strcmp(attack, "bad-head")) {
        head = (uint16_t)(t->q.num + 5);
    } else if (!strcmp(attack, "bad-next")) {
        d[0].flags |= VIRTQ_DESC_F_NEXT;
        d[0].next = (uint16_t)(t->q.num + 7);
    } else if (!strcmp(attack, "avail-jump")) {
        vdev_publish(&t->q, head);
        t->q.avail_idx = (uint16_t)(t->q.avail_idx + t->q.num + 1);
        t->q.avail->idx = t->q.avail_idx;
        vdev_notify(&t->q);
        return 0;
    } else if (!strcmp(attack, "wrong-direction")) {
        d[0].flags ^= VIRTQ_DESC_F_WRITE;
    } else {
        return -1;
    }
    vdev_submit(&t->dev, &t->q, head);
    return 0;
}

static int attack(struct target *t, struct target *other, const char *name) {
    if (post_attack(t, name)) {
        rt_printf("hostile: unknown attack %s\n", name);
        return -1;
    }
    uint64_t t0 = rdtsc();
    while (!(vdev_status(&t->dev) & VIRTIO_STATUS_DEVICE_NEEDS_RESET) && rdtsc() - t0 < timeout) cpu_relax();
    uint8_t status = vdev_status(&t->dev);
    if (!(status & VIRTIO_STATUS_DEVICE_NEEDS_RESET)) {
        rt_printf("hostile: %s %s: no DEVICE_NEEDS_RESET (status 0x%x, used.idx %u)\n", t->name, name, status,
                  t->q.used->idx);
        return -1;
    }
    if (serve_check(other, "while the other device is broken")) return -1;
    vdev_reset(&t->dev);
    if (start(t) || serve_check(t, "after its reset")) return -1;
    rt_printf("hostile: %s %s: DEVICE_NEEDS_RESET (status 0x%x); %s kept working; recovered after reset\n",
              t->name, name, status, other->name);
    return 0;
}

int main(void) {
    static const char *const attacks[] = {
        "loop", "out-of-ram", "oversized", "bad-head", "bad-next", "avail-jump", "wrong-direction",
    };
    char only[32];
    cmdline_str("only", "", only, sizeof only);
    timeout = cmdline_u64("timeout", 10000000000ull);
    if (vdev_find(rng.id, 0, &rng.dev, 0) || vdev_find(blk.id, 0, &blk.dev, 0)) {
        rt_puts("hostile: needs a virtio-rng and a virtio-blk device\n");
        return 3;
    }
    if (start(&rng) || start(&blk)) return 1;
    unsigned survived = 0;
    struct target *targets[2] = { &rng, &blk };
    for (unsigned i = 0; i < 2; i++)
        for (unsigned a = 0; a < sizeof attacks / sizeof attacks[0]; a++) {
            if (only[0] && strcmp(only, attacks[a])) continue;
            if (attack(targets[i], targets[1 - i], attacks[a])) return 1;
            survived++;
        }
    if (!survived) {
        rt_printf("hostile: unknown attack %s\n", only);
        return 4;
    }
    rt_printf("hostile: %u attacks, each device reset itself and the other kept working (%s, %s)\n", survived,
              rng.dev.name, blk.dev.name);
    return 0;
}
