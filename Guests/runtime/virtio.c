/* Tern test-guest runtime: polling VirtIO driver over virtio-pci and virtio-mmio (see virtio.h). */
#include "rt.h"
#include "virtio.h"

#define MAPPED_LIMIT      0x100000000ull  /* identity map covers the first 4 GiB */
#define RESET_WAIT_CYCLES 1000000000ull   /* bounded wait for the status to read back 0 */
#define PCI_MAX_CAPS      48              /* a hostile capability list cannot loop us forever */

/* x86 keeps stores in order and loads in order, but a full fence keeps this correct even
 * if the rings or buffers ever end up in a weaker memory type. */
static inline void full_barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static inline uint8_t rd8(uint64_t a) { return *(volatile uint8_t *)(uintptr_t)a; }
static inline uint16_t rd16(uint64_t a) { return *(volatile uint16_t *)(uintptr_t)a; }
static inline uint32_t rd32(uint64_t a) { return *(volatile uint32_t *)(uintptr_t)a; }
static inline void wr8(uint64_t a, uint8_t v) { *(volatile uint8_t *)(uintptr_t)a = v; }
static inline void wr16(uint64_t a, uint16_t v) { *(volatile uint16_t *)(uintptr_t)a = v; }
static inline void wr32(uint64_t a, uint32_t v) { *(volatile uint32_t *)(uintptr_t)a = v; }
static inline void wr64(uint64_t a, uint64_t v) { wr32(a, (uint32_t)v); wr32(a + 4, (uint32_t)(v >> 32)); }

/* ---- small formatting for device names ---- */
static char *put_str(char *p, char *end, const char *s) { while (*s && p < end) *p++ = *s++; return p; }
static char *put_hex(char *p, char *end, uint64_t v, int digits) {
    static const char hex[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0 && p < end; i--) *p++ = hex[(v >> (4 * i)) & 15];
    return p;
}
static int hex_digits(uint64_t v) { int n = 1; while (v >>= 4) n++; return n; }

static void name_mmio(char *buf, unsigned size, uint64_t base) {
    char *p = buf, *end = buf + size - 1;
    p = put_str(p, end, "virtio-mmio at 0x");
    p = put_hex(p, end, base, hex_digits(base));
    *p = 0;
}
static void name_pci(char *buf, unsigned size, unsigned bus, unsigned slot, unsigned fn) {
    char *p = buf, *end = buf + size - 1;
    p = put_str(p, end, "virtio-pci at ");
    p = put_hex(p, end, bus, 2);
    p = put_str(p, end, ":");
    p = put_hex(p, end, slot, 2);
    p = put_str(p, end, ".");
    p = put_hex(p, end, fn, 1);
    *p = 0;
}

/* ------------------------------------------------------------------------------------ */
/* virtio-mmio discovery (command line)                                                  */
/* ------------------------------------------------------------------------------------ */
static int parse_num(const char **pp, const char *end, uint64_t *out) {
    const char *p = *pp;
    uint64_t v = 0;
    int base = 10, digits = 0;
    if (end - p > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) { base = 16; p += 2; }
    for (; p < end; p++) {
        char c = *p;
        unsigned dv;
        if (c >= '0' && c <= '9') dv = (unsigned)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f') dv = (unsigned)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F') dv = (unsigned)(c - 'A' + 10);
        else break;
        if (v > (UINT64_MAX - dv) / (uint64_t)base) return -1;   /* overflow */
        v = v * (uint64_t)base + dv;
        digits++;
    }
    if (!digits) return -1;
    *pp = p;
    *out = v;
    return 0;
}

