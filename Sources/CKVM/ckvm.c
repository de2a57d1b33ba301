#define _GNU_SOURCE
#include "CKVM.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

struct kvm_cpuid2 *ckvm_cpuid2_alloc(uint32_t capacity) {
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(struct kvm_cpuid2) + capacity * sizeof(struct kvm_cpuid_entry2));
    if (cpuid) cpuid->nent = capacity;
    return cpuid;
}

struct kvm_cpuid_entry2 *ckvm_cpuid2_entries(struct kvm_cpuid2 *cpuid) { return cpuid->entries; }

struct kvm_msrs *ckvm_msrs_alloc(uint32_t count) {
    struct kvm_msrs *msrs = calloc(1, sizeof(struct kvm_msrs) + count * sizeof(struct kvm_msr_entry));
    if (msrs) msrs->nmsrs = count;
    return msrs;
}

struct kvm_msr_entry *ckvm_msrs_entries(struct kvm_msrs *msrs) { return msrs->entries; }

int ckvm_msr_index_list(int kvm, uint32_t *indices, uint32_t capacity) {
    struct kvm_msr_list *list = calloc(1, sizeof(struct kvm_msr_list) + capacity * sizeof(uint32_t));
    if (!list) return -1;
    list->nmsrs = capacity;
    int result = ioctl(kvm, KVM_GET_MSR_INDEX_LIST, list);
    if (result >= 0) {
        memcpy(indices, list->indices, list->nmsrs * sizeof(uint32_t));
        result = (int)list->nmsrs;
    }
    int saved = errno;
    free(list);
    errno = saved;
    return result;
}

size_t ckvm_irq_routing_size(uint32_t count) {
    return sizeof(struct kvm_irq_routing) + count * sizeof(struct kvm_irq_routing_entry);
}

void ckvm_irq_routing_init(struct kvm_irq_routing *routing, uint32_t count) {
    memset(routing, 0, ckvm_irq_routing_size(count));
    routing->nr = count;
}

void ckvm_irq_routing_set_irqchip(struct kvm_irq_routing *routing, uint32_t index, uint32_t gsi, uint32_t irqchip,
                                  uint32_t pin) {
    struct kvm_irq_routing_entry *entry = &routing->entries[index];
    entry->gsi = gsi;
    entry->type = KVM_IRQ_ROUTING_IRQCHIP;
    entry->u.irqchip.irqchip = irqchip;
    entry->u.irqchip.pin = pin;
}

void ckvm_irq_routing_set_msi(struct kvm_irq_routing *routing, uint32_t index, uint32_t gsi, uint64_t address,
                              uint32_t data) {
    struct kvm_irq_routing_entry *entry = &routing->entries[index];
    entry->gsi = gsi;
    entry->type = KVM_IRQ_ROUTING_MSI;
    entry->u.msi.address_lo = (uint32_t)address;
    entry->u.msi.address_hi = (uint32_t)(address >> 32);
    entry->u.msi.data = data;
}

int ckvm_kick_signal(void) { return SIGRTMIN; }

static void kick_handler(int signal, siginfo_t *info, void *context) {
    (void)signal; (void)info; (void)context;
}

int ckvm_install_kick_handler(int signal) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = kick_handler;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    return sigaction(signal, &action, NULL);
}

int ckvm_unblock_signal(int signal) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signal);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

pid_t ckvm_gettid(void) { return (pid_t)syscall(SYS_gettid); }

int ckvm_set_affinity(pid_t tid, const int32_t *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) { errno = EINVAL; return -1; }
        CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(tid, sizeof set, &set);
}

int ckvm_get_affinity(pid_t tid, int32_t *cpus, int capacity) {
    cpu_set_t set;
    if (sched_getaffinity(tid, sizeof set, &set) != 0) return -1;
    int count = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && count < capacity; cpu++)
        if (CPU_ISSET(cpu, &set)) cpus[count++] = cpu;
    return count;
}

int ckvm_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }
