/* vsock: drives a virtio-vsock (device ID 19) device from ring 3 by polling, over virtio-pci or
 * virtio-mmio. Written from the VIRTIO 1.2 spec, 5.10: queues 0 (rx), 1 (tx) and 2 (event), one
 * stream connection between this guest (CID from the configuration space) and the host (CID 2).
 * Every packet is a 44-byte header; rx buffers hold a header and up to RX_BYTES of payload in
 * one device-writable descriptor, tx packets are a header descriptor and an optional payload
 * descriptor.
 *
 * Credit (5.10.6.3): this side advertises buf_alloc = WINDOW and counts in fwd_cnt what it has
 * consumed, telling the host with CREDIT_UPDATE once half the window was consumed unannounced or
 * when asked (CREDIT_REQUEST); it sends at most buf_alloc - (tx_cnt - fwd_cnt) of the host's last
 * values, and asks with CREDIT_REQUEST when that is not enough.
 *
 * Cmdline: mode=connect (default): connect to host port `port=` (default 1234), send
 *            "hello from the guest\n", read one line and print `vsock: host replied: <line>`,
 *            then close (SHUTDOWN both ways, wait for the host's RST).
 *          mode=listen: print `vsock: listening on port N`, accept the host's connection to
 *            port N (`port=`, default 1234), read a line, send it back uppercased, print
 *            `vsock: echoed N bytes uppercased`, then close the same way.
 *          timeout=<TSC cycles per step> (default 2e9); wait=<TSC cycles to wait for the host's
 *            connection in listen mode> (default 2e10).
 * Exit 0: ok. Exit 1: failure (one line `vsock: <reason>`). Exit 3: no device. Exit 4: bad mode. */
#include "rt.h"
#include "virtio.h"

/* ---- virtio-vsock (5.10) ---- */
#define VIRTIO_VSOCK_F_STREAM       (1ull << 0)

#define RXQ          0
#define TXQ          1
#define EVENTQ       2

#define HOST_CID     2
#define TYPE_STREAM  1

#define OP_REQUEST         1
#define OP_RESPONSE        2
#define OP_RST             3
#define OP_SHUTDOWN        4
#define OP_RW              5
#define OP_CREDIT_UPDATE   6
#define OP_CREDIT_REQUEST  7

#define SHUTDOWN_RCV   1
#define SHUTDOWN_SEND  2

#define EVENT_TRANSPORT_RESET 0

struct vsock_hdr {                       /* 5.10.6: le, packed, 44 bytes */
    uint64_t src_cid;
    uint64_t dst_cid;
    uint32_t src_port;
    uint32_t dst_port;
    uint32_t len;
    uint16_t type;
    uint16_t op;
    uint32_t flags;
    uint32_t buf_alloc;
    uint32_t fwd_cnt;
} __attribute__((packed));

#define HDR_BYTES    44
#define RX_BUFS      8
#define RX_BYTES     1024
#define WINDOW       (RX_BUFS * RX_BYTES)  /* what we can hold: every rx buffer full */
#define LINE_MAX     256
#define LOCAL_PORT   49152                 /* our port for connections we open */

_Static_assert(sizeof(struct vsock_hdr) == HDR_BYTES, "virtio_vsock_hdr is 44 bytes");

static uint8_t rx_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t tx_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t ev_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t rx_bufs[RX_BUFS][HDR_BYTES + RX_BYTES] __attribute__((aligned(64)));
static struct vsock_hdr tx_hdr __attribute__((aligned(16)));
static uint32_t event_buf;
static char line[LINE_MAX];

static struct vdev dev;
static struct virtq rxq, txq, evq;
static uint64_t timeout;
static uint64_t guest_cid;

/* The one connection. */
static struct {
    uint32_t local_port, peer_port;
    uint32_t peer_buf_alloc, peer_fwd_cnt;   /* the host's last credit values */
    uint32_t tx_cnt;                          /* payload bytes sent */
    uint32_t fwd_cnt;                         /* payload bytes consumed */
    uint32_t fwd_announced;                   /* fwd_cnt as last sent to the host */
    int peer_shut;                            /* SHUTDOWN flags from the host */
} conn;

static void post_rx(uint16_t i) {
    rxq.desc[i].addr = (uint64_t)(uintptr_t)rx_bufs[i];
    rxq.desc[i].len = HDR_BYTES + RX_BYTES;
    rxq.desc[i].flags = VIRTQ_DESC_F_WRITE;
    rxq.desc[i].next = 0;
    vdev_submit(&dev, &rxq, i);
}

