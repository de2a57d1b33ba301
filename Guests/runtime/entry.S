/*
 * Tern test-guest runtime: boot path.
 *
 * PVH entry (32-bit protected mode, paging off, %ebx = struct hvm_start_info)
 *   -> long mode with static identity page tables (first 4 GiB, 2 MiB pages, user-accessible)
 *   -> per-CPU TSS + IDT
 *   -> iretq to ring 3 (IOPL 3, IF 0) on the CPU's user stack, where all real work happens.
 *
 * Ring-0 code runs instruction-emulated on nested KVM hosts (~2M instr/s) and some
 * instructions are not emulated at all there, so everything here is kept short and
 * loop-free except for a 33-entry IDT fill on the BSP. Ring 0 never touches low memory:
 * it only stores %ebx; ring 3 copies the start_info, cmdline and memmap.
 */
#include "layout.h"

/* ------------------------------------------------------------------------------------ */
/* Xen ELF note: XEN_ELFNOTE_PHYS32_ENTRY (18) = 32-bit physical entry point.            */
/* ------------------------------------------------------------------------------------ */
        .section .note.Xen, "a", @note
        .p2align 2
        .long   4                       /* namesz: "Xen\0" */
        .long   4                       /* descsz */
        .long   18                      /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz  "Xen"
        .long   pvh_entry

/* ------------------------------------------------------------------------------------ */
/* 32-bit PVH entry (BSP)                                                                */
/* ------------------------------------------------------------------------------------ */
        .section .text.entry, "ax"
        .code32
        .globl  pvh_entry
pvh_entry:
        cli
        cld
        movl    %ebx, rt_start_info_pa  /* low half of a zero-initialised .quad */
        lgdtl   gdt_ptr                 /* 32-bit form reads limit + low 4 bytes of base */
        movl    %cr4, %eax
        orl     $0x20, %eax             /* PAE */
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $0xC0000080, %ecx       /* EFER */
        rdmsr
        orl     $0x100, %eax            /* LME */
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000001, %eax       /* PG | PE */
        movl    %eax, %cr0
        ljmpl   $SEL_KCODE, $bsp_long

        .code64
bsp_long:
        movl    $SEL_KDATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        xorl    %eax, %eax
        movl    %eax, %fs
        movl    %eax, %gs
        lgdt    gdt_ptr                 /* reload with the full 64-bit base */
        movl    $(kstacks + KSTACK_SIZE), %esp  /* CPU 0 ring-0 stack (zero-extends) */

        /* Fill IDT vectors 0..31 with exception stubs (DPL 0 interrupt gates). */
        movl    $idt, %edi
        movl    $exc_stubs, %esi
        movabsq $0x00008E0000000000 | (SEL_KCODE << 16), %r8
        movl    $32, %ecx
1:      call    set_gate
        addl    $16, %edi
        addl    $16, %esi
        decl    %ecx
        jnz     1b
        xorl    %edi, %edi              /* CPU index 0 */
        jmp     cpu_enter_user

/* set_gate: %rdi = gate, %esi = handler (< 4 GiB), %r8 = selector/type bits. High qword of
 * the gate stays zero (IDT is in BSS). Clobbers %rax, %rdx. */
set_gate:
        movl    %esi, %eax
        movl    %esi, %edx
        andl    $0xffff, %eax
        andl    $0xffff0000, %edx
        shlq    $32, %rdx
        orq     %rdx, %rax
        orq     %r8, %rax
        movq    %rax, (%rdi)
        ret

/* cpu_enter_user: %edi = CPU index, %rsp = top of that CPU's ring-0 stack.
 * Sets up the CPU's TSS and descriptor, loads TR and the IDT, then iretq's to ring 3
 * at user_start with %edi still holding the CPU index. */
