/* C shim over <linux/kvm.h> and a few libc facilities that Swift cannot import directly:
 * function-like macros (ioctl request numbers, SIGRTMIN, CPU_SET), flexible array members
 * and signal handler installation. Everything here is a thin, stateless wrapper. */
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/epoll.h>

#define CKVM_REQUEST(name) static inline unsigned long ckvm_##name(void) { return name; }
CKVM_REQUEST(KVM_GET_API_VERSION)
CKVM_REQUEST(KVM_CREATE_VM)
CKVM_REQUEST(KVM_CHECK_EXTENSION)
CKVM_REQUEST(KVM_GET_VCPU_MMAP_SIZE)
CKVM_REQUEST(KVM_GET_SUPPORTED_CPUID)
CKVM_REQUEST(KVM_GET_MSR_INDEX_LIST)
CKVM_REQUEST(KVM_CREATE_VCPU)
CKVM_REQUEST(KVM_SET_USER_MEMORY_REGION)
CKVM_REQUEST(KVM_SET_TSS_ADDR)
CKVM_REQUEST(KVM_SET_IDENTITY_MAP_ADDR)
CKVM_REQUEST(KVM_CREATE_IRQCHIP)
CKVM_REQUEST(KVM_CREATE_PIT2)
CKVM_REQUEST(KVM_IRQ_LINE)
CKVM_REQUEST(KVM_ENABLE_CAP)
CKVM_REQUEST(KVM_RUN)
CKVM_REQUEST(KVM_GET_REGS)
CKVM_REQUEST(KVM_SET_REGS)
CKVM_REQUEST(KVM_GET_SREGS)
CKVM_REQUEST(KVM_SET_SREGS)
CKVM_REQUEST(KVM_GET_FPU)
CKVM_REQUEST(KVM_SET_FPU)
CKVM_REQUEST(KVM_SET_CPUID2)
CKVM_REQUEST(KVM_SET_MSRS)
CKVM_REQUEST(KVM_GET_MSRS)
CKVM_REQUEST(KVM_TRANSLATE)
CKVM_REQUEST(KVM_GET_MP_STATE)
CKVM_REQUEST(KVM_SET_MP_STATE)
CKVM_REQUEST(KVM_SET_TSC_KHZ)
CKVM_REQUEST(KVM_GET_TSC_KHZ)
CKVM_REQUEST(KVM_GET_VCPU_EVENTS)
CKVM_REQUEST(KVM_IOEVENTFD)
CKVM_REQUEST(KVM_SET_VCPU_EVENTS)
CKVM_REQUEST(KVM_SET_GSI_ROUTING)
CKVM_REQUEST(KVM_IRQFD)
CKVM_REQUEST(KVM_SIGNAL_MSI)
CKVM_REQUEST(KVM_GET_XSAVE)
CKVM_REQUEST(KVM_GET_XSAVE2)
CKVM_REQUEST(KVM_SET_XSAVE)
CKVM_REQUEST(KVM_GET_XCRS)
CKVM_REQUEST(KVM_SET_XCRS)
CKVM_REQUEST(KVM_GET_LAPIC)
CKVM_REQUEST(KVM_SET_LAPIC)
CKVM_REQUEST(KVM_GET_DEBUGREGS)
CKVM_REQUEST(KVM_SET_DEBUGREGS)
CKVM_REQUEST(KVM_GET_IRQCHIP)
CKVM_REQUEST(KVM_SET_IRQCHIP)
CKVM_REQUEST(KVM_GET_PIT2)
CKVM_REQUEST(KVM_SET_PIT2)
CKVM_REQUEST(KVM_GET_CLOCK)
CKVM_REQUEST(KVM_SET_CLOCK)
CKVM_REQUEST(KVM_KVMCLOCK_CTRL)
CKVM_REQUEST(KVM_GET_DIRTY_LOG)
CKVM_REQUEST(KVM_CLEAR_DIRTY_LOG)
#undef CKVM_REQUEST

/* Offset of the MMIO data bytes inside struct kvm_run (inside an anonymous union, which Swift cannot take offsets of). */
static inline size_t ckvm_mmio_data_offset(void) { return offsetof(struct kvm_run, mmio.data); }

/* A kvm_cpuid2 with room for `capacity` entries, allocated with calloc. Free with free(). */
struct kvm_cpuid2 *ckvm_cpuid2_alloc(uint32_t capacity);
struct kvm_cpuid_entry2 *ckvm_cpuid2_entries(struct kvm_cpuid2 *cpuid);

/* A kvm_msrs with room for `count` entries, allocated with calloc. Free with free(). */
struct kvm_msrs *ckvm_msrs_alloc(uint32_t count);
struct kvm_msr_entry *ckvm_msrs_entries(struct kvm_msrs *msrs);

/* The MSR indices KVM_GET_MSR_INDEX_LIST reports, written to `indices` (room for `capacity`); returns the count, or
 * -1 with errno set (E2BIG: `capacity` is too small). */
int ckvm_msr_index_list(int kvm, uint32_t *indices, uint32_t capacity);

/* A kvm_irq_routing with `count` entries takes ckvm_irq_routing_size(count) bytes; ckvm_irq_routing_init zeroes
 * such a buffer and sets its entry count, and the setters fill entry `index` (the buffer has no flexible-array
 * or anonymous-union access Swift could use). */
size_t ckvm_irq_routing_size(uint32_t count);
void ckvm_irq_routing_init(struct kvm_irq_routing *routing, uint32_t count);
void ckvm_irq_routing_set_irqchip(struct kvm_irq_routing *routing, uint32_t index, uint32_t gsi, uint32_t irqchip,
                                  uint32_t pin);
void ckvm_irq_routing_set_msi(struct kvm_irq_routing *routing, uint32_t index, uint32_t gsi, uint64_t address,
                              uint32_t data);

/* The signal used to kick vCPU threads out of KVM_RUN (SIGRTMIN). */
int ckvm_kick_signal(void);
/* Installs a no-op handler (no SA_RESTART) for `signal`, so that delivering it interrupts KVM_RUN with EINTR. */
int ckvm_install_kick_handler(int signal);
/* Unblocks `signal` in the calling thread. */
int ckvm_unblock_signal(int signal);

/* The calling thread's kernel thread id. */
pid_t ckvm_gettid(void);
/* Sets the CPU affinity of thread `tid` (0: caller) to the `count` CPUs listed. Returns 0 or -1 with errno. */
int ckvm_set_affinity(pid_t tid, const int32_t *cpus, int count);
/* Writes the CPUs thread `tid` may run on into `cpus` (capacity entries); returns the count or -1 with errno. */
int ckvm_get_affinity(pid_t tid, int32_t *cpus, int capacity);

/* memfd_create(2) with MFD_CLOEXEC. */
int ckvm_memfd_create(const char *name);

#endif
