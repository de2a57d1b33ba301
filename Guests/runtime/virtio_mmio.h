/* Tern test-guest runtime: polling virtio-mmio driver (modern, Version 2 register layout,
 * split virtqueues), written from the VIRTIO 1.2 spec (sections 2, 4.2). Runs in ring 3:
 * all of RAM and the 0xC0000000-0xFFFFFFFF MMIO window are user-mapped and identity-mapped
 * (guest physical == virtual), so ring memory can be handed to the device by its address.
 * No interrupts: completions are found by polling used->idx with an rdtsc-bounded timeout.
 *
 * Discovery: the kernel command line's `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`
 * entries (Linux syntax; QEMU microvm appends them itself). Each base is probed for
 * MagicValue "virt", Version 2 and the wanted DeviceID (0 = empty slot, skipped).
 *
 * Linked from build/libvirtio.a, so guests that do not use it are unchanged. */
#ifndef TERN_GUEST_VIRTIO_MMIO_H
#define TERN_GUEST_VIRTIO_MMIO_H

#include <stdint.h>

/* ---- register offsets (4.2.2, Version 2) ---- */
#define VMMIO_MAGIC_VALUE        0x000   /* 0x74726976 "virt" */
#define VMMIO_VERSION            0x004   /* 2 = modern; 1 = legacy (not supported) */
#define VMMIO_DEVICE_ID          0x008
#define VMMIO_VENDOR_ID          0x00c
#define VMMIO_DEVICE_FEATURES    0x010
#define VMMIO_DEVICE_FEATURES_SEL 0x014
#define VMMIO_DRIVER_FEATURES    0x020
#define VMMIO_DRIVER_FEATURES_SEL 0x024
#define VMMIO_QUEUE_SEL          0x030
#define VMMIO_QUEUE_NUM_MAX      0x034
#define VMMIO_QUEUE_NUM          0x038
#define VMMIO_QUEUE_READY        0x044
#define VMMIO_QUEUE_NOTIFY       0x050
#define VMMIO_INTERRUPT_STATUS   0x060
#define VMMIO_INTERRUPT_ACK      0x064
#define VMMIO_STATUS             0x070
#define VMMIO_QUEUE_DESC_LOW     0x080
#define VMMIO_QUEUE_DESC_HIGH    0x084
#define VMMIO_QUEUE_DRIVER_LOW   0x090   /* available ring */
#define VMMIO_QUEUE_DRIVER_HIGH  0x094
#define VMMIO_QUEUE_DEVICE_LOW   0x0a0   /* used ring */
#define VMMIO_QUEUE_DEVICE_HIGH  0x0a4
#define VMMIO_CONFIG_GENERATION  0x0fc
#define VMMIO_CONFIG             0x100

#define VMMIO_MAGIC              0x74726976u

/* ---- device status bits (2.1) ---- */
#define VIRTIO_STATUS_ACKNOWLEDGE        1
#define VIRTIO_STATUS_DRIVER             2
#define VIRTIO_STATUS_DRIVER_OK          4
#define VIRTIO_STATUS_FEATURES_OK        8
#define VIRTIO_STATUS_DEVICE_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED             0x80

/* ---- feature bits ---- */
#define VIRTIO_F_VERSION_1       (1ull << 32)

/* ---- device IDs (5) ---- */
#define VIRTIO_ID_NET            1
#define VIRTIO_ID_BLOCK          2
#define VIRTIO_ID_CONSOLE        3
#define VIRTIO_ID_ENTROPY        4

/* ---- split virtqueue (2.7) ---- */
#define VIRTQ_DESC_F_NEXT        1
#define VIRTQ_DESC_F_WRITE       2       /* device writes (otherwise device reads) */
#define VIRTQ_DESC_F_INDIRECT    4

struct virtq_desc {                      /* 16 bytes, table aligned to 16 */
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
struct virtq_avail {                     /* aligned to 2 */
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];                     /* then uint16_t used_event */
};
struct virtq_used_elem { uint32_t id, len; };
struct virtq_used {                      /* aligned to 4 */
    uint16_t flags;
    uint16_t idx;
    struct virtq_used_elem ring[];       /* then uint16_t avail_event */
};

/* Largest queue size this library uses (QueueNum = min(QueueNumMax, VMMIO_QUEUE_MAX)). */
#define VMMIO_QUEUE_MAX          16
/* Bytes of ring memory per queue: descriptors (16*16 = 256) at +0, available ring
 * (6 + 2*16 = 38) at +256, used ring (6 + 8*16 = 134) at +296 (4-aligned): 430 bytes.
 * The caller provides this memory, 16-byte aligned (a 4 KiB aligned static buffer is used
 * by the guests); it is zeroed by vmmio_queue_setup. */
#define VMMIO_QUEUE_MEM_SIZE     512

