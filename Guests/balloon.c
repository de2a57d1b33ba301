/* balloon: drives a virtio-balloon (device ID 5) device from ring 3 by polling, over virtio-pci
 * or virtio-mmio. Written from the VIRTIO 1.2 spec, 5.5: queues 0 (inflateq), 1 (deflateq) and,
 * with STATS_VQ, 2 (statsq); page frame numbers are le32 in 4 KiB pages.
 *
 * Sequence: send a statistics buffer (total and free memory, le16 tag + le64 value entries) when
 * STATS_VQ is offered; read num_pages (the host's target) and take that many pages from RAM
 * above the image (at most what fits below 4 GiB): write a pattern into each, inflate them in
 * lists of LIST_PFNS, write `actual`, and check that pages sampled across the balloon read back
 * as zeros (the host discarded them); print
 *     balloon: inflated N pages (M MiB); sampled pages read back as zeros
 * Then deflate the first half, write `actual` again, check that a deflated page is usable, and
 * print `balloon: deflated K pages, actual now A`.
 * Cmdline: timeout=<TSC cycles per request> (default 2e9).
 * Exit 0: ok (also when num_pages is 0). Exit 1: failure (one line `balloon: <reason>`).
 * Exit 3: no device. */
#include "rt.h"
#include "virtio.h"

/* ---- virtio-balloon (5.5) ---- */
#define VIRTIO_BALLOON_F_STATS_VQ       (1ull << 1)
#define VIRTIO_BALLOON_F_DEFLATE_ON_OOM (1ull << 2)

#define INFLATEQ     0
#define DEFLATEQ     1
#define STATSQ       2

#define CFG_NUM_PAGES  0
#define CFG_ACTUAL     4

#define TAG_MEMFREE    4
#define TAG_MEMTOT     5

#define PAGE           ((uint64_t)4096)
#define LIST_PFNS      256                     /* what Linux sends per list */
#define MIB            ((uint64_t)1 << 20)
#define MIN_START      (4 * MIB)
#define MAPPED_LIMIT   ((uint64_t)1 << 32)
#define SAMPLES        8

struct stat_entry {                            /* 5.5.6.3: le16 tag, le64 val, packed */
    uint16_t tag;
    uint64_t val;
} __attribute__((packed));

static uint8_t inflate_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t deflate_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t stats_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint32_t pfns[LIST_PFNS] __attribute__((aligned(64)));
static struct stat_entry stats[2];

static struct vdev dev;
static struct virtq inflateq, deflateq, statsq;
static uint64_t timeout;

/* First address of `bytes` of RAM above the image and below 4 GiB, or 0. */
static uint64_t find_range(uint64_t bytes, uint64_t *total) {
    uint64_t lo = ((uint64_t)(uintptr_t)_end + MIB - 1) & ~(MIB - 1), found = 0;
    if (lo < MIN_START) lo = MIN_START;
    *total = 0;
    for (unsigned i = 0; i < rt_memmap_count(); i++) {
        const struct rt_memmap_entry *e = &rt_memmap()[i];
        if (e->type != RT_MEMMAP_RAM) continue;
        *total += e->size;
        uint64_t start = (e->addr + PAGE - 1) & ~(PAGE - 1), end = e->addr + e->size;
        if (start < lo) start = lo;
        if (end > MAPPED_LIMIT) end = MAPPED_LIMIT;
        if (!found && start < end && end - start >= bytes) found = start;
    }
    return found;
}

/* Sends `count` frame numbers from `first` (consecutive pages) on q and waits for them to be used. */
static int send_pfns(struct virtq *q, uint64_t first, uint32_t count, const char *what) {
    for (uint32_t k = 0; k < count; k++) pfns[k] = (uint32_t)(first / PAGE + k);
    q->desc[0].addr = (uint64_t)(uintptr_t)pfns;
    q->desc[0].len = count * 4;
    q->desc[0].flags = 0;
    q->desc[0].next = 0;
    vdev_submit(&dev, q, 0);
    if (!vdev_poll_used(&dev, q, timeout, 0, 0)) {
        rt_printf("balloon: %s list of %u pages not used within %lu cycles (status 0x%x)\n", what, count, timeout,
                  vdev_status(&dev));
        return -1;
    }
    return 0;
}

/* Moves `pages` pages from `base` through q in lists of LIST_PFNS. */
static int send_range(struct virtq *q, uint64_t base, uint64_t pages, const char *what) {
    for (uint64_t done = 0; done < pages;) {
        uint32_t count = pages - done > LIST_PFNS ? LIST_PFNS : (uint32_t)(pages - done);
        if (send_pfns(q, base + done * PAGE, count, what)) return -1;
        done += count;
    }
    return 0;
}

