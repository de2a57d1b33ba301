#!/usr/bin/env python3
"""Wraps a boot image in an ISO 9660 image with an El Torito no-emulation boot entry, for booting it from a CD-ROM:
the boot-sector test (the first 1024 bytes of build/bootsector.img) or GRUB's i386-pc-eltorito image. Layout, in
2048-byte sectors: 1 the "TERN LBA 1" marker the boot sector reads back (int 13h reads 2048-byte sectors from a
CD), 16 the primary volume descriptor, 17 the boot record, 18 the set terminator, 19 the boot catalog, 20 on the
boot image (its first 2 KiB loaded at 0x7C00), then the root directory.
Usage: make-iso.py BOOT_FILE OUTPUT_ISO [LOAD_BYTES]; LOAD_BYTES (default: the whole file) is how much of BOOT_FILE
is the image. Images longer than 2 KiB get a boot information table at offset 8, as GRUB's expects."""
import struct
import sys

SECTOR = 2048
BOOT_IMAGE, CATALOG = 20, 19


def both16(value):
    return struct.pack("<H", value) + struct.pack(">H", value)


def both32(value):
    return struct.pack("<I", value) + struct.pack(">I", value)


def boot_information_table(boot):
    """El Torito boot information table (mkisofs -boot-info-table): the PVD's LBA, the image's LBA and length, and
    the 32-bit sum of the image from byte 64 on."""
    padded = boot + bytes(-len(boot) % 4)
    checksum = sum(struct.unpack(f"<{(len(padded) - 64) // 4}I", padded[64:])) & 0xFFFFFFFF
    return boot[:8] + struct.pack("<IIII", 16, BOOT_IMAGE, len(boot), checksum) + boot[24:]


def directory_record(extent, name):
    body = both32(extent) + both32(SECTOR) + bytes(7) + bytes([2, 0, 0]) + both16(1) + bytes([len(name)]) + name
    record = bytes([33 + len(name), 0]) + body
    return record + bytes(len(record) % 2)


def main(source, output, load_bytes=None):
    with open(source, "rb") as handle:
        boot = handle.read(int(load_bytes)) if load_bytes else handle.read()
    if len(boot) > SECTOR:
        boot = boot_information_table(boot)
    root_sector = BOOT_IMAGE + (len(boot) + SECTOR - 1) // SECTOR
    total = root_sector + 11
    image = bytearray(SECTOR * total)
    image[SECTOR:SECTOR + 10] = b"TERN LBA 1"

    pvd = bytearray(SECTOR)
    pvd[0:7] = b"\x01CD001\x01"
    pvd[40:72] = b"TERN_BOOT_TEST".ljust(32)
    pvd[80:88] = both32(total)
    pvd[120:124] = both16(1)
    pvd[124:128] = both16(1)
    pvd[128:132] = both16(SECTOR)
    pvd[156:190] = directory_record(root_sector, b"\x00")
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
    # Firmware loads the first 2 KiB at most (four 512-byte sectors); a larger image loads the rest itself.
    initial = struct.pack("<BBHBBHI20s", 0x88, 0, 0, 0, 0, min(len(boot), SECTOR) // 512, BOOT_IMAGE, bytes(20))
    image[CATALOG * SECTOR:CATALOG * SECTOR + 64] = bytes(validation) + initial
    image[BOOT_IMAGE * SECTOR:BOOT_IMAGE * SECTOR + len(boot)] = boot
    root = directory_record(root_sector, b"\x00") + directory_record(root_sector, b"\x01")
    image[root_sector * SECTOR:root_sector * SECTOR + len(root)] = root
    with open(output, "wb") as handle:
        handle.write(image)


if __name__ == "__main__":
    main(*sys.argv[1:])