int vmmio_parse_entry(const char *s, unsigned len, uint64_t *size, uint64_t *base, uint32_t *irq) {
    const char *p = s, *end = s + len;
    uint64_t sz, b, i;
    if (parse_num(&p, end, &sz)) return -1;
    if (p < end) {
        unsigned shift = 0;
        switch (*p) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        }
        if (shift) {
            if (sz > (UINT64_MAX >> shift)) return -1;
            sz <<= shift;
            p++;
        }
    }
    if (p >= end || *p++ != '@') return -1;
    if (parse_num(&p, end, &b)) return -1;
    if (p >= end || *p++ != ':') return -1;
    if (parse_num(&p, end, &i) || i > 0xffffffffu) return -1;
    if (p < end && *p == ':') {                 /* optional platform device id */
        uint64_t id;
        p++;
        if (parse_num(&p, end, &id)) return -1;
    }
    if (p != end) return -1;
    *size = sz;
    *base = b;
    *irq = (uint32_t)i;
    return 0;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static int mmio_find(uint32_t device_id, unsigned *nth, struct vdev *d, struct vdev_probe_stats *st) {
    static const char key[] = "virtio_mmio.device=";
    const unsigned klen = sizeof key - 1;
    const char *p = rt_cmdline();
    while (*p) {
        while (is_space(*p)) p++;
        if (!*p) break;
        const char *w = p;
        while (*p && !is_space(*p)) p++;
        unsigned wlen = (unsigned)(p - w);
        if (wlen < klen || memcmp(w, key, klen) != 0) continue;
        st->mmio_entries++;
        uint64_t size, base;
        uint32_t irq;
        /* Need at least the 0x100 bytes of common registers, 4-byte aligned, inside the
         * identity-mapped first 4 GiB. */
        if (vmmio_parse_entry(w + klen, wlen - klen, &size, &base, &irq) || size < VMMIO_CONFIG ||
            (base & 3) || base >= MAPPED_LIMIT || MAPPED_LIMIT - base < VMMIO_CONFIG) {
            st->bad_entries++;
            continue;
        }
        if (rd32(base + VMMIO_MAGIC_VALUE) != VMMIO_MAGIC) continue;
        uint32_t version = rd32(base + VMMIO_VERSION), id = rd32(base + VMMIO_DEVICE_ID);
        if (id != device_id) continue;
        if (version != 2) {
            st->legacy++;
            name_mmio(st->legacy_name, sizeof st->legacy_name, base);
            continue;
        }
        if ((*nth)-- != 0) continue;
        memset(d, 0, sizeof *d);
        d->transport = VDEV_MMIO;
        d->device_id = device_id;
        d->base = base;
        d->size = size;
        d->irq = irq;
        name_mmio(d->name, sizeof d->name, base);
        return 0;
    }
    return -1;
}

/* ------------------------------------------------------------------------------------ */
/* virtio-pci discovery (0xCF8/0xCFC configuration mechanism, 4.1.4)                     */
/* ------------------------------------------------------------------------------------ */
#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA    0xcfc
#define PCI_COMMAND        0x04
#define PCI_STATUS         0x06
#define PCI_HEADER_TYPE    0x0e
#define PCI_BAR0           0x10
#define PCI_CAPABILITIES   0x34
#define PCI_CAP_VENDOR     0x09
#define PCI_STATUS_CAPS    0x10
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define VIRTIO_PCI_CAP_COMMON 1
#define VIRTIO_PCI_CAP_NOTIFY 2
#define VIRTIO_PCI_CAP_ISR    3
#define VIRTIO_PCI_CAP_DEVICE 4

static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }

static uint32_t cfg_address(unsigned bus, unsigned slot, unsigned fn, unsigned off) {
    return 0x80000000u | bus << 16 | slot << 11 | fn << 8 | (off & 0xfc);
}
static uint32_t pci_read32(unsigned bus, unsigned slot, unsigned fn, unsigned off) {
    outl(PCI_CONFIG_ADDRESS, cfg_address(bus, slot, fn, off));
    return inl(PCI_CONFIG_DATA);
}
static uint8_t pci_read8(unsigned bus, unsigned slot, unsigned fn, unsigned off) {
    return (uint8_t)(pci_read32(bus, slot, fn, off) >> (8 * (off & 3)));
}
static uint16_t pci_read16(unsigned bus, unsigned slot, unsigned fn, unsigned off) {
    return (uint16_t)(pci_read32(bus, slot, fn, off) >> (8 * (off & 2)));
}
static void pci_write16(unsigned bus, unsigned slot, unsigned fn, unsigned off, uint16_t v) {
    outl(PCI_CONFIG_ADDRESS, cfg_address(bus, slot, fn, off));
    outw((uint16_t)(PCI_CONFIG_DATA + (off & 2)), v);
}