struct vmmio_dev {
    uint64_t base;                       /* physical (= virtual) base of the register block */
    uint64_t size;                       /* from the cmdline entry */
    uint32_t irq;                        /* from the cmdline entry (unused: we poll) */
    uint32_t device_id, vendor_id;
    uint64_t device_features;            /* as offered (feature words 0 and 1) */
    uint64_t driver_features;            /* as accepted */
    const char *error;                   /* reason of the last failure (static string) */
    uint32_t isr_seen;                   /* OR of all InterruptStatus values acked */
};

struct virtq {
    uint16_t index;                      /* queue number on the device */
    uint16_t num;                        /* queue size in use */
    uint16_t avail_idx;                  /* next avail->idx to publish (free-running) */
    uint16_t last_used;                  /* used->idx consumed so far (free-running) */
    volatile struct virtq_desc *desc;
    volatile struct virtq_avail *avail;
    volatile struct virtq_used *used;
};

/* Probe statistics of the last vmmio_find (for diagnostics). */
struct vmmio_probe_stats {
    unsigned entries;                    /* virtio_mmio.device= entries parsed */
    unsigned bad_entries;                /* unparsable or outside the 4 GiB identity map */
    unsigned no_magic;                   /* MagicValue mismatch */
    unsigned legacy;                     /* Version != 2 (legacy 1 or unknown) */
    unsigned empty;                      /* DeviceID 0 */
    unsigned other;                      /* modern, other DeviceID */
    uint64_t legacy_base;                /* base of the last legacy slot with the wanted ID, or 0 */
};

/* Register access (32-bit, volatile, uncached window). */
static inline uint32_t vmmio_read(const struct vmmio_dev *d, uint32_t off) {
    return *(volatile uint32_t *)(uintptr_t)(d->base + off);
}
static inline void vmmio_write(const struct vmmio_dev *d, uint32_t off, uint32_t v) {
    *(volatile uint32_t *)(uintptr_t)(d->base + off) = v;
}
static inline uint32_t vmmio_status(const struct vmmio_dev *d) { return vmmio_read(d, VMMIO_STATUS); }

/* Finds the `nth` (0-based) modern virtio-mmio device with `device_id` among the cmdline's
 * virtio_mmio.device= entries. Returns 0 and fills *d (base, size, irq, ids), or -1.
 * `stats` may be NULL. Reads only the identification registers; no state is changed. */
int vmmio_find(uint32_t device_id, unsigned nth, struct vmmio_dev *d, struct vmmio_probe_stats *stats);

/* Parses one `<size>@<base>:<irq>[:<id>]` value (size: decimal or 0x hex, optional K/M/G
 * suffix; base: 0x hex or decimal; irq decimal). Returns 0 on success. */
int vmmio_parse_entry(const char *s, unsigned len, uint64_t *size, uint64_t *base, uint32_t *irq);

/* Reset, ACKNOWLEDGE, DRIVER, read DeviceFeatures (words 0, 1), accept
 * (offered & wanted) which must include VIRTIO_F_VERSION_1, write DriverFeatures,
 * FEATURES_OK, re-read and check FEATURES_OK. On failure sets FAILED, d->error, returns -1. */
int vmmio_init(struct vmmio_dev *d, uint64_t wanted_features);

/* Sets up queue `index`: QueueSel, check QueueReady == 0, QueueNumMax (0 = absent),
 * QueueNum = min(max, VMMIO_QUEUE_MAX) rounded down to a power of 2, rings in `mem`
 * (VMMIO_QUEUE_MEM_SIZE bytes, 16-byte aligned, zeroed here), addresses, QueueReady = 1.
 * Returns 0 or -1 (d->error). Call between vmmio_init and vmmio_driver_ok. */
int vmmio_queue_setup(struct vmmio_dev *d, struct virtq *q, unsigned index, void *mem);

/* Sets DRIVER_OK and checks that the device did not report DEVICE_NEEDS_RESET/FAILED. */
int vmmio_driver_ok(struct vmmio_dev *d);

/* Marks the device FAILED (driver gives up) / resets it (Status = 0, waits for 0). */
void vmmio_fail(struct vmmio_dev *d);
void vmmio_reset(struct vmmio_dev *d);

/* Publishes descriptor chain head `head` in the available ring (the caller filled
 * q->desc[]), with the barriers the spec asks for, then writes QueueNotify. */
void vmmio_submit(struct vmmio_dev *d, struct virtq *q, uint16_t head);

/* Polls used->idx until a new used element arrives or `timeout_cycles` TSC cycles pass.
 * Returns 1 and fills *id and *len (either may be NULL), or 0 on timeout. Reads and acks
 * InterruptStatus whenever it is non-zero. */
int vmmio_poll_used(struct vmmio_dev *d, struct virtq *q, uint64_t timeout_cycles, uint32_t *id, uint32_t *len);

/* Acks whatever InterruptStatus reports; returns the value read. */
uint32_t vmmio_ack_interrupts(struct vmmio_dev *d);

#endif