cpu_enter_user:
        movl    %edi, %ebx
        shll    $7, %ebx                /* TSS_STRIDE = 128 */
        addl    $tss_array, %ebx        /* %rbx = &tss[cpu] */
        movq    %rsp, 4(%rbx)           /* RSP0 */
        /* All TSSs share one all-zero I/O permission bitmap (every port allowed) right
         * after tss_array: ring 3 can do in/out even when IOPL is 0. The IRETQ below asks
         * for IOPL 3 too, but nested hosts that emulate ring 0 drop IOPL on that IRETQ. */
        movl    %edi, %esi
        shll    $7, %esi
        negl    %esi
        addl    $(MAX_CPUS * TSS_STRIDE), %esi   /* %esi = io_bitmap - &tss[cpu] */
        movw    %si, 102(%rbx)
        addl    $IO_BITMAP_SIZE, %esi   /* TSS limit: bitmap + one spare byte */

        movl    %edi, %ecx
        shll    $4, %ecx
        addl    $(gdt + SEL_TSS0), %ecx /* %rcx = &gdt[TSS descriptor of cpu] */
        movl    %ebx, %eax
        andl    $0x00ffffff, %eax
        shlq    $16, %rax               /* base[23:0] -> bits 16..39 */
        orq     %rsi, %rax              /* limit (< 64 KiB) */
        movl    %ebx, %edx
        andl    $0xff000000, %edx
        shlq    $32, %rdx               /* base[31:24] -> bits 56..63 */
        orq     %rdx, %rax
        movabsq $0x0000890000000000, %rdx /* present, DPL 0, available 64-bit TSS */
        orq     %rdx, %rax
        movq    %rax, (%rcx)
        movq    $0, 8(%rcx)

        movl    %edi, %eax
        shll    $4, %eax
        addl    $SEL_TSS0, %eax
        ltr     %ax
        lidt    idt_ptr

        movl    $(SEL_UDATA | 3), %eax
        movl    %eax, %ds
        movl    %eax, %es

        leal    1(%rdi), %eax
        imull   $USTACK_SIZE, %eax, %eax
        addl    $ustacks, %eax          /* top of this CPU's user stack */
        pushq   $(SEL_UDATA | 3)
        pushq   %rax
        pushq   $USER_RFLAGS
        pushq   $(SEL_UCODE | 3)
        pushq   $user_start
        iretq

/* ------------------------------------------------------------------------------------ */
/* AP path: 64-bit part. The real-mode trampoline below jumps here.                      */
/* ------------------------------------------------------------------------------------ */
ap_long:
        movl    $SEL_KDATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        xorl    %eax, %eax
        movl    %eax, %fs
        movl    %eax, %gs
        lgdt    gdt_ptr
        movl    $1, %eax
        lock xaddl %eax, rt_next_cpu    /* dense CPU index: 1, 2, ... */
        cmpl    $MAX_CPUS, %eax
        jae     ap_park
        movl    %eax, %edi
        leal    1(%rax), %ecx
        shll    $12, %ecx               /* KSTACK_SIZE = 4096 */
        addl    $kstacks, %ecx
        movl    %ecx, %esp
        jmp     cpu_enter_user
ap_park:                                /* more CPUs than MAX_CPUS: stay in ring 0, halted */
        cli
        hlt
        jmp     ap_park

/* ------------------------------------------------------------------------------------ */
/* Ring 3 entry, all CPUs. %edi = CPU index.                                             */
/* ------------------------------------------------------------------------------------ */
user_start:
        andq    $-16, %rsp
        call    rt_user_entry
        ud2

/* ------------------------------------------------------------------------------------ */
/* Exception stubs: 16 bytes apart, vector i at exc_stubs + 16*i.                         */
/* ------------------------------------------------------------------------------------ */
        .macro  exc_stub vec, has_error
        .p2align 4
        .if     \has_error == 0
        pushq   $0
        .endif
        pushq   $\vec
        jmp     exc_common
        .endm

        .p2align 4
exc_stubs:
        exc_stub 0, 0
        exc_stub 1, 0
        exc_stub 2, 0
        exc_stub 3, 0
        exc_stub 4, 0
        exc_stub 5, 0
        exc_stub 6, 0
        exc_stub 7, 0
        exc_stub 8, 1
        exc_stub 9, 0
        exc_stub 10, 1
        exc_stub 11, 1
        exc_stub 12, 1
        exc_stub 13, 1
        exc_stub 14, 1
        exc_stub 15, 0
        exc_stub 16, 0
        exc_stub 17, 1
        exc_stub 18, 0
        exc_stub 19, 0
        exc_stub 20, 0
        exc_stub 21, 1
        exc_stub 22, 0
        exc_stub 23, 0
        exc_stub 24, 0
        exc_stub 25, 0
        exc_stub 26, 0
        exc_stub 27, 0
        exc_stub 28, 0
        exc_stub 29, 1
        exc_stub 30, 1
        exc_stub 31, 0

        .p2align 4
