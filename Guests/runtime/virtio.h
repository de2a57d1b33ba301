/* Tern test-guest runtime: polling VirtIO driver core (modern devices, split virtqueues), written
 * from the VIRTIO 1.2 spec (sections 2, 4.1, 4.2), over either transport:
 *   - virtio-pci (4.1): bus 0 is scanned through the 0xCF8/0xCFC configuration mechanism for
 *     vendor 0x1AF4, device 0x1040 + DeviceID; the common, notify, ISR and device configuration
 *     structures are found through the vendor capabilities, in memory BARs below 4 GiB that the
 *     VMM or firmware assigned. MSI-X stays disabled.
 *   - virtio-mmio version 2 (4.2): the kernel command line's `virtio_mmio.device=<size>@<base>:<irq>`
 *     entries (Linux syntax; QEMU microvm appends them itself).
 * Runs in ring 3: all of RAM and the 0xC0000000-0xFFFFFFFF MMIO window are user-mapped and
 * identity-mapped (guest physical == virtual), so ring memory is handed to the device by its
 * address, and the I/O permission bitmap allows every port. No interrupts: completions are
 * found by polling used->idx with an rdtsc-bounded timeout.
 *
 * Linked from build/libvirtio.a, so guests that do not use it are unchanged. */
#ifndef TERN_GUEST_VIRTIO_H
#define TERN_GUEST_VIRTIO_H

#include <stdint.h>

/* ---- virtio-mmio register offsets (4.2.2, Version 2) ---- */
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

/* ---- virtio-pci common configuration structure (4.1.4.3) ---- */
#define VPCI_DEVICE_FEATURE_SELECT 0x00  /* le32 */
#define VPCI_DEVICE_FEATURE      0x04    /* le32 */
#define VPCI_DRIVER_FEATURE_SELECT 0x08  /* le32 */
#define VPCI_DRIVER_FEATURE      0x0c    /* le32 */
#define VPCI_CONFIG_MSIX_VECTOR  0x10    /* le16 */
#define VPCI_NUM_QUEUES          0x12    /* le16 */
#define VPCI_DEVICE_STATUS       0x14    /* u8 */
#define VPCI_CONFIG_GENERATION   0x15    /* u8 */
#define VPCI_QUEUE_SELECT        0x16    /* le16 */
#define VPCI_QUEUE_SIZE          0x18    /* le16 */
#define VPCI_QUEUE_MSIX_VECTOR   0x1a    /* le16 */
#define VPCI_QUEUE_ENABLE        0x1c    /* le16 */
#define VPCI_QUEUE_NOTIFY_OFF    0x1e    /* le16 */
#define VPCI_QUEUE_DESC          0x20    /* le64 */
#define VPCI_QUEUE_DRIVER        0x28    /* le64 */
#define VPCI_QUEUE_DEVICE        0x30    /* le64 */

#define VIRTIO_PCI_VENDOR        0x1af4
#define VIRTIO_PCI_DEVICE_BASE   0x1040  /* modern device IDs: 0x1040 + DeviceID */

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
#define VIRTIO_ID_BALLOON        5
#define VIRTIO_ID_VSOCK          19

/* ---- split virtqueue (2.7) ---- */
#define VIRTQ_DESC_F_NEXT        1
#define VIRTQ_DESC_F_WRITE       2       /* device writes (otherwise device reads) */
#define VIRTQ_DESC_F_INDIRECT    4
#define VIRTQ_USED_F_NO_NOTIFY   1       /* used->flags: the device asks not to be notified */
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1     /* avail->flags: the driver asks for no used-buffer interrupts */

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

/* Largest queue size this library uses (size = min(device maximum, VIRTQ_MAX), a power of 2). */
#define VIRTQ_MAX                64
/* Bytes of ring memory per queue: descriptors (16*64 = 1024) at +0, available ring
 * (6 + 2*64 = 134) at +1024, used ring (6 + 8*64 = 518) at +1160 (4-aligned): 1678 bytes.
 * The caller provides this memory, 16-byte aligned (the guests use 4 KiB aligned static
 * buffers); vdev_queue_setup zeroes it. */
#define VIRTQ_MEM_SIZE           2048

enum vdev_transport { VDEV_MMIO = 1, VDEV_PCI = 2 };

struct vdev {
    enum vdev_transport transport;
    uint32_t device_id;
    uint64_t device_features;            /* as offered (feature words 0 and 1) */
    uint64_t driver_features;            /* as accepted */
    const char *error;                   /* reason of the last failure (static string) */
    uint32_t isr_seen;                   /* OR of all interrupt status values read */
    char name[40];                       /* "virtio-mmio at 0xfeb00000", "virtio-pci at 00:01.0" */
    /* virtio-mmio */
    uint64_t base;                       /* register block */
    uint64_t size;                       /* from the cmdline entry */
    uint32_t irq;                        /* from the cmdline entry (unused: we poll) */
    /* virtio-pci: addresses of the structures the capabilities point at */
    uint8_t bus, slot, function;
    uint64_t common;                     /* common configuration */
    uint64_t notify;                     /* notification area */
    uint32_t notify_multiplier;
    uint64_t isr;                        /* ISR status byte */
    uint64_t device_cfg;                 /* device-specific configuration */
    uint32_t device_cfg_length;
};