static void post_event(void) {
    event_buf = 0xffffffffu;
    evq.desc[0].addr = (uint64_t)(uintptr_t)&event_buf;
    evq.desc[0].len = sizeof event_buf;
    evq.desc[0].flags = VIRTQ_DESC_F_WRITE;
    evq.desc[0].next = 0;
    vdev_submit(&dev, &evq, 0);
}

/* Sends one packet of the connection (payload may be NULL) and waits for the device to use it.
 * Every packet carries our credit. Returns 0, or prints why and returns -1. */
static int send_packet(uint16_t op, uint32_t flags, const void *payload, uint32_t len) {
    tx_hdr.src_cid = guest_cid;
    tx_hdr.dst_cid = HOST_CID;
    tx_hdr.src_port = conn.local_port;
    tx_hdr.dst_port = conn.peer_port;
    tx_hdr.len = len;
    tx_hdr.type = TYPE_STREAM;
    tx_hdr.op = op;
    tx_hdr.flags = flags;
    tx_hdr.buf_alloc = WINDOW;
    tx_hdr.fwd_cnt = conn.fwd_cnt;
    txq.desc[0].addr = (uint64_t)(uintptr_t)&tx_hdr;
    txq.desc[0].len = HDR_BYTES;
    txq.desc[0].flags = len ? VIRTQ_DESC_F_NEXT : 0;
    txq.desc[0].next = 1;
    txq.desc[1].addr = (uint64_t)(uintptr_t)payload;
    txq.desc[1].len = len;
    txq.desc[1].flags = 0;
    txq.desc[1].next = 0;
    vdev_submit(&dev, &txq, 0);
    uint32_t id = 0;
    if (!vdev_poll_used(&dev, &txq, timeout, &id, 0)) {
        rt_printf("vsock: tx packet (op %u) not used within %lu cycles (status 0x%x)\n", op, timeout, vdev_status(&dev));
        return -1;
    }
    if (id != 0) {
        rt_printf("vsock: txq used id %u, expected 0\n", id);
        return -1;
    }
    conn.fwd_announced = conn.fwd_cnt;
    if (op == OP_RW) conn.tx_cnt += len;
    return 0;
}

/* Waits up to `cycles` for the next rx packet; copies its header to *h and its payload (at
 * most RX_BYTES) into `payload`, then gives the buffer back. Returns the payload length,
 * -2 on timeout, or -1 after printing a device error. A packet from anyone but the host to
 * anyone but us is reported and refused. */
static int receive_packet(struct vsock_hdr *h, uint8_t *payload, uint64_t cycles) {
    uint32_t id = 0, len = 0;
    if (!vdev_poll_used(&dev, &rxq, cycles, &id, &len)) return -2;
    if (id >= RX_BUFS) {
        rt_printf("vsock: rxq used id %u, expected 0..%u\n", id, RX_BUFS - 1);
        return -1;
    }
    if (len < HDR_BYTES || len > HDR_BYTES + RX_BYTES) {
        rt_printf("vsock: rxq used len %u is not a header plus at most %u bytes\n", len, RX_BYTES);
        return -1;
    }
    memcpy(h, rx_bufs[id], HDR_BYTES);
    uint32_t n = len - HDR_BYTES;
    if (h->len != n) {
        rt_printf("vsock: packet len %u but %u payload bytes used\n", h->len, n);
        return -1;
    }
    if (h->src_cid != HOST_CID || h->dst_cid != guest_cid || h->type != TYPE_STREAM) {
        rt_printf("vsock: packet from cid %lu to cid %lu, type %u: not ours\n", h->src_cid, h->dst_cid, h->type);
        return -1;
    }
    memcpy(payload, rx_bufs[id] + HDR_BYTES, n);
    post_rx((uint16_t)id);
    return (int)n;
}

/* Bytes we may send now. */
static uint32_t peer_credit(void) {
    uint32_t in_flight = conn.tx_cnt - conn.peer_fwd_cnt;
    return in_flight >= conn.peer_buf_alloc ? 0 : conn.peer_buf_alloc - in_flight;
}

static uint8_t payload_buf[RX_BYTES];

/* Handles one packet of the connection; data goes to line[] from *n on. Returns 1 when the
 * packet was data, 0 for control packets handled here, -1 on an error (printed). */
