/* Tern test-guest runtime API. Everything here is usable from ring 3 (where guests run);
 * serial, printing and exit also work from ring 0. */
#ifndef TERN_GUEST_RT_H
#define TERN_GUEST_RT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "layout.h"

/* Guest entry points. main() runs on the BSP (CPU index 0) in ring 3; its return value is
 * the exit status. ap_main() runs on every started AP in ring 3 (default: spin forever). */
int main(void);
void ap_main(unsigned cpu);

/* ---- port I/O, TSC, misc ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

/* ---- serial (COM1 0x3F8, polled) and printing ---- */
void rt_putc(char c);                       /* "\n" becomes "\r\n" */
void rt_puts(const char *s);                /* no newline appended */
int rt_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int rt_vprintf(const char *fmt, va_list ap);
/* Supported: %d %i %u %x %X %p %s %c %%, flags '0' '-', width, length l/ll/z. */

/* ---- exit ---- */
/* Writes the status byte to port 0x501, then spins with pause. Tern exits with `status`;
 * QEMU's isa-debug-exit exits with (status << 1) | 1. */
__attribute__((noreturn)) void rt_exit(uint8_t status);

/* ---- boot information (copied from the PVH start_info by the BSP before main) ---- */
struct rt_memmap_entry { uint64_t addr, size; uint32_t type, reserved; };
#define RT_MEMMAP_RAM 1
#define RT_MEMMAP_MAX 128
#define RT_CMDLINE_MAX 1024

const char *rt_cmdline(void);               /* never NULL; "" when absent */
unsigned rt_memmap_count(void);
const struct rt_memmap_entry *rt_memmap(void);
uint64_t rt_rsdp_paddr(void);
int rt_boot_info_valid(void);               /* 1 when start_info magic matched */

/* Command line: whitespace-separated words; `key=value` pairs. */
uint64_t cmdline_u64(const char *key, uint64_t def);   /* decimal or 0x hex */
/* Copies the value of `key` (or `def` when absent) into buf (NUL-terminated, truncated to
 * len-1) and returns buf. */
const char *cmdline_str(const char *key, const char *def, char *buf, size_t len);
int cmdline_has(const char *key);

/* ---- spinlock ---- */
typedef struct { volatile uint32_t v; } spinlock_t;
static inline void spin_lock(spinlock_t *l) {
    while (__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&l->v, __ATOMIC_RELAXED)) cpu_relax();
}
static inline void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->v, 0, __ATOMIC_RELEASE); }

/* ---- ring 0 ---- */
/* Runs fn(arg) in ring 0 and returns its result. Implemented as `ud2` followed by the bytes
 * "Tern": the #UD handler recognises the marker, calls fn in ring 0 and resumes after it.
 * (int $n from ring 3 raises #UD on nested hosts that emulate ring 0, and syscall would
 * need more ring-0 setup.) Ring 0 is slow (emulated) on such hosts: keep fn tiny. */
static inline uint64_t rt_ring0_call(uint64_t (*fn)(uint64_t), uint64_t arg) {
    uint64_t ret;
    __asm__ volatile("ud2\n\t.ascii \"Tern\"" : "=a"(ret) : "D"(fn), "S"(arg) : "memory");
    return ret;
}

/* CPUID executed in ring 0. On nested hosts that emulate ring 0, CPUID in ring 3 is
 * answered by the outer host (host values, not the VMM's KVM_SET_CPUID2 table, and the
 * host's APIC IDs); the ring-0 form always sees what the VMM configured. r = {eax,ebx,ecx,edx}. */
void rt_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]);

/* ---- misc ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);

extern char _image_start[], _image_end[], _end[];
extern char ap_tramp_start[], ap_tramp_end[];
extern volatile uint32_t rt_next_cpu;       /* 1 + number of APs that reached long mode */

#endif
