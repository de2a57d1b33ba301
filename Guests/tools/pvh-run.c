/* pvh-run: minimal /dev/kvm PVH loader (host tool), to check the test guests without QEMU or
 * firmware, and as a reference for the VMM-side contract: load PT_LOADs at p_paddr, find the
 * Xen note (type 18), put start_info/memmap/cmdline in low memory (default 0x8000, which the
 * smp guest later overwrites with its AP trampoline: proves the guest copies boot info first),
 * enter in 32-bit protected mode with %ebx = start_info, in-kernel irqchip for INIT/SIPI.
 * Usage: pvh-run [-m MiB] [-c cpus] [-a cmdline] [-s start_info_addr] guest.elf
 * Serial (port 0x3F8) goes to stdout; a one-line summary (status, time, exit counts by
 * KVM_EXIT_* reason; 63 = KVM_RUN retried after EAGAIN/EINTR) goes to stderr.
 * Exit status: the guest's port-0x501 byte; 100 shutdown (triple fault); 101 KVM internal
 * error (e.g. emulation failure); 102 anything else. */
#include <elf.h>
#include <errno.h>
#include <err.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int kvm, vm;
static uint8_t *mem;
static size_t mem_size;
static struct kvm_cpuid2 *cpuid;
static int ncpus = 1;
static uint32_t entry32, start_info_pa = 0x8000;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static double t_start;
static unsigned long exits[64];

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

static void finish(int status, const char *why) {
    pthread_mutex_lock(&out_lock);
    fflush(stdout);
    fprintf(stderr, "pvh-run: %s, status %d after %.1f ms; exits:", why, status, (now() - t_start) * 1e3);
    for (int i = 0; i < 64; i++) if (exits[i]) fprintf(stderr, " %d:%lu", i, exits[i]);
    fprintf(stderr, "\n");
    exit(status);
}

static void load_elf(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) err(1, "%s", path);
    struct stat st; fstat(fd, &st);
    uint8_t *f = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    Elf64_Ehdr *eh = (Elf64_Ehdr *)f;
    if (memcmp(eh->e_ident, ELFMAG, 4) || eh->e_ident[EI_CLASS] != ELFCLASS64) errx(1, "not ELF64");
    for (int i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr *ph = (Elf64_Phdr *)(f + eh->e_phoff + i * eh->e_phentsize);
        if (ph->p_type == PT_LOAD) {
            if (ph->p_paddr + ph->p_memsz > mem_size) errx(1, "segment beyond RAM");
            memcpy(mem + ph->p_paddr, f + ph->p_offset, ph->p_filesz);
            memset(mem + ph->p_paddr + ph->p_filesz, 0, ph->p_memsz - ph->p_filesz);
        } else if (ph->p_type == PT_NOTE) {
            size_t off = 0;
            while (off + 12 <= ph->p_filesz) {
                Elf64_Nhdr *n = (Elf64_Nhdr *)(f + ph->p_offset + off);
                const char *name = (const char *)(n + 1);
                const uint8_t *desc = (const uint8_t *)name + ((n->n_namesz + 3) & ~3u);
                if (n->n_namesz == 4 && !memcmp(name, "Xen", 4) && n->n_type == 18 && n->n_descsz >= 4)
                    memcpy(&entry32, desc, 4);
                off += 12 + ((n->n_namesz + 3) & ~3u) + ((n->n_descsz + 3) & ~3u);
            }
        }
    }
    if (!entry32) errx(1, "no PVH note");
}

static void setup_boot_info(const char *cmdline) {
    /* start_info, then memmap, then cmdline, all packed at start_info_pa */
    uint8_t *si = mem + start_info_pa;
    uint64_t memmap_pa = start_info_pa + 64, cmd_pa = memmap_pa + 3 * 24;
    struct { uint64_t a, s; uint32_t t, r; } mm[3] = {
        { 0, 0x9fc00, 1, 0 }, { 0xf0000, 0x10000, 2, 0 }, { 0x100000, mem_size - 0x100000, 1, 0 } };
    memcpy(mem + memmap_pa, mm, sizeof mm);
    strcpy((char *)mem + cmd_pa, cmdline);
    uint32_t h[4] = { 0x336ec578, 1, 0, 0 };
    uint64_t q[4] = { 0, cmd_pa, 0, memmap_pa };
    uint32_t e[2] = { 3, 0 };
    memcpy(si, h, 16); memcpy(si + 16, q, 32); memcpy(si + 48, e, 8);
}

