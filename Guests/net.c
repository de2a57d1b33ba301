/* net: drives a virtio-net (device ID 1) device from ring 3 by polling, over virtio-pci or
 * virtio-mmio. Written from the VIRTIO 1.2 spec, 5.1, for Tern's user-mode network (slirp:
 * guest 10.0.2.15, gateway 10.0.2.2). Queue 0 receives into 16 device-writable 2 KiB buffers;
 * queue 1 sends one chain at a time: the 12-byte virtio-net header, then the frame. It
 * negotiates MAC, STATUS and MRG_RXBUF (no offloads), reads its MAC address from the
 * configuration space, and answers ARP requests for 10.0.2.15 whenever it waits for a frame.
 *
 * Cmdline: mode=test (default): ARP request for 10.0.2.2, check the reply; ICMP echo request to
 *            10.0.2.2, check the reply (identifier, sequence, payload, checksums).
 *          mode=udp-echo: the same, then prints `net: ready` and echoes UDP datagrams sent to
 *            10.0.2.15:port back to their sender (addresses and ports swapped, UDP checksum 0),
 *            `count` of them, waiting up to `wait` TSC cycles for each.
 *          ip=A.B.C.D, gw=A.B.C.D (defaults 10.0.2.15 and 10.0.2.2);
 *          port=N (default 7); count=N (default 1); timeout=<TSC cycles per frame, default 2e9>;
 *          wait=<TSC cycles, default 60e9>.
 * Exit 0: ok (last line `net: ok: ...`). Exit 1: failure (one line `net: <reason>`).
 * Exit 3: no device. Exit 4: bad mode. */
#include "rt.h"
#include "virtio.h"

/* ---- virtio-net (5.1) ---- */
#define VIRTIO_NET_F_MAC       (1ull << 5)
#define VIRTIO_NET_F_MRG_RXBUF (1ull << 15)
#define VIRTIO_NET_F_STATUS    (1ull << 16)
#define VIRTIO_NET_S_LINK_UP   1
#define CFG_MAC                0         /* u8[6] */
#define CFG_STATUS             6         /* le16 */
#define HDR_LEN                12        /* flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers */

#define RX_BUFS                16
#define RX_BUF_SIZE            2048
#define ETH_HLEN               14
#define ETH_MAX                1514
#define ETH_P_IP               0x0800
#define ETH_P_ARP              0x0806
#define IP_ICMP                1
#define IP_UDP                 17
#define PING_BYTES             56
#define PING_ID                0x7465    /* "te" */

static uint8_t rx_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t tx_ring[VIRTQ_MEM_SIZE] __attribute__((aligned(4096)));
static uint8_t rx_bufs[RX_BUFS][RX_BUF_SIZE] __attribute__((aligned(4096)));
static uint8_t tx_hdr[HDR_LEN] __attribute__((aligned(16)));
static uint8_t tx_frame[ETH_MAX] __attribute__((aligned(16)));

static struct vdev dev;
static struct virtq rxq, txq;
static unsigned rx_posted;               /* buffers 0..rx_posted-1 live on descriptors of the same index */
static uint64_t timeout;
static uint8_t my_mac[6], gw_mac[6];
/* This guest's address and the gateway's: 10.0.2.15 and 10.0.2.2 (user-mode networking), or ip= and gw=. */
static uint32_t my_ip = 0x0a00020f, gw_ip = 0x0a000202;
static char my_ip_text[16] = "10.0.2.15", gw_ip_text[16] = "10.0.2.2";

/* Parses a dotted quad; 0 when it is not one. */
static uint32_t parse_ipv4(const char *s) {
    uint32_t value = 0;
    for (int part = 0; part < 4; part++) {
        unsigned octet = 0, digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 4) { octet = octet * 10 + (unsigned)(*s++ - '0'); digits++; }
        if (!digits || octet > 255) return 0;
        value = value << 8 | octet;
        if (part < 3 && *s++ != '.') return 0;
    }
    return *s ? 0 : value;
}
static unsigned arp_answered;

/* ---- bytes in network order ---- */
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, (uint16_t)v); }