static int page_is_zero(uint64_t address) {
    const volatile uint64_t *p = (const volatile uint64_t *)(uintptr_t)address;
    for (unsigned k = 0; k < PAGE / 8; k++)
        if (p[k]) return 0;
    return 1;
}

int main(void) {
    timeout = cmdline_u64("timeout", 2000000000ull);
    struct vdev_probe_stats st;
    if (vdev_find(VIRTIO_ID_BALLOON, 0, &dev, &st) != 0) {
        if (st.legacy) rt_printf("balloon: note: legacy virtio-balloon (%s) not supported\n", st.legacy_name);
        if (st.unusable) rt_printf("balloon: note: unusable virtio-balloon: %s\n", st.unusable_reason);
        rt_puts("balloon: no virtio-balloon device\n");
        return 3;
    }
    if (vdev_init(&dev, VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_DEFLATE_ON_OOM) ||
        vdev_queue_setup(&dev, &inflateq, INFLATEQ, inflate_ring) ||
        vdev_queue_setup(&dev, &deflateq, DEFLATEQ, deflate_ring) ||
        ((dev.driver_features & VIRTIO_BALLOON_F_STATS_VQ) && vdev_queue_setup(&dev, &statsq, STATSQ, stats_ring)) ||
        vdev_driver_ok(&dev)) {
        rt_printf("balloon: %s (%s, status 0x%x)\n", dev.error, dev.name, vdev_status(&dev));
        return 1;
    }
    uint32_t target = vdev_config_read32(&dev, CFG_NUM_PAGES);
    rt_printf("balloon: %s: features 0x%lx, accepted 0x%lx, target %u pages\n", dev.name, dev.device_features,
              dev.driver_features, target);

    uint64_t ram = 0;
    uint64_t base = find_range((uint64_t)target * PAGE, &ram);
    if (dev.driver_features & VIRTIO_BALLOON_F_STATS_VQ) {
        stats[0].tag = TAG_MEMTOT;
        stats[0].val = ram;
        stats[1].tag = TAG_MEMFREE;
        stats[1].val = ram - (uint64_t)target * PAGE;
        statsq.desc[0].addr = (uint64_t)(uintptr_t)stats;
        statsq.desc[0].len = sizeof stats;
        statsq.desc[0].flags = 0;
        statsq.desc[0].next = 0;
        vdev_submit(&dev, &statsq, 0);           /* the device keeps it until it wants new values */
        rt_puts("balloon: statistics sent\n");
    }
    if (target == 0) {
        rt_puts("balloon: target is 0 pages; nothing to inflate\n");
        vdev_reset(&dev);
        return 0;
    }
    if (!base) {
        rt_printf("balloon: %u pages do not fit in RAM above the image\n", target);
        goto fail;
    }

    for (uint64_t page = 0; page < target; page++)
        *(volatile uint64_t *)(uintptr_t)(base + page * PAGE) = 0x5a5a5a5a00000000ull | page;
    if (send_range(&inflateq, base, target, "inflate")) goto fail;
    vdev_config_write32(&dev, CFG_ACTUAL, target);
    for (unsigned k = 0; k < SAMPLES; k++) {
        uint64_t page = (uint64_t)target * k / SAMPLES;
        if (!page_is_zero(base + page * PAGE)) {
            rt_printf("balloon: inflated page %lu at 0x%lx still holds data\n", page, base + page * PAGE);
            goto fail;
        }
    }
    rt_printf("balloon: inflated %u pages (%lu MiB); sampled pages read back as zeros\n", target,
              (uint64_t)target * PAGE / MIB);

    uint32_t half = target / 2;
    if (half && send_range(&deflateq, base, half, "deflate")) goto fail;
    vdev_config_write32(&dev, CFG_ACTUAL, target - half);
    volatile uint64_t *reused = (volatile uint64_t *)(uintptr_t)base;
    *reused = 0x1234;
    if (*reused != 0x1234) {
        rt_puts("balloon: a deflated page does not keep what is written\n");
        goto fail;
    }
    rt_printf("balloon: deflated %u pages, actual now %u\n", half, vdev_config_read32(&dev, CFG_ACTUAL));

    uint32_t s = vdev_status(&dev);
    if (s & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        rt_printf("balloon: device status 0x%x at the end\n", s);
        return 1;
    }
    vdev_reset(&dev);
    return 0;
fail:
    vdev_fail(&dev);
    return 1;
}
