/* smp: starts all APs with INIT-SIPI-SIPI (from ring 3, via the user-mapped xAPIC page) and
 * waits until the expected number of vCPUs has checked in.
 * Exit 0: all N checked in. Exit 1: timeout (~10e9 TSC cycles). */
#include "rt.h"

#define LAPIC_BASE   0xFEE00000ul
#define LAPIC_SVR    0x0F0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_BUSY     (1u << 12)
#define ICR_ALL_BUT_SELF (3u << 18)
#define ICR_ASSERT   (1u << 14)
#define ICR_INIT     (5u << 8)
#define ICR_STARTUP  (6u << 8)

static spinlock_t print_lock;
static volatile uint32_t checked_in = 1;       /* the BSP counts itself */

static inline volatile uint32_t *lapic(uint32_t reg) { return (volatile uint32_t *)(LAPIC_BASE + reg); }

/* CPUID runs in ring 0 (rt_cpuid): in ring 3 a nested host answers it with its own values. */
static uint32_t my_apic_id(void) {
    uint32_t r[4];
    rt_cpuid(1, 0, r);
    return r[1] >> 24;
}

void ap_main(unsigned cpu) {
    (void)cpu;
    uint32_t id = my_apic_id();
    spin_lock(&print_lock);
    rt_printf("smp: cpu %u checked in\n", id);
    __atomic_fetch_add(&checked_in, 1, __ATOMIC_SEQ_CST);   /* lock xadd */
    spin_unlock(&print_lock);
    for (;;) cpu_relax();
}

static unsigned expected_cpus(const char **source) {
    uint64_t n = cmdline_u64("cpus", 0);
    if (n) { *source = "cmdline"; return (unsigned)n; }
    uint32_t r[4];
    rt_cpuid(0, 0, r);
    if (r[0] >= 0xB) {
        rt_cpuid(0xB, 1, r);
        if (r[1] & 0xFFFF) { *source = "cpuid leaf 0xb"; return r[1] & 0xFFFF; }
    }
    rt_cpuid(1, 0, r);
    if (r[3] & (1u << 28)) {                    /* HTT */
        uint32_t count = (r[1] >> 16) & 0xFF;
        if (count) { *source = "cpuid leaf 1"; return count; }
    }
    *source = "default";
    return 1;
}

static void delay_cycles(uint64_t cycles) {
    uint64_t t0 = rdtsc();
    while (rdtsc() - t0 < cycles) cpu_relax();
}

static void icr_send(uint32_t lo) {
    for (unsigned i = 0; i < 1000000 && (*lapic(LAPIC_ICR_LO) & ICR_BUSY); i++) cpu_relax();
    *lapic(LAPIC_ICR_HI) = 0;
    *lapic(LAPIC_ICR_LO) = lo;
}

int main(void) {
    const char *source;
    unsigned n = expected_cpus(&source);
    if (n > MAX_CPUS) {
        rt_printf("smp: %u vCPUs expected, only %u supported\n", n, (unsigned)MAX_CPUS);
        n = MAX_CPUS;
    }
    rt_printf("smp: bsp apic id %u, expecting %u vCPUs (from %s)\n", my_apic_id(), n, source);

    if (n > 1) {
        /* Boot info was copied before main(), so low memory is ours now. */
        memcpy((void *)AP_TRAMPOLINE, ap_tramp_start, (size_t)(ap_tramp_end - ap_tramp_start));
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        *lapic(LAPIC_SVR) = *lapic(LAPIC_SVR) | 0x1FF;     /* software-enable, spurious vector 0xff */
        icr_send(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT);
        delay_cycles(100000);
        icr_send(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | (AP_TRAMPOLINE >> 12));
        delay_cycles(50000);
        icr_send(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | (AP_TRAMPOLINE >> 12));
    }

    uint64_t t0 = rdtsc();
    while (__atomic_load_n(&checked_in, __ATOMIC_ACQUIRE) < n && rdtsc() - t0 < 10000000000ull)
        cpu_relax();

    spin_lock(&print_lock);
    uint32_t k = __atomic_load_n(&checked_in, __ATOMIC_ACQUIRE);
    if (k >= n) {
        rt_printf("smp: all %u vCPUs checked in\n", n);
        rt_exit(0);
    }
    rt_printf("smp: only %u of %u vCPUs checked in\n", k, n);
    rt_exit(1);
}
