/* A boot sector that checks the BIOS services a PC boot loader relies on, then reports through the debug-exit
 * port 0x501. Loaded by firmware at 0000:7C00 in real mode with DL = boot drive. It:
 *   - prints a line straight to COM1 (port 0x3F8),
 *   - prints a line through int 10h (teletype; with SeaBIOS's serial console it reaches COM1 too),
 *   - reads LBA 1 through int 13h (extended read, AH=42h) and checks the marker there,
 *   - reads the memory map through int 15h E820 and checks that it has RAM at 0 and above 1 MiB,
 * and writes 0x20 | checks to port 0x501: bit 0 the read succeeded, bit 1 the marker matched, bit 2 the map is
 * sane. All checks passing gives 0x27 (tern exits 39; QEMU's isa-debug-exit reports 79).
 * Build: as --32 and ld --oformat binary at 0x7C00 (see the Makefile); the image is this file's two sectors. */

        .code16
/* Variables live below the stack, outside the image. */
        .set    boot_drive, 0x600
        .set    status, 0x601
        .set    e820_seen, 0x602

        .section .text
        .globl _start
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7C00, %sp
        ljmp    $0, $main
main:
        sti
        movb    %dl, boot_drive
        movb    $0x20, status
        movb    $0, e820_seen

        /* COM1 first: SeaBIOS's serial console holds back the last character it was given until more output
         * follows, so a direct write after int 10h output could land inside it. */
        movw    $msg_com1, %si
        call    print_com1
        movw    $msg_int10, %si
        call    print_bios

        /* int 13h AH=42h: read 1 sector at LBA 1 into 0000:8000 */
        movw    $0x8000, %di
        movw    $256, %cx
        xorw    %ax, %ax
        rep stosw
        movw    $dap, %si
        movb    $0x42, %ah
        movb    boot_drive, %dl
        int     $0x13
        jc      read_failed
        orb     $1, status
        movw    $0x8000, %si
        movw    $expected, %di
        movw    $expected_end - expected, %cx
        repe cmpsb
        jne     read_done
        orb     $2, status
        movw    $msg_read, %si
        call    print_bios
        jmp     read_done
read_failed:
        movw    $msg_read_failed, %si
        call    print_bios
read_done:

        /* int 15h E820: walk the map into 0000:9000, 24 bytes per entry */
        xorl    %ebx, %ebx
        xorw    %bp, %bp                /* entries */
        movw    $0x9000, %di
e820_next:
        movl    $0xE820, %eax
        movl    $0x534D4150, %edx       /* 'SMAP' */
        movl    $24, %ecx
        movl    $1, %es:20(%di)         /* ACPI 3 extended attributes: valid */
        int     $0x15
        jc      e820_done
        cmpl    $0x534D4150, %eax
        jne     e820_done
        cmpl    $1, %es:16(%di)         /* type RAM? */
        jne     e820_counted
        cmpl    $0, %es:4(%di)          /* base below 4 GiB */
        jne     e820_counted
        cmpl    $0, %es:(%di)
        jne     1f
        orb     $0x10, e820_seen        /* RAM at 0 */
1:      cmpl    $0x100000, %es:(%di)
        jne     e820_counted
        cmpl    $0x100000, %es:8(%di)   /* at least 1 MiB of it */
        jb      e820_counted
        orb     $0x20, e820_seen        /* RAM at 1 MiB */
e820_counted:
        incw    %bp
        addw    $24, %di
        cmpw    $32, %bp
        jae     e820_done
        testl   %ebx, %ebx
        jnz     e820_next
e820_done:
        movw    %bp, %ax
        movw    $msg_e820_count, %di
        call    hex16
        movw    $msg_e820, %si
        call    print_bios
        cmpb    $0x30, e820_seen
        jne     1f
        cmpw    $3, %bp
        jb      1f
        orb     $4, status
1:
        movb    status, %al
        movw    $msg_status_value, %di
        call    hex8
        movw    $msg_status, %si
        call    print_bios
        movw    $0x3FD, %dx             /* let COM1 drain: transmitter empty */
1:      inb     %dx, %al
        testb   $0x40, %al
        jz      1b
        movb    status, %al
        movw    $0x501, %dx
        outb    %al, %dx
halt:
        hlt
        jmp     halt

/* Prints the NUL-terminated string at %si through int 10h teletype. */
print_bios:
        lodsb
        testb   %al, %al
        jz      2f
        movb    $0x0E, %ah
        movw    $0x0007, %bx
        int     $0x10
        jmp     print_bios
2:      ret

/* Prints the NUL-terminated string at %si on COM1, waiting for the transmitter each byte. */
print_com1:
        lodsb
        testb   %al, %al
        jz      2f
        movb    %al, %ah
        movw    $0x3FD, %dx
1:      inb     %dx, %al
        testb   $0x20, %al
        jz      1b
        movw    $0x3F8, %dx
        movb    %ah, %al
        outb    %al, %dx
        jmp     print_com1
2:      ret


/* Writes %ax as four hex digits at %di. */
hex16:
        pushw   %ax
        movb    %ah, %al
        call    hex8
        popw    %ax
/* Writes %al as two hex digits at %di, advancing %di. */
hex8:
        pushw   %ax
        shrb    $4, %al
        call    hex4
        popw    %ax
hex4:
        andb    $0x0F, %al
        addb    $'0', %al
        cmpb    $'9', %al
        jbe     1f
        addb    $'a' - '0' - 10, %al
1:      movb    %al, (%di)
        incw    %di
        ret

dap:    .byte   16, 0
        .word   1                       /* sectors */
        .word   0x8000, 0               /* offset, segment */
        .quad   1                       /* LBA */

msg_int10:        .asciz "boot: int 10h ok\r\n"
msg_com1:         .asciz "boot: COM1 ok\r\n"
msg_read:         .asciz "boot: int 13h ok\r\n"
msg_read_failed:  .asciz "boot: int 13h failed\r\n"
msg_e820:         .ascii "boot: e820 entries 0x"
msg_e820_count:   .asciz "0000\r\n"
msg_status:       .ascii "boot: status 0x"
msg_status_value: .asciz "00\r\n"
expected:         .ascii "TERN LBA 1"
expected_end:

        .org    510
        .word   0xAA55
/* LBA 1: the marker the boot sector reads back. */
        .ascii  "TERN LBA 1"
        .org    1024