struct virtq {
    uint16_t index;                      /* queue number on the device */
    uint16_t num;                        /* queue size in use */
    uint16_t avail_idx;                  /* next avail->idx to publish (free-running) */
    uint16_t last_used;                  /* used->idx consumed so far (free-running) */
    uint64_t notify_addr;                /* where writing `index` notifies the device */
    uint8_t notify_width;                /* bytes written there: 2 (virtio-pci) or 4 (virtio-mmio) */
    volatile struct virtq_desc *desc;
    volatile struct virtq_avail *avail;
    volatile struct virtq_used *used;
};

/* What the last vdev_find saw (for diagnostics). */
struct vdev_probe_stats {
    unsigned mmio_entries;               /* virtio_mmio.device= entries parsed */
    unsigned bad_entries;                /* unparsable or outside the 4 GiB identity map */
    unsigned legacy;                     /* virtio-mmio Version 1, or transitional virtio-pci IDs */
    unsigned pci_functions;              /* PCI functions present on bus 0 */
    unsigned unusable;                   /* the wanted device, but capabilities or BARs unusable */
    char legacy_name[40];                /* the last legacy device of the wanted type, or "" */
    const char *unusable_reason;         /* why the last unusable one was skipped */
};

/* Finds the `nth` (0-based) modern device with `device_id`: PCI bus 0 first, then the
 * cmdline's virtio-mmio entries. Returns 0 and fills *d, or -1. `stats` may be NULL.
 * Reads identification registers only, except that a PCI function found gets memory
 * space and bus mastering enabled. */
int vdev_find(uint32_t device_id, unsigned nth, struct vdev *d, struct vdev_probe_stats *stats);

/* Reset, ACKNOWLEDGE, DRIVER, read the device features, accept (offered & wanted), which must
 * include VIRTIO_F_VERSION_1, write them, FEATURES_OK, and check that it stuck. On failure
 * sets FAILED and d->error, returns -1. */
int vdev_init(struct vdev *d, uint64_t wanted_features);

/* Sets up queue `index` (not yet enabled, device maximum > 0) with size min(maximum,
 * VIRTQ_MAX) rounded down to a power of 2 and rings in `mem` (VIRTQ_MEM_SIZE bytes,
 * 16-byte aligned, zeroed here), then enables it. Returns 0 or -1 (d->error). Call between
 * vdev_init and vdev_driver_ok. */
int vdev_queue_setup(struct vdev *d, struct virtq *q, unsigned index, void *mem);

/* Sets DRIVER_OK and checks that the device did not report DEVICE_NEEDS_RESET/FAILED. */
int vdev_driver_ok(struct vdev *d);

/* Device status; marks the device FAILED (driver gives up); resets it (0, waits for 0). */
uint8_t vdev_status(const struct vdev *d);
void vdev_fail(struct vdev *d);
void vdev_reset(struct vdev *d);

/* Puts chain head `head` in the available ring (the caller filled q->desc[]) with the
 * barriers the spec asks for, without notifying. */
void vdev_publish(struct virtq *q, uint16_t head);
/* Notifies the device that queue q has new available buffers. */
void vdev_notify(struct virtq *q);
/* vdev_publish, then vdev_notify. */
void vdev_submit(struct vdev *d, struct virtq *q, uint16_t head);

/* Polls used->idx until a new used element arrives or `timeout_cycles` TSC cycles pass.
 * Returns 1 and fills *id and *len (either may be NULL), or 0 on timeout, after reading (and
 * on virtio-mmio acking) the interrupt status for diagnostics. Queues ask for no used-buffer
 * interrupts (VIRTQ_AVAIL_F_NO_INTERRUPT): reading the status is a VM exit. */
int vdev_poll_used(struct vdev *d, struct virtq *q, uint64_t timeout_cycles, uint32_t *id, uint32_t *len);

/* Reads (and acknowledges) the interrupt status; returns it. */
uint32_t vdev_ack_interrupts(struct vdev *d);

/* Device configuration space access, `offset` relative to its start. */
uint8_t vdev_config_read8(const struct vdev *d, uint32_t offset);
uint16_t vdev_config_read16(const struct vdev *d, uint32_t offset);
uint32_t vdev_config_read32(const struct vdev *d, uint32_t offset);
/* Reads a 64-bit field as two 32-bit halves under the configuration generation protocol. */
uint64_t vdev_config_read64(const struct vdev *d, uint32_t offset);
void vdev_config_write32(const struct vdev *d, uint32_t offset, uint32_t value);
uint32_t vdev_config_generation(const struct vdev *d);

/* Parses one `<size>@<base>:<irq>[:<id>]` value (size: decimal or 0x hex, optional K/M/G
 * suffix; base: 0x hex or decimal; irq decimal). Returns 0 on success. */
int vmmio_parse_entry(const char *s, unsigned len, uint64_t *size, uint64_t *base, uint32_t *irq);

#endif