exc_common:
        pushq   %rax
        pushq   %rbx
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %rbp
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rsp, %rdi              /* struct rt_exception_frame * */
        movq    %rsp, %rbx
        andq    $-16, %rsp
        call    rt_exception            /* returns only for an rt_ring0_call request */
        movq    %rbx, %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rbp
        popq    %rdi
        popq    %rsi
        popq    %rdx
        popq    %rcx
        popq    %rbx
        popq    %rax
        addq    $16, %rsp               /* vector, error code */
        iretq

/* ------------------------------------------------------------------------------------ */
/* AP real-mode trampoline. Ring 3 copies [ap_tramp_start, ap_tramp_end) to               */
/* AP_TRAMPOLINE (0x8000) before sending SIPI vector 0x08. Position independent (uses    */
/* CS-relative data), goes straight from real mode to long mode (PE and PG together).    */
/* ------------------------------------------------------------------------------------ */
        .code16
        .p2align 4
        .globl  ap_tramp_start, ap_tramp_end
ap_tramp_start:
        cli
        cld
        movw    %cs, %ax
        movw    %ax, %ds
        lgdtl   ap_gdt_ptr - ap_tramp_start
        movl    %cr4, %eax
        orl     $0x20, %eax             /* PAE */
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $0xC0000080, %ecx
        rdmsr
        orl     $0x100, %eax            /* LME */
        wrmsr
        movl    $0x80000011, %eax       /* PG | ET | PE */
        movl    %eax, %cr0
        ljmpl   $SEL_KCODE, $ap_long
        .p2align 3
ap_gdt_ptr:
        .word   gdt_end - gdt - 1
        .long   gdt
ap_tramp_end:
        .code64

/* ------------------------------------------------------------------------------------ */
/* Data                                                                                  */
/* ------------------------------------------------------------------------------------ */
        .data
        .p2align 3
        .globl  rt_start_info_pa, rt_next_cpu
rt_start_info_pa:
        .quad   0
rt_next_cpu:
        .long   1

        .p2align 4
gdt:
        .quad   0
        .quad   0x00AF9B000000FFFF      /* 0x08 kernel code, 64-bit */
        .quad   0x00CF93000000FFFF      /* 0x10 kernel data */
        .quad   0x00AFFB000000FFFF      /* 0x18 user code, 64-bit, DPL 3 */
        .quad   0x00CFF3000000FFFF      /* 0x20 user data, DPL 3 */
        .fill   2 * MAX_CPUS, 8, 0      /* 0x28: 16-byte TSS descriptor per CPU */
gdt_end:

        .p2align 3
        .word   0, 0, 0
gdt_ptr:
        .word   gdt_end - gdt - 1
        .quad   gdt
        .word   0, 0, 0
idt_ptr:
        .word   256 * 16 - 1
        .quad   idt

/* Identity page tables for 0..4 GiB, 2 MiB pages, present|writable|user (|PCD|PWT for the
 * top GiB, which holds the LAPIC/IOAPIC and other MMIO). Static: no ring-0 loops. */
        .section .data.pagetables, "aw"
        .p2align 12
        .globl  pml4
pml4:
        .quad   pdpt + 0x7
        .fill   511, 8, 0
pdpt:
        .quad   pd + 0x0000 + 0x7
        .quad   pd + 0x1000 + 0x7
        .quad   pd + 0x2000 + 0x7
        .quad   pd + 0x3000 + 0x7
        .fill   508, 8, 0
pd:
        .set    i, 0
        .rept   2048
        .if     i >= 1536
        .quad   (i << 21) | 0x9f        /* PS | PCD | PWT | U | W | P */
        .else
        .quad   (i << 21) | 0x87        /* PS | U | W | P */
        .endif
        .set    i, i + 1
        .endr

/* ------------------------------------------------------------------------------------ */
/* BSS (must be zero at entry, as ELF requires for p_memsz > p_filesz)                   */
/* ------------------------------------------------------------------------------------ */
        .bss
        .p2align 12
idt:
        .skip   256 * 16
        .globl  tss_array, kstacks, ustacks
tss_array:
        .skip   MAX_CPUS * TSS_STRIDE
io_bitmap:                              /* must directly follow tss_array */
        .skip   IO_BITMAP_SIZE + 16
        .p2align 12
kstacks:
        .skip   MAX_CPUS * KSTACK_SIZE
ustacks:
        .skip   MAX_CPUS * USTACK_SIZE

        .section .note.GNU-stack, "", @progbits