/* RFC 1071 ones'-complement sum; 0 over data that includes a correct checksum. */
static uint16_t csum(const uint8_t *p, unsigned len) {
    uint32_t sum = 0;
    for (unsigned i = 0; i + 1 < len; i += 2) sum += get16(p + i);
    if (len & 1) sum += (uint32_t)p[len - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void print_ip(const char *prefix, uint32_t ip) {
    rt_printf("%s%u.%u.%u.%u", prefix, ip >> 24, (ip >> 16) & 0xff, (ip >> 8) & 0xff, ip & 0xff);
}

static void print_mac(const char *prefix, const uint8_t *m) {
    rt_printf("%s%02x:%02x:%02x:%02x:%02x:%02x", prefix, m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* ---- queues ---- */
static void rx_post(uint16_t i) {
    rxq.desc[i].addr = (uint64_t)(uintptr_t)rx_bufs[i];
    rxq.desc[i].len = RX_BUF_SIZE;
    rxq.desc[i].flags = VIRTQ_DESC_F_WRITE;
    rxq.desc[i].next = 0;
    vdev_publish(&rxq, i);
}

/* Sends the `len`-byte frame in tx_frame behind a zero header (no offloads) and waits for the
 * device to use the chain. Returns 0, or -1 after printing why. */
static int tx_send(unsigned len) {
    memset(tx_hdr, 0, sizeof tx_hdr);
    txq.desc[0].addr = (uint64_t)(uintptr_t)tx_hdr;
    txq.desc[0].len = HDR_LEN;
    txq.desc[0].flags = VIRTQ_DESC_F_NEXT;
    txq.desc[0].next = 1;
    txq.desc[1].addr = (uint64_t)(uintptr_t)tx_frame;
    txq.desc[1].len = len;
    txq.desc[1].flags = 0;
    txq.desc[1].next = 0;
    vdev_submit(&dev, &txq, 0);
    uint32_t id, used_len;
    if (!vdev_poll_used(&dev, &txq, timeout, &id, &used_len)) {
        rt_printf("net: transmit of %u bytes timed out (used.idx %u, status 0x%x)\n", len, txq.used->idx,
                  vdev_status(&dev));
        return -1;
    }
    if (id != 0) {
        rt_printf("net: transmit used id %u, expected 0\n", id);
        return -1;
    }
    return 0;
}

/* Ethernet header in tx_frame towards `dst`; returns the offset of the payload. */
static unsigned eth_header(const uint8_t *dst, uint16_t type) {
    memcpy(tx_frame, dst, 6);
    memcpy(tx_frame + 6, my_mac, 6);
    put16(tx_frame + 12, type);
    return ETH_HLEN;
}

/* ARP (RFC 826) for IPv4 over Ethernet: op 1 request, 2 reply. */
static int send_arp(uint16_t op, const uint8_t *dst_mac, const uint8_t *target_mac, uint32_t target_ip) {
    static const uint8_t broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t zero[6];
    uint8_t *a = tx_frame + eth_header(dst_mac ? dst_mac : broadcast, ETH_P_ARP);
    put16(a, 1);                           /* Ethernet */
    put16(a + 2, ETH_P_IP);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    memcpy(a + 8, my_mac, 6);
    put32(a + 14, my_ip);
    memcpy(a + 18, target_mac ? target_mac : zero, 6);
    put32(a + 24, target_ip);
    return tx_send(ETH_HLEN + 28);
}

/* IPv4 header (RFC 791) in tx_frame after the Ethernet header, with its checksum; returns the
 * offset of the payload. */
static unsigned ip_header(const uint8_t *dst_mac, uint32_t dst, uint8_t proto, unsigned payload) {
    uint8_t *ip = tx_frame + eth_header(dst_mac, ETH_P_IP);
    memset(ip, 0, 20);
    ip[0] = 0x45;
    put16(ip + 2, (uint16_t)(20 + payload));
    put16(ip + 4, 1);
    ip[6] = 0x40;                          /* don't fragment */
    ip[8] = 64;
    ip[9] = proto;
    put32(ip + 12, my_ip);
    put32(ip + 16, dst);
    put16(ip + 10, csum(ip, 20));
    return ETH_HLEN + 20;
}

/* Checks a received IPv4 packet from `f` (a frame of `len` bytes): version, header length,
 * total length and header checksum. Returns the header length, or 0. */
static unsigned ip_valid(const uint8_t *f, unsigned len) {
    if (len < ETH_HLEN + 20 || get16(f + 12) != ETH_P_IP || (f[14] >> 4) != 4) return 0;
    unsigned ihl = (f[14] & 0xf) * 4u;
    unsigned total = get16(f + 16);
    if (ihl < 20 || total < ihl || ETH_HLEN + total > len) return 0;
    if (csum(f + 14, ihl) != 0) {
        rt_puts("net: note: IPv4 header checksum wrong, packet ignored\n");
        return 0;
    }
    return ihl;
}

/* What to do with each received frame: returns 1 when it was the one waited for, 0 to keep
 * waiting, -1 on a failure already printed. */
typedef int (*frame_handler)(const uint8_t *f, unsigned len);

/* Receives frames for up to `cycles`, answering ARP requests for my_ip and passing every
 * other frame to `handle`; reposts each buffer. Returns what `handle` returned last, or 0
 * when the time ran out. */
static int rx_wait(uint64_t cycles, frame_handler handle) {
    uint64_t start = rdtsc();
    for (;;) {
        uint64_t spent = rdtsc() - start;
        if (spent >= cycles) return 0;
        uint32_t id, len;
        if (!vdev_poll_used(&dev, &rxq, cycles - spent, &id, &len)) return 0;
        if (id >= rx_posted || len < HDR_LEN + ETH_HLEN || len > RX_BUF_SIZE) {
            rt_printf("net: receive used id %u len %u, expected id < %u and len %u..%u\n", id, len, rx_posted,
                      HDR_LEN + ETH_HLEN, RX_BUF_SIZE);
            return -1;
        }
        const uint8_t *h = rx_bufs[id];
        unsigned buffers = h[10] | h[11] << 8;
        if (h[0] != 0 || h[1] != 0 || buffers != 1) {
            rt_printf("net: receive header flags 0x%x gso %u num_buffers %u, expected 0, 0, 1\n", h[0], h[1], buffers);
            return -1;
        }
        const uint8_t *f = h + HDR_LEN;
        unsigned flen = len - HDR_LEN;
        int r = 0;
        if (flen >= ETH_HLEN + 28 && get16(f + 12) == ETH_P_ARP && get16(f + 20) == 1 && get32(f + 38) == my_ip) {
            uint8_t mac[6];
            memcpy(mac, f + 22, 6);
            r = send_arp(2, mac, mac, get32(f + 28));
            arp_answered++;
        } else {
            r = handle(f, flen);
        }
        rx_post((uint16_t)id);
        vdev_notify(&rxq);
        if (r != 0) return r;
    }
}

/* ---- ARP and ping to the gateway ---- */
static int want_arp_reply(const uint8_t *f, unsigned len) {
    if (len < ETH_HLEN + 28 || get16(f + 12) != ETH_P_ARP || get16(f + 20) != 2 || get32(f + 28) != gw_ip) return 0;
    if (memcmp(f + 32, my_mac, 6) != 0 || get32(f + 38) != my_ip || memcmp(f, my_mac, 6) != 0) {
        rt_puts("net: ARP reply from the gateway is not addressed to this MAC and IP\n");
        return -1;
    }
    memcpy(gw_mac, f + 22, 6);
    return 1;
}

static uint16_t ping_seq;

static int want_echo_reply(const uint8_t *f, unsigned len) {
    unsigned ihl = ip_valid(f, len);
    if (!ihl || f[14 + 9] != IP_ICMP || get32(f + 26) != gw_ip || get32(f + 30) != my_ip) return 0;
    const uint8_t *icmp = f + ETH_HLEN + ihl;
    unsigned ilen = get16(f + 16) - ihl;
    if (ilen < 8 || icmp[0] != 0 || icmp[1] != 0) {
        rt_printf("net: ICMP type %u code %u from %s, expected an echo reply (0, 0)\n", icmp[0], icmp[1], gw_ip_text);
        return -1;
    }
    if (csum(icmp, ilen) != 0) { rt_puts("net: echo reply checksum is wrong\n"); return -1; }
    if (get16(icmp + 4) != PING_ID || get16(icmp + 6) != ping_seq) {
        rt_printf("net: echo reply id 0x%x seq %u, expected 0x%x and %u\n", get16(icmp + 4), get16(icmp + 6), PING_ID,
                  ping_seq);
        return -1;
    }
    if (ilen != 8 + PING_BYTES) { rt_printf("net: echo reply carries %u bytes, expected %u\n", ilen - 8, PING_BYTES); return -1; }
    for (unsigned i = 0; i < PING_BYTES; i++)
        if (icmp[8 + i] != (uint8_t)(i * 7 + ping_seq)) {
            rt_printf("net: echo reply payload differs at byte %u\n", i);
            return -1;
        }
    return 1;
}

static int ping_gateway(uint64_t *cycles) {
    ping_seq++;
    unsigned at = ip_header(gw_mac, gw_ip, IP_ICMP, 8 + PING_BYTES);
    uint8_t *icmp = tx_frame + at;
    icmp[0] = 8;                           /* echo request */
    icmp[1] = 0;
    put16(icmp + 2, 0);
    put16(icmp + 4, PING_ID);
    put16(icmp + 6, ping_seq);
    for (unsigned i = 0; i < PING_BYTES; i++) icmp[8 + i] = (uint8_t)(i * 7 + ping_seq);
    put16(icmp + 2, csum(icmp, 8 + PING_BYTES));
    uint64_t t0 = rdtsc();
    if (tx_send(at + 8 + PING_BYTES)) return -1;
    int r = rx_wait(timeout, want_echo_reply);
    *cycles = rdtsc() - t0;
    if (r == 0) rt_printf("net: no echo reply from %s within %lu cycles\n", gw_ip_text, timeout);
    return r == 1 ? 0 : -1;
}

/* ---- UDP echo ---- */
static uint16_t udp_port;
static unsigned echoed;

static int echo_udp(const uint8_t *f, unsigned len) {
    unsigned ihl = ip_valid(f, len);
    if (!ihl || f[14 + 9] != IP_UDP || get32(f + 30) != my_ip) return 0;
    const uint8_t *udp = f + ETH_HLEN + ihl;
    unsigned ulen = get16(f + 16) - ihl;
    if (ulen < 8 || get16(udp + 2) != udp_port) return 0;
    if (get16(udp + 4) < 8 || get16(udp + 4) > ulen) { rt_puts("net: UDP length field is wrong\n"); return -1; }
    unsigned data = get16(udp + 4) - 8u;
    if (ETH_HLEN + 20 + 8 + data > ETH_MAX) { rt_printf("net: UDP datagram of %u bytes is too large to echo\n", data); return -1; }
    uint32_t peer = get32(f + 26);
    uint16_t peer_port = get16(udp);
    unsigned at = ip_header(f + 6, peer, IP_UDP, 8 + data);
    uint8_t *out = tx_frame + at;
    put16(out, udp_port);
    put16(out + 2, peer_port);
    put16(out + 4, (uint16_t)(8 + data));
    put16(out + 6, 0);                     /* no checksum: legal over IPv4 */
    memcpy(out + 8, udp + 8, data);
    if (tx_send(at + 8 + data)) return -1;
    echoed++;
    print_ip("net: echoed ", peer);
    rt_printf(":%u, %u bytes\n", peer_port, data);
    return 1;
}

int main(void) {
    char mode[32];
    cmdline_str("mode", "test", mode, sizeof mode);
    int udp_echo = strcmp(mode, "udp-echo") == 0;
    if (!udp_echo && strcmp(mode, "test") != 0) {
        rt_printf("net: unknown mode %s\n", mode);
        return 4;
    }
    timeout = cmdline_u64("timeout", 2000000000ull);
    uint64_t wait = cmdline_u64("wait", 60000000000ull);
    uint64_t count = cmdline_u64("count", 1);
    udp_port = (uint16_t)cmdline_u64("port", 7);
    cmdline_str("ip", my_ip_text, my_ip_text, sizeof my_ip_text);
    cmdline_str("gw", gw_ip_text, gw_ip_text, sizeof gw_ip_text);
    my_ip = parse_ipv4(my_ip_text);
    gw_ip = parse_ipv4(gw_ip_text);
    if (!my_ip || !gw_ip) {
        rt_printf("net: ip=%s gw=%s: give dotted IPv4 addresses\n", my_ip_text, gw_ip_text);
        return 4;
    }

    struct vdev_probe_stats st;
    if (vdev_find(VIRTIO_ID_NET, 0, &dev, &st) != 0) {
        if (st.legacy) rt_printf("net: note: legacy virtio-net (%s) not supported\n", st.legacy_name);
        if (st.unusable) rt_printf("net: note: unusable virtio-net: %s\n", st.unusable_reason);
        rt_puts("net: no virtio-net device\n");
        return 3;
    }
    if (vdev_init(&dev, VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF) ||
        vdev_queue_setup(&dev, &rxq, 0, rx_ring) || vdev_queue_setup(&dev, &txq, 1, tx_ring) ||
        vdev_driver_ok(&dev)) {
        rt_printf("net: %s (%s, status 0x%x)\n", dev.error, dev.name, vdev_status(&dev));
        return 1;
    }
    if (!(dev.driver_features & VIRTIO_NET_F_MAC)) {
        rt_printf("net: the device offers no MAC address (features 0x%lx)\n", dev.device_features);
        goto fail;
    }
    for (unsigned i = 0; i < 6; i++) my_mac[i] = vdev_config_read8(&dev, CFG_MAC + i);
    if (my_mac[0] & 1) { print_mac("net: configuration MAC ", my_mac); rt_puts(" is multicast\n"); goto fail; }
    if ((dev.driver_features & VIRTIO_NET_F_STATUS) && !(vdev_config_read16(&dev, CFG_STATUS) & VIRTIO_NET_S_LINK_UP)) {
        rt_puts("net: link is down\n");
        goto fail;
    }
    print_mac("net: ", my_mac);
    rt_printf(" on %s, features 0x%lx, queues of %u and %u\n", dev.name, dev.driver_features, rxq.num, txq.num);

    rx_posted = rxq.num < RX_BUFS ? rxq.num : RX_BUFS;
    for (unsigned i = 0; i < rx_posted; i++) rx_post((uint16_t)i);
    vdev_notify(&rxq);

    if (send_arp(1, 0, 0, gw_ip)) goto fail;
    int r = rx_wait(timeout, want_arp_reply);
    if (r == 0) rt_printf("net: no ARP reply from %s within %lu cycles\n", gw_ip_text, timeout);
    if (r != 1) goto fail;
    uint64_t rtt;
    if (ping_gateway(&rtt)) goto fail;
    rt_printf("net: %s", gw_ip_text);
    print_mac(" is at ", gw_mac);
    rt_printf(", echo reply after %lu cycles\n", rtt);

    if (udp_echo) {
        rt_printf("net: ready: echoing UDP on %s:%u\n", my_ip_text, udp_port);
        while (echoed < count) {
            r = rx_wait(wait, echo_udp);
            if (r == 0) rt_printf("net: no UDP datagram for port %u within %lu cycles\n", udp_port, wait);
            if (r != 1) goto fail;
        }
    }
    uint32_t s = vdev_status(&dev);
    if (s & (VIRTIO_STATUS_DEVICE_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        rt_printf("net: device status 0x%x after the exchange\n", s);
        return 1;
    }
    vdev_reset(&dev);
    if (udp_echo)
        rt_printf("net: ok: ARP, ping and %u UDP echo(es) on port %u (%s)\n", echoed, udp_port, dev.name);
    else
        rt_printf("net: ok: ARP and ping to %s (%s, %u ARP requests answered)\n", gw_ip_text, dev.name, arp_answered);
    return 0;
fail:
    vdev_fail(&dev);
    return 1;
}
