/* Tern test-guest runtime: polling virtio-mmio driver (see virtio_mmio.h). */
#include "rt.h"
#include "virtio_mmio.h"

#define MAPPED_LIMIT      0x100000000ull  /* identity map covers the first 4 GiB */
#define RESET_WAIT_CYCLES 1000000000ull   /* bounded wait for Status to read back 0 */

/* x86 keeps stores in order and loads in order, but a full fence keeps this correct even
 * if the rings or buffers ever end up in a weaker memory type. */
static inline void full_barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

/* ------------------------------------------------------------------------------------ */
/* Command-line discovery                                                                */
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

int vmmio_find(uint32_t device_id, unsigned nth, struct vmmio_dev *d, struct vmmio_probe_stats *stats) {
    static const char key[] = "virtio_mmio.device=";
    const unsigned klen = sizeof key - 1;
    struct vmmio_probe_stats st;
    memset(&st, 0, sizeof st);
    int found = -1;
    const char *p = rt_cmdline();
    while (*p) {
        while (is_space(*p)) p++;
        if (!*p) break;
        const char *w = p;
        while (*p && !is_space(*p)) p++;
        unsigned wlen = (unsigned)(p - w);
        if (wlen < klen || memcmp(w, key, klen) != 0) continue;
        st.entries++;
        uint64_t size, base;
        uint32_t irq;
        /* Need at least the 0x100 bytes of common registers, 4-byte aligned, inside the
         * identity-mapped first 4 GiB. */
        if (vmmio_parse_entry(w + klen, wlen - klen, &size, &base, &irq) || size < VMMIO_CONFIG ||
            (base & 3) || base >= MAPPED_LIMIT || MAPPED_LIMIT - base < VMMIO_CONFIG) {
            st.bad_entries++;
            continue;
        }
        struct vmmio_dev t;
        memset(&t, 0, sizeof t);
        t.base = base;
        t.size = size;
        t.irq = irq;
        if (vmmio_read(&t, VMMIO_MAGIC_VALUE) != VMMIO_MAGIC) { st.no_magic++; continue; }
        uint32_t version = vmmio_read(&t, VMMIO_VERSION);
        t.device_id = vmmio_read(&t, VMMIO_DEVICE_ID);
        if (version != 2) {
            st.legacy++;
            if (t.device_id == device_id) st.legacy_base = base;
            continue;
        }
        if (t.device_id == 0) { st.empty++; continue; }
        if (t.device_id != device_id) { st.other++; continue; }
        if (found < 0 && nth-- == 0) {
            t.vendor_id = vmmio_read(&t, VMMIO_VENDOR_ID);
            *d = t;
            found = 0;
        }
    }
    if (stats) *stats = st;
    return found;
}

/* ------------------------------------------------------------------------------------ */
/* Device initialisation (3.1.1, 4.2.3.1)                                                */
/* ------------------------------------------------------------------------------------ */
static void add_status(struct vmmio_dev *d, uint32_t bits) {
    vmmio_write(d, VMMIO_STATUS, vmmio_status(d) | bits);
}

void vmmio_fail(struct vmmio_dev *d) { add_status(d, VIRTIO_STATUS_FAILED); }

void vmmio_reset(struct vmmio_dev *d) {
    vmmio_write(d, VMMIO_STATUS, 0);
    uint64_t t0 = rdtsc();
    while (vmmio_status(d) != 0 && rdtsc() - t0 < RESET_WAIT_CYCLES) cpu_relax();
}

static int fail(struct vmmio_dev *d, const char *why) {
    d->error = why;
    vmmio_fail(d);
    return -1;
}