/* The address memory BAR `bar` decodes, or 0 when it is not a usable memory BAR below 4 GiB. */
static uint64_t pci_bar_address(unsigned bus, unsigned slot, unsigned fn, unsigned bar) {
    if (bar > 5) return 0;
    uint32_t low = pci_read32(bus, slot, fn, PCI_BAR0 + 4 * bar);
    if (low & 1) return 0;                              /* I/O BAR */
    uint64_t address = low & ~0xfull;
    if (((low >> 1) & 3) == 2) {                        /* 64-bit: the next BAR holds the top half */
        if (bar == 5) return 0;
        address |= (uint64_t)pci_read32(bus, slot, fn, PCI_BAR0 + 4 * (bar + 1)) << 32;
    }
    return address;
}

/* Walks the vendor capabilities and fills the structure addresses; returns a reason or NULL. */
static const char *pci_map(struct vdev *d) {
    unsigned b = d->bus, s = d->slot, f = d->function;
    if (!(pci_read16(b, s, f, PCI_STATUS) & PCI_STATUS_CAPS)) return "no capability list";
    unsigned found = 0;
    uint8_t pos = pci_read8(b, s, f, PCI_CAPABILITIES) & 0xfc;
    for (unsigned n = 0; pos >= 0x40 && n < PCI_MAX_CAPS; n++) {
        uint8_t id = pci_read8(b, s, f, pos), next = pci_read8(b, s, f, pos + 1) & 0xfc;
        if (id == PCI_CAP_VENDOR) {
            uint8_t type = pci_read8(b, s, f, pos + 3), bar = pci_read8(b, s, f, pos + 4);
            uint32_t offset = pci_read32(b, s, f, pos + 8), length = pci_read32(b, s, f, pos + 12);
            uint64_t base = pci_bar_address(b, s, f, bar);
            uint64_t address = base + offset;
            int usable = base != 0 && address >= base && address < MAPPED_LIMIT && length <= MAPPED_LIMIT - address;
            if (type >= VIRTIO_PCI_CAP_COMMON && type <= VIRTIO_PCI_CAP_DEVICE && !(found & (1u << type))) {
                if (!usable) return "a virtio capability points outside a memory BAR below 4 GiB";
                found |= 1u << type;
                switch (type) {
                case VIRTIO_PCI_CAP_COMMON: d->common = address; break;
                case VIRTIO_PCI_CAP_NOTIFY:
                    d->notify = address;
                    d->notify_multiplier = pci_read32(b, s, f, pos + 16);
                    break;
                case VIRTIO_PCI_CAP_ISR: d->isr = address; break;
                default: d->device_cfg = address; d->device_cfg_length = length; break;
                }
            }
        }
        pos = next;
    }
    const unsigned needed = 1u << VIRTIO_PCI_CAP_COMMON | 1u << VIRTIO_PCI_CAP_NOTIFY | 1u << VIRTIO_PCI_CAP_ISR;
    if ((found & needed) != needed) return "common, notify or ISR capability missing";
    return 0;
}