static void *vcpu_thread(void *arg) {
    long id = (long)arg;
    int fd = ioctl(vm, KVM_CREATE_VCPU, id);
    if (fd < 0) err(1, "KVM_CREATE_VCPU");
    size_t csz = sizeof *cpuid + cpuid->nent * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *c = malloc(csz);
    memcpy(c, cpuid, csz);
    for (unsigned i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        if (e->function == 1) e->ebx = (e->ebx & 0x00ffffff) | ((uint32_t)id << 24);
        if (e->function == 0xb) e->edx = id;
    }
    if (ioctl(fd, KVM_SET_CPUID2, c) < 0) err(1, "KVM_SET_CPUID2");
    struct kvm_run *run = mmap(NULL, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (id == 0) {
        struct kvm_sregs s; ioctl(fd, KVM_GET_SREGS, &s);
        struct kvm_segment cs = { .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 11, .present = 1, .s = 1, .db = 1, .g = 1 };
        struct kvm_segment ds = cs; ds.selector = 0x18; ds.type = 3;
        struct kvm_segment tr = { .limit = 0x67, .type = 11, .present = 1 };
        s.cs = cs; s.ds = s.es = s.fs = s.gs = s.ss = ds; s.tr = tr;
        s.cr0 = 0x11; s.cr4 = 0; s.efer = 0;
        if (ioctl(fd, KVM_SET_SREGS, &s) < 0) err(1, "SET_SREGS");
        struct kvm_regs r = { .rip = entry32, .rbx = start_info_pa, .rflags = 2, .rsp = 0xdeadbeef /* PVH: no valid stack */ };
        if (ioctl(fd, KVM_SET_REGS, &r) < 0) err(1, "SET_REGS");
    }
    for (;;) {
        if (ioctl(fd, KVM_RUN, 0) < 0) { if (errno == EAGAIN || errno == EINTR) { __atomic_fetch_add(&exits[63], 1, __ATOMIC_RELAXED); continue; } warn("KVM_RUN cpu %ld", id); finish(102, "KVM_RUN failed"); }
        __atomic_fetch_add(&exits[run->exit_reason & 63], 1, __ATOMIC_RELAXED);
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint8_t *d = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == 0x3f8) {
                pthread_mutex_lock(&out_lock); fwrite(d, 1, run->io.size * run->io.count, stdout); fflush(stdout); pthread_mutex_unlock(&out_lock);
            } else if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == 0x501) {
                finish(d[0], "guest exit");
            } else if (run->io.direction == KVM_EXIT_IO_IN) {
                memset(d, run->io.port == 0x3fd ? 0x60 : 0xff, run->io.size * run->io.count);
            }
            break;
        }
        case KVM_EXIT_MMIO:
            fprintf(stderr, "pvh-run: cpu %ld MMIO %s 0x%llx len %u\n", id, run->mmio.is_write ? "write" : "read",
                    (unsigned long long)run->mmio.phys_addr, run->mmio.len);
            if (!run->mmio.is_write) memset(run->mmio.data, 0xff, 8);
            break;
        case KVM_EXIT_SHUTDOWN: finish(100, "shutdown (triple fault)");
        case KVM_EXIT_INTERNAL_ERROR: {
            struct kvm_regs r; ioctl(fd, KVM_GET_REGS, &r);
            fprintf(stderr, "pvh-run: cpu %ld internal error suberror %u at rip 0x%llx\n", id, run->internal.suberror, (unsigned long long)r.rip);
            finish(101, "internal error");
        }
        default: {
            struct kvm_regs r; ioctl(fd, KVM_GET_REGS, &r);
            fprintf(stderr, "pvh-run: cpu %ld exit reason %u at rip 0x%llx\n", id, run->exit_reason, (unsigned long long)r.rip);
            finish(102, "unexpected exit");
        }
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    int opt; size_t mib = 256; const char *cmdline = "";
    while ((opt = getopt(argc, argv, "m:c:a:s:")) != -1) {
        if (opt == 'm') mib = strtoul(optarg, NULL, 0);
        else if (opt == 'c') ncpus = atoi(optarg);
        else if (opt == 'a') cmdline = optarg;
        else if (opt == 's') start_info_pa = strtoul(optarg, NULL, 0);
        else errx(2, "usage");
    }
    if (optind >= argc) errx(2, "usage: pvh-run [-m MiB] [-c cpus] [-a cmdline] [-s addr] guest.elf");
    t_start = now();
    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) err(1, "KVM_CREATE_VM");
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) err(1, "KVM_CREATE_IRQCHIP");
    mem_size = mib << 20;
    mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    struct kvm_userspace_memory_region region = { .slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uint64_t)mem };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) err(1, "SET_USER_MEMORY_REGION");
    cpuid = calloc(1, sizeof *cpuid + 256 * sizeof(struct kvm_cpuid_entry2));
    cpuid->nent = 256;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) err(1, "GET_SUPPORTED_CPUID");
    for (unsigned i = 0; i < cpuid->nent; i++) {
        struct kvm_cpuid_entry2 *e = &cpuid->entries[i];
        if (e->function == 1) e->ebx = (e->ebx & 0xff00ffff) | ((uint32_t)ncpus << 16), e->edx |= 1u << 28;
        if (e->function == 0xb && e->index == 0) e->ebx = 1, e->ecx = 0x100;
        if (e->function == 0xb && e->index == 1) e->ebx = ncpus, e->ecx = 0x201;
    }
    load_elf(argv[optind]);
    setup_boot_info(cmdline);
    pthread_t t[256];
    for (long i = ncpus - 1; i >= 0; i--) {    /* APs first so they exist before the BSP sends SIPIs */
        if (i == 0) vcpu_thread(0);
        pthread_create(&t[i], NULL, vcpu_thread, (void *)i);
        usleep(1000);
    }
    return 0;
}