static int connection_packet(const struct vsock_hdr *h, int len, unsigned *n) {
    if (h->src_port != conn.peer_port || h->dst_port != conn.local_port) {
        rt_printf("vsock: packet for ports %u->%u, connection is %u->%u\n", h->src_port, h->dst_port,
                  conn.peer_port, conn.local_port);
        return -1;
    }
    conn.peer_buf_alloc = h->buf_alloc;
    conn.peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case OP_RW:
        for (int k = 0; k < len; k++) {
            if (*n >= LINE_MAX) {
                rt_printf("vsock: line longer than %u bytes\n", LINE_MAX);
                return -1;
            }
            line[(*n)++] = (char)payload_buf[k];
        }
        conn.fwd_cnt += (uint32_t)len;          /* consumed: copied out of the rx buffer */
        if (conn.fwd_cnt - conn.fwd_announced >= WINDOW / 2 &&
            send_packet(OP_CREDIT_UPDATE, 0, 0, 0))
            return -1;
        return 1;
    case OP_CREDIT_REQUEST:
        return send_packet(OP_CREDIT_UPDATE, 0, 0, 0) ? -1 : 0;
    case OP_CREDIT_UPDATE:
        return 0;
    case OP_SHUTDOWN:
        conn.peer_shut |= (int)(h->flags & (SHUTDOWN_RCV | SHUTDOWN_SEND));
        return 0;
    case OP_RST:
        rt_puts("vsock: the host reset the connection\n");
        return -1;
    default:
        rt_printf("vsock: unexpected op %u on an open connection\n", h->op);
        return -1;
    }
}

/* Reads until a '\n' arrived; returns the line length (with the '\n'), or -1. */
static int read_line(void) {
    unsigned n = 0;
    struct vsock_hdr h;
    while (n == 0 || line[n - 1] != '\n') {
        if (conn.peer_shut & SHUTDOWN_SEND) {
            rt_printf("vsock: the host closed its end after %u bytes, before a full line\n", n);
            return -1;
        }
        int len = receive_packet(&h, payload_buf, timeout);
        if (len == -2) {
            rt_printf("vsock: no complete line within %lu cycles (%u bytes so far)\n", timeout, n);
            return -1;
        }
        if (len < 0 || connection_packet(&h, len, &n) < 0) return -1;
    }
    return (int)n;
}

/* Sends `len` bytes within the host's credit, asking for more when it runs out. */
static int write_all(const char *data, uint32_t len) {
    struct vsock_hdr h;
    unsigned ignored = 0;
    while (len > 0) {
        uint32_t chunk = peer_credit();
        if (chunk == 0) {
            if (send_packet(OP_CREDIT_REQUEST, 0, 0, 0)) return -1;
            int got = receive_packet(&h, payload_buf, timeout);
            if (got == -2) {
                rt_puts("vsock: the host gave no credit\n");
                return -1;
            }
            if (got < 0 || connection_packet(&h, got, &ignored) < 0) return -1;
            continue;
        }
        if (chunk > len) chunk = len;
        if (send_packet(OP_RW, 0, data, chunk)) return -1;
        data += chunk;
        len -= chunk;
    }
    return 0;
}

/* Closes the connection: SHUTDOWN both ways, then the host's RST (control packets and data
 * before it are taken and dropped). */
static int close_connection(void) {
    if (send_packet(OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0, 0)) return -1;
    struct vsock_hdr h;
    for (;;) {
        int len = receive_packet(&h, payload_buf, timeout);
        if (len == -2) {
            rt_puts("vsock: no RST after our SHUTDOWN\n");
            return -1;
        }
        if (len < 0) return -1;
        if (h.op == OP_RST && h.src_port == conn.peer_port && h.dst_port == conn.local_port) return 0;
    }
}

/* Refuses a packet that belongs to no connection of ours (unless it is an RST). */
static int refuse(const struct vsock_hdr *h) {
    if (h->op == OP_RST) return 0;
    uint32_t local = conn.local_port, peer = conn.peer_port;
    conn.local_port = h->dst_port;
    conn.peer_port = h->src_port;
    int rc = send_packet(OP_RST, 0, 0, 0);
    conn.local_port = local;
    conn.peer_port = peer;
    return rc;
}

static int connect_mode(uint32_t port) {
    static const char hello[] = "hello from the guest\n";
    conn.local_port = LOCAL_PORT;
    conn.peer_port = port;
    if (send_packet(OP_REQUEST, 0, 0, 0)) return -1;
    struct vsock_hdr h;
    int len = receive_packet(&h, payload_buf, timeout);
    if (len == -2) {
        rt_printf("vsock: no answer to the connection request to host port %u\n", port);
        return -1;
    }
    if (len < 0) return -1;
    if (h.op == OP_RST) {
        rt_printf("vsock: host port %u refused the connection\n", port);
        return -1;
    }
    if (h.op != OP_RESPONSE || h.src_port != port || h.dst_port != LOCAL_PORT) {
        rt_printf("vsock: answer op %u for ports %u->%u, expected RESPONSE from %u\n", h.op, h.src_port, h.dst_port, port);
        return -1;
    }
    conn.peer_buf_alloc = h.buf_alloc;
    conn.peer_fwd_cnt = h.fwd_cnt;
    rt_printf("vsock: connected to host port %u (host credit %u)\n", port, peer_credit());
    if (write_all(hello, sizeof hello - 1)) return -1;
    int n = read_line();
    if (n < 0) return -1;
    line[n - 1] = 0;
    rt_printf("vsock: host replied: %s\n", line);
    return close_connection();
}

