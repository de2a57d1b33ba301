/* crash: ends badly on purpose, to exercise the VMM's error reporting. cmdline mode=
 *   mmio-exec (default)  ring 0 jumps to 0xD0000000 (no RAM there): KVM cannot emulate
 *   int3                 ring 0 executes int3
 *   triple               ring 0 loads an IDT with limit 0, then ud2: triple fault / shutdown
 *   ud2-user             ring 3 executes ud2: the guest's handler prints and exits 0x7e
 * If the guest survives the attempt it prints "crash: survived mode <m>" and exits 3. */
#include "rt.h"

static uint64_t r0_mmio_exec(uint64_t arg) {
    (void)arg;
    ((void (*)(void))(uintptr_t)0xD0000000ul)();
    return 0;
}

static uint64_t r0_int3(uint64_t arg) {
    (void)arg;
    __asm__ volatile("int3");
    return 0;
}

static uint64_t r0_triple(uint64_t arg) {
    (void)arg;
    static const struct __attribute__((packed)) { uint16_t limit; uint64_t base; } empty = { 0, 0 };
    __asm__ volatile("lidt %0\n\tud2" : : "m"(empty));
    return 0;
}

int main(void) {
    char mode[32];
    cmdline_str("mode", "mmio-exec", mode, sizeof mode);
    rt_printf("crash: mode %s\n", mode);
    if (!strcmp(mode, "mmio-exec")) rt_ring0_call(r0_mmio_exec, 0);
    else if (!strcmp(mode, "int3")) rt_ring0_call(r0_int3, 0);
    else if (!strcmp(mode, "triple")) rt_ring0_call(r0_triple, 0);
    else if (!strcmp(mode, "ud2-user")) __asm__ volatile("ud2");
    else {
        rt_printf("crash: unknown mode %s (mmio-exec, int3, triple, ud2-user)\n", mode);
        return 4;
    }
    rt_printf("crash: survived mode %s\n", mode);
    return 3;
}