static int pci_find(uint32_t device_id, unsigned *nth, struct vdev *d, struct vdev_probe_stats *st) {
    for (unsigned slot = 0; slot < 32; slot++) {
        unsigned functions = 1;
        for (unsigned fn = 0; fn < functions; fn++) {
            uint32_t ids = pci_read32(0, slot, fn, 0);
            uint16_t vendor = (uint16_t)ids, device = (uint16_t)(ids >> 16);
            if (vendor == 0xffff) continue;
            st->pci_functions++;
            if (fn == 0 && (pci_read8(0, slot, 0, PCI_HEADER_TYPE) & 0x80)) functions = 8;
            if (vendor != VIRTIO_PCI_VENDOR) continue;
            if (device >= 0x1000 && device < 0x1040) {    /* transitional: DeviceID is the subsystem ID */
                if (pci_read16(0, slot, fn, 0x2e) == device_id) {
                    st->legacy++;
                    name_pci(st->legacy_name, sizeof st->legacy_name, 0, slot, fn);
                }
                continue;
            }
            if (device != VIRTIO_PCI_DEVICE_BASE + device_id) continue;
            struct vdev t;
            memset(&t, 0, sizeof t);
            t.transport = VDEV_PCI;
            t.device_id = device_id;
            t.bus = 0;
            t.slot = (uint8_t)slot;
            t.function = (uint8_t)fn;
            name_pci(t.name, sizeof t.name, 0, slot, fn);
            uint16_t command = pci_read16(0, slot, fn, PCI_COMMAND);
            pci_write16(0, slot, fn, PCI_COMMAND, command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
            const char *why = pci_map(&t);
            if (why) {
                st->unusable++;
                st->unusable_reason = why;
                continue;
            }
            if ((*nth)-- != 0) continue;
            *d = t;
            return 0;
        }
    }
    return -1;
}

int vdev_find(uint32_t device_id, unsigned nth, struct vdev *d, struct vdev_probe_stats *stats) {
    struct vdev_probe_stats st;
    memset(&st, 0, sizeof st);
    int found = pci_find(device_id, &nth, d, &st) == 0 || mmio_find(device_id, &nth, d, &st) == 0 ? 0 : -1;
    if (stats) *stats = st;
    return found;
}

/* ------------------------------------------------------------------------------------ */
/* Transport-specific register access                                                    */
/* ------------------------------------------------------------------------------------ */
uint8_t vdev_status(const struct vdev *d) {
    return d->transport == VDEV_PCI ? rd8(d->common + VPCI_DEVICE_STATUS) : (uint8_t)rd32(d->base + VMMIO_STATUS);
}
static void set_status(struct vdev *d, uint8_t status) {
    if (d->transport == VDEV_PCI) wr8(d->common + VPCI_DEVICE_STATUS, status);
    else wr32(d->base + VMMIO_STATUS, status);
}
static void add_status(struct vdev *d, uint8_t bits) { set_status(d, vdev_status(d) | bits); }

static uint32_t device_features_word(struct vdev *d, uint32_t select) {
    if (d->transport == VDEV_PCI) {
        wr32(d->common + VPCI_DEVICE_FEATURE_SELECT, select);
        return rd32(d->common + VPCI_DEVICE_FEATURE);
    }
    wr32(d->base + VMMIO_DEVICE_FEATURES_SEL, select);
    return rd32(d->base + VMMIO_DEVICE_FEATURES);
}
static void driver_features_word(struct vdev *d, uint32_t select, uint32_t value) {
    if (d->transport == VDEV_PCI) {
        wr32(d->common + VPCI_DRIVER_FEATURE_SELECT, select);
        wr32(d->common + VPCI_DRIVER_FEATURE, value);
    } else {
        wr32(d->base + VMMIO_DRIVER_FEATURES_SEL, select);
        wr32(d->base + VMMIO_DRIVER_FEATURES, value);
    }
}

uint32_t vdev_config_generation(const struct vdev *d) {
    return d->transport == VDEV_PCI ? rd8(d->common + VPCI_CONFIG_GENERATION) : rd32(d->base + VMMIO_CONFIG_GENERATION);
}
static uint64_t config_address(const struct vdev *d, uint32_t offset) {
    return (d->transport == VDEV_PCI ? d->device_cfg : d->base + VMMIO_CONFIG) + offset;
}
uint8_t vdev_config_read8(const struct vdev *d, uint32_t offset) { return rd8(config_address(d, offset)); }
uint16_t vdev_config_read16(const struct vdev *d, uint32_t offset) { return rd16(config_address(d, offset)); }
uint32_t vdev_config_read32(const struct vdev *d, uint32_t offset) { return rd32(config_address(d, offset)); }
void vdev_config_write32(const struct vdev *d, uint32_t offset, uint32_t value) { wr32(config_address(d, offset), value); }
uint64_t vdev_config_read64(const struct vdev *d, uint32_t offset) {
    uint64_t v = 0;
    for (int tries = 0; tries < 100; tries++) {
        uint32_t g = vdev_config_generation(d);
        v = vdev_config_read32(d, offset) | (uint64_t)vdev_config_read32(d, offset + 4) << 32;
        if (vdev_config_generation(d) == g) break;
    }
    return v;
}

/* ------------------------------------------------------------------------------------ */
/* Device initialisation (3.1.1)                                                         */
/* ------------------------------------------------------------------------------------ */
void vdev_fail(struct vdev *d) { add_status(d, VIRTIO_STATUS_FAILED); }

void vdev_reset(struct vdev *d) {
    set_status(d, 0);
    uint64_t t0 = rdtsc();
    while (vdev_status(d) != 0 && rdtsc() - t0 < RESET_WAIT_CYCLES) cpu_relax();
}

static int fail(struct vdev *d, const char *why) {
    d->error = why;
    vdev_fail(d);
    return -1;
}

int vdev_init(struct vdev *d, uint64_t wanted_features) {
    d->error = 0;
    vdev_reset(d);
    if (vdev_status(d) != 0) { d->error = "device did not reset (status not 0 after writing 0)"; return -1; }
    add_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
    add_status(d, VIRTIO_STATUS_DRIVER);

    uint64_t lo = device_features_word(d, 0), hi = device_features_word(d, 1);
    d->device_features = hi << 32 | lo;
    if (!(d->device_features & VIRTIO_F_VERSION_1)) return fail(d, "device does not offer VIRTIO_F_VERSION_1");

    d->driver_features = d->device_features & (wanted_features | VIRTIO_F_VERSION_1);
    driver_features_word(d, 0, (uint32_t)d->driver_features);
    driver_features_word(d, 1, (uint32_t)(d->driver_features >> 32));

    add_status(d, VIRTIO_STATUS_FEATURES_OK);
    if (!(vdev_status(d) & VIRTIO_STATUS_FEATURES_OK))
        return fail(d, "device did not accept our features (FEATURES_OK not set)");
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Virtqueues (2.7, 4.1.4.3, 4.2.3.2)                                                    */
/* ------------------------------------------------------------------------------------ */
int vdev_queue_setup(struct vdev *d, struct virtq *q, unsigned index, void *mem) {
    if ((uintptr_t)mem & 15) return fail(d, "ring memory not 16-byte aligned");
    uint32_t max;
    if (d->transport == VDEV_PCI) {
        if (index >= rd16(d->common + VPCI_NUM_QUEUES)) return fail(d, "queue not available (beyond num_queues)");
        wr16(d->common + VPCI_QUEUE_SELECT, (uint16_t)index);
        if (rd16(d->common + VPCI_QUEUE_ENABLE) != 0) return fail(d, "queue_enable not 0 before setup");
        max = rd16(d->common + VPCI_QUEUE_SIZE);
    } else {
        wr32(d->base + VMMIO_QUEUE_SEL, index);
        if (rd32(d->base + VMMIO_QUEUE_READY) != 0) return fail(d, "QueueReady not 0 before setup");
        max = rd32(d->base + VMMIO_QUEUE_NUM_MAX);
    }
    if (max == 0) return fail(d, "queue not available (maximum size 0)");
    uint32_t num = max < VIRTQ_MAX ? max : VIRTQ_MAX;
    while (num & (num - 1)) num &= num - 1;     /* split rings: power of 2 */

    uint8_t *m = mem;
    memset(m, 0, VIRTQ_MEM_SIZE);
    uint64_t desc = (uint64_t)(uintptr_t)m;
    uint64_t avail = desc + 16ull * VIRTQ_MAX;
    uint64_t used = (avail + 6 + 2ull * VIRTQ_MAX + 3) & ~3ull;
    q->index = (uint16_t)index;
    q->num = (uint16_t)num;
    q->avail_idx = 0;
    q->last_used = 0;
    q->desc = (volatile struct virtq_desc *)(uintptr_t)desc;
    q->avail = (volatile struct virtq_avail *)(uintptr_t)avail;
    q->used = (volatile struct virtq_used *)(uintptr_t)used;
    q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;          /* we poll */

    if (d->transport == VDEV_PCI) {
        uint64_t notify = d->notify + (uint64_t)rd16(d->common + VPCI_QUEUE_NOTIFY_OFF) * d->notify_multiplier;
        if (notify >= MAPPED_LIMIT - 2) return fail(d, "queue notify address outside the 4 GiB identity map");
        q->notify_addr = notify;
        q->notify_width = 2;
        wr16(d->common + VPCI_QUEUE_SIZE, (uint16_t)num);
        wr64(d->common + VPCI_QUEUE_DESC, desc);
        wr64(d->common + VPCI_QUEUE_DRIVER, avail);
        wr64(d->common + VPCI_QUEUE_DEVICE, used);
        full_barrier();
        wr16(d->common + VPCI_QUEUE_ENABLE, 1);
        if (rd16(d->common + VPCI_QUEUE_ENABLE) != 1) return fail(d, "queue_enable did not read back 1");
        return 0;
    }
    q->notify_addr = d->base + VMMIO_QUEUE_NOTIFY;
    q->notify_width = 4;
    wr32(d->base + VMMIO_QUEUE_NUM, num);
    wr64(d->base + VMMIO_QUEUE_DESC_LOW, desc);
    wr64(d->base + VMMIO_QUEUE_DRIVER_LOW, avail);
    wr64(d->base + VMMIO_QUEUE_DEVICE_LOW, used);
    full_barrier();
    wr32(d->base + VMMIO_QUEUE_READY, 1);
    if (rd32(d->base + VMMIO_QUEUE_READY) != 1) return fail(d, "QueueReady did not read back 1");
    return 0;
}

int vdev_driver_ok(struct vdev *d) {
    add_status(d, VIRTIO_STATUS_DRIVER_OK);
    if (vdev_status(d) & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        d->error = "device reports DEVICE_NEEDS_RESET or FAILED after DRIVER_OK";
        return -1;
    }
    return 0;
}

void vdev_publish(struct virtq *q, uint16_t head) {
    /* 2.7.13: descriptors, then the ring entry, then (after a barrier) avail->idx. */
    q->avail->ring[q->avail_idx % q->num] = head;
    full_barrier();
    q->avail_idx++;
    q->avail->idx = q->avail_idx;
}

void vdev_notify(struct virtq *q) {
    /* 2.7.13.4: make idx visible before reading the device's flags; a device that is still
     * working through the ring (VIRTQ_USED_F_NO_NOTIFY) rechecks it before it stops. virtio-mmio
     * takes a 32-bit QueueNotify write; virtio-pci a 16-bit queue index at the notify address. */
    full_barrier();
    if (q->used->flags & VIRTQ_USED_F_NO_NOTIFY) return;
    if (q->notify_width == 4)
        wr32(q->notify_addr, q->index);
    else
        wr16(q->notify_addr, q->index);
}

void vdev_submit(struct vdev *d, struct virtq *q, uint16_t head) {
    (void)d;
    vdev_publish(q, head);
    vdev_notify(q);
}

uint32_t vdev_ack_interrupts(struct vdev *d) {
    uint32_t isr;
    if (d->transport == VDEV_PCI) {
        isr = rd8(d->isr);                      /* reading clears it */
    } else {
        isr = rd32(d->base + VMMIO_INTERRUPT_STATUS);
        if (isr) wr32(d->base + VMMIO_INTERRUPT_ACK, isr);
    }
    d->isr_seen |= isr;
    return isr;
}

int vdev_poll_used(struct vdev *d, struct virtq *q, uint64_t timeout_cycles, uint32_t *id, uint32_t *len) {
    uint64_t t0 = rdtsc();
    for (;;) {
        uint16_t idx = q->used->idx;            /* volatile read */
        if (idx != q->last_used) {
            full_barrier();                      /* read the element after seeing idx */
            volatile struct virtq_used_elem *e = &q->used->ring[q->last_used % q->num];
            if (id) *id = e->id;
            if (len) *len = e->len;
            q->last_used++;
            return 1;
        }
        if (rdtsc() - t0 >= timeout_cycles) {
            vdev_ack_interrupts(d);
            return 0;
        }
        cpu_relax();
    }
}
