/* Constants shared by entry.S and the C runtime. Keep in sync with README.md. */
#ifndef TERN_GUEST_LAYOUT_H
#define TERN_GUEST_LAYOUT_H

#define MAX_CPUS        64
#define KSTACK_SIZE     4096            /* ring-0 stack per CPU (TSS.RSP0) */
#define USTACK_SIZE     8192            /* ring-3 stack per CPU */
#define TSS_STRIDE      128             /* one 104-byte TSS per CPU, padded */
#define IO_BITMAP_SIZE  8192            /* shared all-zero I/O permission bitmap */

#define SEL_KCODE       0x08
#define SEL_KDATA       0x10
#define SEL_UCODE       0x18            /* used with RPL 3: 0x1b */
#define SEL_UDATA       0x20            /* used with RPL 3: 0x23 */
#define SEL_TSS0        0x28            /* CPU i's TSS descriptor is at 0x28 + 16*i */

#define USER_RFLAGS     0x3002          /* IOPL=3, IF=0 */
#define RING0_CALL_MAGIC 0x6e726554u    /* "Tern": follows the ud2 of rt_ring0_call */

#define AP_TRAMPOLINE   0x8000          /* real-mode AP entry (SIPI vector 0x08) */

#define EXIT_PORT       0x501
#define EXIT_EXCEPTION  0x7e

#endif
