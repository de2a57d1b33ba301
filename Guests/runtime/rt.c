/* Tern test-guest runtime: serial, printf, exit, boot info, command line, exceptions. */
#include "rt.h"

#define COM1 0x3F8
#define COM1_LSR (COM1 + 5)
#define LSR_THRE 0x20

/* ------------------------------------------------------------------------------------ */
/* Serial                                                                                */
/* ------------------------------------------------------------------------------------ */
static void serial_raw(char c) {
    /* Bounded poll: a VMM that reads unimplemented ports as 0 must not hang us. */
    for (unsigned i = 0; i < 100000; i++)
        if (inb(COM1_LSR) & LSR_THRE) break;
    outb(COM1, (uint8_t)c);
}

void rt_putc(char c) {
    if (c == '\n') serial_raw('\r');
    serial_raw(c);
}

void rt_puts(const char *s) { while (*s) rt_putc(*s++); }

/* ------------------------------------------------------------------------------------ */
/* printf                                                                                */
/* ------------------------------------------------------------------------------------ */
static int emit_padded(const char *s, int len, int width, int left, char pad) {
    int n = 0;
    if (!left) for (; width > len; width--, n++) rt_putc(pad);
    for (int i = 0; i < len; i++, n++) rt_putc(s[i]);
    if (left) for (; width > len; width--, n++) rt_putc(' ');
    return n;
}

int rt_vprintf(const char *fmt, va_list ap) {
    int n = 0;
    for (; *fmt; fmt++) {
        if (*fmt != '%') { rt_putc(*fmt); n++; continue; }
        fmt++;
        int left = 0, width = 0, lng = 0;
        char pad = ' ';
        for (;; fmt++) {
            if (*fmt == '0') pad = '0';
            else if (*fmt == '-') left = 1;
            else break;
        }
        while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'z') { lng = 1; fmt++; }
        char buf[24];
        int len = 0;
        uint64_t u;
        int neg = 0;
        switch (*fmt) {
        case 'd': case 'i': {
            int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
            neg = v < 0;
            u = neg ? -(uint64_t)v : (uint64_t)v;
            goto decimal;
        }
        case 'u':
            u = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
        decimal:
            do { buf[sizeof buf - 1 - len++] = (char)('0' + u % 10); u /= 10; } while (u);
            if (neg) {
                if (pad == '0' && width > 0) { rt_putc('-'); n++; width--; }
                else buf[sizeof buf - 1 - len++] = '-';
            }
            n += emit_padded(buf + sizeof buf - len, len, width, left, pad);
            break;
        case 'p':
            u = (uint64_t)va_arg(ap, void *);
            rt_puts("0x"); n += 2;
            goto hex_lower;
        case 'x': case 'X':
            u = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
        hex_lower: {
            const char *digits = *fmt == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
            do { buf[sizeof buf - 1 - len++] = digits[u & 15]; u >>= 4; } while (u);
            n += emit_padded(buf + sizeof buf - len, len, width, left, pad);
            break;
        }
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            n += emit_padded(s, (int)strlen(s), width, left, ' ');
            break;
        }
        case 'c':
            buf[0] = (char)va_arg(ap, int);
            n += emit_padded(buf, 1, width, left, ' ');
            break;
        case '%':
            rt_putc('%'); n++;
            break;
        case 0:
            return n;
        default:
            rt_putc('%'); rt_putc(*fmt); n += 2;
            break;
        }
    }
    return n;
}

int rt_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = rt_vprintf(fmt, ap);
    va_end(ap);
    return n;
}

/* ------------------------------------------------------------------------------------ */
/* Exit                                                                                  */
/* ------------------------------------------------------------------------------------ */
void rt_exit(uint8_t status) {
    outb(EXIT_PORT, status);
    for (;;) cpu_relax();
}