static int listen_mode(uint32_t port, uint64_t wait) {
    rt_printf("vsock: listening on port %u\n", port);
    struct vsock_hdr h;
    uint64_t t0 = rdtsc();
    for (;;) {
        uint64_t spent = rdtsc() - t0;
        int len = spent < wait ? receive_packet(&h, payload_buf, wait - spent) : -2;
        if (len == -2) {
            rt_printf("vsock: no connection to port %u within %lu cycles\n", port, wait);
            return -1;
        }
        if (len < 0) return -1;
        if (h.op == OP_REQUEST && h.dst_port == port) break;
        if (refuse(&h)) return -1;
    }
    conn.local_port = port;
    conn.peer_port = h.src_port;
    conn.peer_buf_alloc = h.buf_alloc;
    conn.peer_fwd_cnt = h.fwd_cnt;
    if (send_packet(OP_RESPONSE, 0, 0, 0)) return -1;
    rt_printf("vsock: accepted a connection from host port %u\n", h.src_port);
    int n = read_line();
    if (n < 0) return -1;
    for (int k = 0; k < n; k++)
        if (line[k] >= 'a' && line[k] <= 'z') line[k] = (char)(line[k] - 'a' + 'A');
    if (write_all(line, (uint32_t)n)) return -1;
    rt_printf("vsock: echoed %d bytes uppercased\n", n);
    return close_connection();
}

int main(void) {
    char mode[16];
    cmdline_str("mode", "connect", mode, sizeof mode);
    int listen = strcmp(mode, "listen") == 0;
    if (!listen && strcmp(mode, "connect") != 0) {
        rt_printf("vsock: unknown mode %s\n", mode);
        return 4;
    }
    uint64_t port = cmdline_u64("port", 1234);
    timeout = cmdline_u64("timeout", 2000000000ull);
    uint64_t wait = cmdline_u64("wait", 20000000000ull);
    if (port > 0xffffffffull) {
        rt_printf("vsock: port %lu does not fit in 32 bits\n", port);
        return 4;
    }

    struct vdev_probe_stats st;
    if (vdev_find(VIRTIO_ID_VSOCK, 0, &dev, &st) != 0) {
        if (st.legacy) rt_printf("vsock: note: legacy virtio-vsock (%s) not supported\n", st.legacy_name);
        if (st.unusable) rt_printf("vsock: note: unusable virtio-vsock: %s\n", st.unusable_reason);
        rt_puts("vsock: no virtio-vsock device\n");
        return 3;
    }
    if (vdev_init(&dev, VIRTIO_VSOCK_F_STREAM) || vdev_queue_setup(&dev, &rxq, RXQ, rx_ring) ||
        vdev_queue_setup(&dev, &txq, TXQ, tx_ring) || vdev_queue_setup(&dev, &evq, EVENTQ, ev_ring) ||
        vdev_driver_ok(&dev)) {
        rt_printf("vsock: %s (%s, status 0x%x)\n", dev.error, dev.name, vdev_status(&dev));
        return 1;
    }
    guest_cid = vdev_config_read64(&dev, 0);
    rt_printf("vsock: %s: guest cid %lu, features 0x%lx, queue sizes %u/%u/%u\n", dev.name, guest_cid,
              dev.driver_features, rxq.num, txq.num, evq.num);
    if (rxq.num < RX_BUFS || txq.num < 2 || evq.num < 1) {
        rt_puts("vsock: queues too small (need 8 rx, 2 tx, 1 event descriptors)\n");
        goto fail;
    }
    for (uint16_t i = 0; i < RX_BUFS; i++) post_rx(i);
    post_event();

    if ((listen ? listen_mode((uint32_t)port, wait) : connect_mode((uint32_t)port)) != 0) goto fail;
    rt_puts("vsock: connection closed\n");

    uint32_t id = 0;
    if (vdev_poll_used(&dev, &evq, 0, &id, 0) && event_buf == EVENT_TRANSPORT_RESET)
        rt_puts("vsock: note: TRANSPORT_RESET event received\n");
    uint32_t s = vdev_status(&dev);
    if (s & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        rt_printf("vsock: device status 0x%x at the end\n", s);
        return 1;
    }
    vdev_reset(&dev);
    return 0;
fail:
    vdev_fail(&dev);
    return 1;
}