int vmmio_init(struct vmmio_dev *d, uint64_t wanted_features) {
    d->error = 0;
    vmmio_reset(d);
    if (vmmio_status(d) != 0) { d->error = "device did not reset (Status not 0 after writing 0)"; return -1; }
    add_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
    add_status(d, VIRTIO_STATUS_DRIVER);

    vmmio_write(d, VMMIO_DEVICE_FEATURES_SEL, 0);
    uint64_t lo = vmmio_read(d, VMMIO_DEVICE_FEATURES);
    vmmio_write(d, VMMIO_DEVICE_FEATURES_SEL, 1);
    uint64_t hi = vmmio_read(d, VMMIO_DEVICE_FEATURES);
    d->device_features = (hi << 32) | lo;
    if (!(d->device_features & VIRTIO_F_VERSION_1))
        return fail(d, "device does not offer VIRTIO_F_VERSION_1");

    d->driver_features = d->device_features & (wanted_features | VIRTIO_F_VERSION_1);
    vmmio_write(d, VMMIO_DRIVER_FEATURES_SEL, 0);
    vmmio_write(d, VMMIO_DRIVER_FEATURES, (uint32_t)d->driver_features);
    vmmio_write(d, VMMIO_DRIVER_FEATURES_SEL, 1);
    vmmio_write(d, VMMIO_DRIVER_FEATURES, (uint32_t)(d->driver_features >> 32));

    add_status(d, VIRTIO_STATUS_FEATURES_OK);
    if (!(vmmio_status(d) & VIRTIO_STATUS_FEATURES_OK))
        return fail(d, "device did not accept our features (FEATURES_OK not set)");
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Virtqueues (2.7, 4.2.3.2)                                                             */
/* ------------------------------------------------------------------------------------ */
int vmmio_queue_setup(struct vmmio_dev *d, struct virtq *q, unsigned index, void *mem) {
    if ((uintptr_t)mem & 15) return fail(d, "ring memory not 16-byte aligned");
    vmmio_write(d, VMMIO_QUEUE_SEL, index);
    if (vmmio_read(d, VMMIO_QUEUE_READY) != 0) return fail(d, "QueueReady not 0 before setup");
    uint32_t max = vmmio_read(d, VMMIO_QUEUE_NUM_MAX);
    if (max == 0) return fail(d, "queue not available (QueueNumMax 0)");
    uint32_t num = max < VMMIO_QUEUE_MAX ? max : VMMIO_QUEUE_MAX;
    while (num & (num - 1)) num &= num - 1;     /* split rings: power of 2 */

    uint8_t *m = mem;
    memset(m, 0, VMMIO_QUEUE_MEM_SIZE);
    uint64_t desc = (uint64_t)(uintptr_t)m;
    uint64_t avail = desc + 16ull * VMMIO_QUEUE_MAX;
    uint64_t used = (avail + 6 + 2ull * VMMIO_QUEUE_MAX + 3) & ~3ull;
    q->index = (uint16_t)index;
    q->num = (uint16_t)num;
    q->avail_idx = 0;
    q->last_used = 0;
    q->desc = (volatile struct virtq_desc *)(uintptr_t)desc;
    q->avail = (volatile struct virtq_avail *)(uintptr_t)avail;
    q->used = (volatile struct virtq_used *)(uintptr_t)used;

    vmmio_write(d, VMMIO_QUEUE_NUM, num);
    vmmio_write(d, VMMIO_QUEUE_DESC_LOW, (uint32_t)desc);
    vmmio_write(d, VMMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
    vmmio_write(d, VMMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
    vmmio_write(d, VMMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
    vmmio_write(d, VMMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
    vmmio_write(d, VMMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
    full_barrier();
    vmmio_write(d, VMMIO_QUEUE_READY, 1);
    if (vmmio_read(d, VMMIO_QUEUE_READY) != 1) return fail(d, "QueueReady did not read back 1");
    return 0;
}

int vmmio_driver_ok(struct vmmio_dev *d) {
    add_status(d, VIRTIO_STATUS_DRIVER_OK);
    uint32_t s = vmmio_status(d);
    if (s & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        d->error = "device reports DEVICE_NEEDS_RESET or FAILED after DRIVER_OK";
        return -1;
    }
    return 0;
}

void vmmio_submit(struct vmmio_dev *d, struct virtq *q, uint16_t head) {
    /* 2.7.13: descriptors, then the ring entry, then (after a barrier) avail->idx. */
    q->avail->ring[q->avail_idx % q->num] = head;
    full_barrier();
    q->avail_idx++;
    q->avail->idx = q->avail_idx;
    /* 2.7.13.4: make idx visible before notifying (we ignore VIRTQ_USED_F_NO_NOTIFY and
     * always notify, which the spec allows). */
    full_barrier();
    vmmio_write(d, VMMIO_QUEUE_NOTIFY, q->index);
}

uint32_t vmmio_ack_interrupts(struct vmmio_dev *d) {
    uint32_t isr = vmmio_read(d, VMMIO_INTERRUPT_STATUS);
    if (isr) vmmio_write(d, VMMIO_INTERRUPT_ACK, isr);
    d->isr_seen |= isr;
    return isr;
}

int vmmio_poll_used(struct vmmio_dev *d, struct virtq *q, uint64_t timeout_cycles, uint32_t *id, uint32_t *len) {
    uint64_t t0 = rdtsc();
    for (;;) {
        uint16_t idx = q->used->idx;            /* volatile read */
        if (idx != q->last_used) {
            full_barrier();                      /* read the element after seeing idx */
            volatile struct virtq_used_elem *e = &q->used->ring[q->last_used % q->num];
            if (id) *id = e->id;
            if (len) *len = e->len;
            q->last_used++;
            vmmio_ack_interrupts(d);
            return 1;
        }
        if (rdtsc() - t0 >= timeout_cycles) {
            vmmio_ack_interrupts(d);
            return 0;
        }
        cpu_relax();
    }
}