/* ------------------------------------------------------------------------------------ */
/* Boot info                                                                             */
/* ------------------------------------------------------------------------------------ */
struct hvm_start_info {
    uint32_t magic;            /* 0x336ec578 */
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;     /* version >= 1 */
    uint32_t memmap_entries;   /* version >= 1 */
    uint32_t reserved;
};
#define HVM_START_MAGIC 0x336ec578u
#define MAPPED_LIMIT 0x100000000ull   /* identity map covers the first 4 GiB */

extern volatile uint64_t rt_start_info_pa;   /* stored by the 32-bit entry from %ebx */

static char cmdline_copy[RT_CMDLINE_MAX];
static struct rt_memmap_entry memmap_copy[RT_MEMMAP_MAX];
static unsigned memmap_n;
static uint64_t rsdp_pa;
static int boot_valid;

static int readable(uint64_t pa, uint64_t len) { return pa && pa < MAPPED_LIMIT && len <= MAPPED_LIMIT - pa; }

static void read_boot_info(void) {
    uint64_t pa = rt_start_info_pa;
    if (!readable(pa, sizeof(struct hvm_start_info))) return;
    const volatile struct hvm_start_info *si = (const volatile struct hvm_start_info *)(uintptr_t)pa;
    if (si->magic != HVM_START_MAGIC) {
        rt_printf("guest: bad start_info magic 0x%x at 0x%lx\n", si->magic, pa);
        return;
    }
    boot_valid = 1;
    rsdp_pa = si->rsdp_paddr;
    uint64_t cl = si->cmdline_paddr;
    if (readable(cl, 1)) {
        const volatile char *s = (const volatile char *)(uintptr_t)cl;
        unsigned i = 0;
        for (; i < RT_CMDLINE_MAX - 1 && readable(cl + i, 1) && s[i]; i++) cmdline_copy[i] = s[i];
        cmdline_copy[i] = 0;
    }
    if (si->version >= 1) {
        uint64_t mm = si->memmap_paddr;
        uint32_t n = si->memmap_entries;
        if (n > RT_MEMMAP_MAX) n = RT_MEMMAP_MAX;
        if (n && readable(mm, (uint64_t)n * sizeof(struct rt_memmap_entry))) {
            const volatile struct rt_memmap_entry *e = (const volatile struct rt_memmap_entry *)(uintptr_t)mm;
            for (uint32_t i = 0; i < n; i++) {
                memmap_copy[i].addr = e[i].addr;
                memmap_copy[i].size = e[i].size;
                memmap_copy[i].type = e[i].type;
                memmap_copy[i].reserved = e[i].reserved;
            }
            memmap_n = n;
        }
    }
}

const char *rt_cmdline(void) { return cmdline_copy; }
unsigned rt_memmap_count(void) { return memmap_n; }
const struct rt_memmap_entry *rt_memmap(void) { return memmap_copy; }
uint64_t rt_rsdp_paddr(void) { return rsdp_pa; }
int rt_boot_info_valid(void) { return boot_valid; }

/* ------------------------------------------------------------------------------------ */
/* Command line                                                                          */
/* ------------------------------------------------------------------------------------ */
static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Returns a pointer to the value of `key` (text after '='; "" for a bare `key`), or NULL. */
static const char *find_key(const char *key, size_t *vlen) {
    size_t klen = strlen(key);
    const char *p = cmdline_copy;
    while (*p) {
        while (is_space(*p)) p++;
        if (!*p) break;
        const char *w = p;
        while (*p && !is_space(*p)) p++;
        size_t wlen = (size_t)(p - w);
        if (wlen >= klen && memcmp(w, key, klen) == 0) {
            if (wlen == klen) { *vlen = 0; return p; }
            if (w[klen] == '=') { *vlen = wlen - klen - 1; return w + klen + 1; }
        }
    }
    return NULL;
}

int cmdline_has(const char *key) { size_t l; return find_key(key, &l) != NULL; }

