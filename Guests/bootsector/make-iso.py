#!/usr/bin/env python3
"""Wraps the boot-sector test (build/bootsector.img's first 1024 bytes) in an ISO 9660 image with an El Torito
no-emulation boot entry, for booting it from a CD-ROM. Layout, in 2048-byte sectors: 1 the "TERN LBA 1" marker
the boot sector reads back (int 13h reads 2048-byte sectors from a CD), 16 the primary volume descriptor, 17 the
boot record, 18 the set terminator, 19 the boot catalog, 20 the boot image (loaded at 0x7C00), 21 the root
directory. Usage: make-iso.py BOOTSECTOR_IMG OUTPUT_ISO"""
import struct
import sys

SECTOR = 2048
BOOT_IMAGE, CATALOG, ROOT, TOTAL = 20, 19, 21, 32


def both16(value):
    return struct.pack("<H", value) + struct.pack(">H", value)


def both32(value):
    return struct.pack("<I", value) + struct.pack(">I", value)


def directory_record(extent, name):
    body = both32(extent) + both32(SECTOR) + bytes(7) + bytes([2, 0, 0]) + both16(1) + bytes([len(name)]) + name
    record = bytes([33 + len(name), 0]) + body
    return record + bytes(len(record) % 2)


def main(source, output):
    with open(source, "rb") as handle:
        boot = handle.read(1024)
    image = bytearray(SECTOR * TOTAL)
    image[SECTOR:SECTOR + 10] = b"TERN LBA 1"

    pvd = bytearray(SECTOR)
    pvd[0:7] = b"\x01CD001\x01"
    pvd[40:72] = b"TERN_BOOT_TEST".ljust(32)
    pvd[80:88] = both32(TOTAL)
    pvd[120:124] = both16(1)
    pvd[124:128] = both16(1)
    pvd[128:132] = both16(SECTOR)
    pvd[156:190] = directory_record(ROOT, b"\x00")
    pvd[881] = 1
    image[16 * SECTOR:17 * SECTOR] = pvd

    record = bytearray(SECTOR)
    record[0:7] = b"\x00CD001\x01"
    record[7:39] = b"EL TORITO SPECIFICATION".ljust(32, b"\x00")
    record[71:75] = struct.pack("<I", CATALOG)
    image[17 * SECTOR:18 * SECTOR] = record
    image[18 * SECTOR:18 * SECTOR + 7] = b"\xffCD001\x01"

    validation = bytearray(struct.pack("<BBH24sHBB", 1, 0, 0, b"TERN", 0, 0x55, 0xAA))
    checksum = -sum(struct.unpack("<16H", validation)) & 0xFFFF
    validation[28:30] = struct.pack("<H", checksum)
    initial = struct.pack("<BBHBBHI20s", 0x88, 0, 0, 0, 0, len(boot) // 512, BOOT_IMAGE, bytes(20))
    image[CATALOG * SECTOR:CATALOG * SECTOR + 64] = bytes(validation) + initial
    image[BOOT_IMAGE * SECTOR:BOOT_IMAGE * SECTOR + len(boot)] = boot
    root = directory_record(ROOT, b"\x00") + directory_record(ROOT, b"\x01")
    image[ROOT * SECTOR:ROOT * SECTOR + len(root)] = root
    with open(output, "wb") as handle:
        handle.write(image)


if __name__ == "__main__":
    main(*sys.argv[1:])