uint64_t cmdline_u64(const char *key, uint64_t def) {
    size_t len;
    const char *v = find_key(key, &len);
    if (!v || !len) return def;
    uint64_t r = 0;
    size_t i = 0;
    int base = 10;
    if (len > 2 && v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) { base = 16; i = 2; }
    for (; i < len; i++) {
        char c = v[i];
        unsigned d;
        if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F') d = (unsigned)(c - 'A' + 10);
        else return def;
        r = r * (uint64_t)base + d;
    }
    return r;
}

const char *cmdline_str(const char *key, const char *def, char *buf, size_t len) {
    size_t vlen;
    const char *v = find_key(key, &vlen);
    if (!v) { v = def ? def : ""; vlen = strlen(v); }
    if (len == 0) return buf;
    if (vlen > len - 1) vlen = len - 1;
    memcpy(buf, v, vlen);
    buf[vlen] = 0;
    return buf;
}

/* ------------------------------------------------------------------------------------ */
/* Ring-3 entry and exceptions                                                           */
/* ------------------------------------------------------------------------------------ */
__attribute__((weak)) void ap_main(unsigned cpu) { (void)cpu; for (;;) cpu_relax(); }

void rt_user_entry(unsigned cpu) {
    if (cpu == 0) {
        read_boot_info();
        rt_exit((uint8_t)main());
    }
    ap_main(cpu);
    for (;;) cpu_relax();
}

struct rt_exception_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error, rip, cs, rflags, rsp, ss;
};

extern char kstacks[];

/* Ring 0 (emulated on nested hosts). Either serves an rt_ring0_call request (ud2 + "Tern"
 * from ring 3) and returns, or prints the exception and exits 0x7e. */
__attribute__((used)) void rt_exception(struct rt_exception_frame *f) {
    if (f->vector == 6 && (f->cs & 3) == 3) {
        const volatile uint8_t *ip = (const volatile uint8_t *)(uintptr_t)f->rip;
        if (ip[0] == 0x0f && ip[1] == 0x0b && *(const volatile uint32_t *)(ip + 2) == RING0_CALL_MAGIC) {
            f->rax = ((uint64_t (*)(uint64_t))(uintptr_t)f->rdi)(f->rsi);
            f->rip += 6;
            return;
        }
    }
    uint64_t sp = (uint64_t)(uintptr_t)f, base = (uint64_t)(uintptr_t)kstacks;
    rt_printf("guest: exception %lu (error 0x%lx) at RIP 0x%lx on cpu ", f->vector, f->error, f->rip);
    if (sp >= base && sp < base + (uint64_t)MAX_CPUS * KSTACK_SIZE) rt_printf("%lu\n", (sp - base) / KSTACK_SIZE);
    else rt_puts("?\n");
    rt_printf("guest: cs 0x%lx rflags 0x%lx rsp 0x%lx\n", f->cs, f->rflags, f->rsp);
    if (f->vector == 14) {
        uint64_t cr2;
        __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
        rt_printf("guest: page fault address 0x%lx\n", cr2);
    }
    rt_exit(EXIT_EXCEPTION);
}

static uint64_t r0_cpuid(uint64_t arg) {
    uint32_t *r = (uint32_t *)(uintptr_t)arg;
    cpuid(r[0], r[2], &r[0], &r[1], &r[2], &r[3]);
    return 0;
}

void rt_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    r[0] = leaf; r[1] = 0; r[2] = sub; r[3] = 0;
    rt_ring0_call(r0_cpuid, (uint64_t)(uintptr_t)r);
}

/* ------------------------------------------------------------------------------------ */
/* libc bits the compiler may call                                                       */
/* ------------------------------------------------------------------------------------ */
void *memset(void *d, int c, size_t n) {
    void *r = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return r;
}

void *memcpy(void *d, const void *s, size_t n) {
    void *r = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return r;
}

int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
}

size_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

int strcmp(const char *a, const char *b) {
    while (*a && *a == *b) { a++; b++; }
    return (unsigned char)*a - (unsigned char)*b;
}
