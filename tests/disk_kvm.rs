//! virtio-blk over virtio-mmio under this host's /dev/kvm, without a Linux guest: a
//! freestanding guest, hand-assembled below, is a minimal virtio driver. It performs the
//! Linux initialisation sequence on the device at 0xd0000000, writes one sector, reads
//! another back, and reports through the debug-exit port. Also: `--disk` errors.
//! Each test skips (printing SKIPPED and why) only when /dev/kvm cannot be opened.

#[macro_use]
mod common;
use common::*;

/// A tiny x86-64 assembler for the handful of instructions the guest needs.
#[derive(Default)]
struct Asm(Vec<u8>);

const DESC: u32 = 0x30_0000;
const AVAIL: u32 = 0x30_1000;
const USED: u32 = 0x30_2000;
const HDR: u32 = 0x30_3000;
const DATA_OUT: u32 = 0x30_4000;
const STATUS: u32 = 0x30_5000;
const DATA_IN: u32 = 0x30_6000;
/// What the guest writes to sector 1 (first dword).
const OUT_MARK: u32 = u32::from_le_bytes(*b"PVMK");
/// What the host puts in sector 0 (first dword).
const IN_MARK: u32 = u32::from_le_bytes(*b"DISK");
/// Debug-exit value on success.
const SUCCESS: u32 = 0x2a;

impl Asm {
    /// mov ebx, imm32 (zero-extends into rbx)
    fn mov_ebx(&mut self, v: u32) {
        self.0.push(0xbb);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// mov dword [rbx + disp32], imm32  (a device register)
    fn reg(&mut self, off: u32, v: u32) {
        self.0.extend_from_slice(&[0xc7, 0x83]);
        self.0.extend_from_slice(&off.to_le_bytes());
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// mov dword [abs32], imm32  (guest RAM below 2 GiB)
    fn mem(&mut self, addr: u32, v: u32) {
        self.0.extend_from_slice(&[0xc7, 0x04, 0x25]);
        self.0.extend_from_slice(&addr.to_le_bytes());
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A split-ring descriptor at index `i`.
    fn desc(&mut self, i: u32, addr: u32, len: u32, flags: u16, next: u16) {
        let a = DESC + 16 * i;
        self.mem(a, addr);
        self.mem(a + 4, 0);
        self.mem(a + 8, len);
        self.mem(a + 12, u32::from(flags) | (u32::from(next) << 16));
    }
    /// mov eax, dword [rbx + disp32]
    fn load_reg(&mut self, off: u32) {
        self.0.extend_from_slice(&[0x8b, 0x83]);
        self.0.extend_from_slice(&off.to_le_bytes());
    }
    /// movzx eax, byte [abs32]
    fn load_u8(&mut self, addr: u32) {
        self.0.extend_from_slice(&[0x0f, 0xb6, 0x04, 0x25]);
        self.0.extend_from_slice(&addr.to_le_bytes());
    }
    /// movzx eax, word [abs32]
    fn load_u16(&mut self, addr: u32) {
        self.0.extend_from_slice(&[0x0f, 0xb7, 0x04, 0x25]);
        self.0.extend_from_slice(&addr.to_le_bytes());
    }
    /// mov eax, dword [abs32]
    fn load_u32(&mut self, addr: u32) {
        self.0.extend_from_slice(&[0x8b, 0x04, 0x25]);
        self.0.extend_from_slice(&addr.to_le_bytes());
    }
    /// mov eax, imm32; out 0xf4, eax; hlt; jmp back to hlt  (10 bytes)
    fn exit(&mut self, v: u32) {
        self.0.push(0xb8);
        self.0.extend_from_slice(&v.to_le_bytes());
        self.0.extend_from_slice(&[0xe7, 0xf4, 0xf4, 0xeb, 0xfd]);
    }
    /// cmp eax, imm32; je over the next exit; exit(code)
    fn expect_eax(&mut self, v: u32, code: u32) {
        self.0.push(0x3d);
        self.0.extend_from_slice(&v.to_le_bytes());
        self.0.extend_from_slice(&[0x74, 10]);
        self.exit(code);
    }
}

/// The guest: virtio-blk driver for one request queue of 8 entries.
fn driver_guest() -> Vec<u8> {
    let mut a = Asm::default();
    a.mov_ebx(0xd000_0000);
    a.load_reg(0x000);
    a.expect_eax(0x7472_6976, 1); // MagicValue
    a.load_reg(0x004);
    a.expect_eax(2, 2); // Version
    a.load_reg(0x008);
    a.expect_eax(2, 3); // DeviceID: block
    a.load_reg(0x100);
    a.expect_eax(64, 4); // capacity (low dword): 64 sectors
                         // Status: reset, ACKNOWLEDGE, DRIVER; accept VERSION_1 only; FEATURES_OK.
    a.reg(0x70, 0);
    a.reg(0x70, 1);
    a.reg(0x70, 3);
    a.reg(0x24, 1);
    a.reg(0x20, 1);
    a.reg(0x24, 0);
    a.reg(0x20, 0);
    a.reg(0x70, 11);
    a.load_reg(0x70);
    a.expect_eax(11, 5);
    // Queue 0: 8 entries, rings, ready; DRIVER_OK.
    a.reg(0x30, 0);
    a.reg(0x38, 8);
    a.reg(0x80, DESC);
    a.reg(0x84, 0);
    a.reg(0x90, AVAIL);
    a.reg(0x94, 0);
    a.reg(0xa0, USED);
    a.reg(0xa4, 0);
    a.reg(0x44, 1);
    a.reg(0x70, 15);
    // Request 1: write sector 1 (type 1 = T_OUT).
    a.mem(HDR, 1);
    a.mem(HDR + 8, 1);
    a.mem(DATA_OUT, OUT_MARK);
    a.mem(STATUS, 0xff);
    a.desc(0, HDR, 16, 1, 1);
    a.desc(1, DATA_OUT, 512, 1, 2);
    a.desc(2, STATUS, 1, 2, 0);
    // Request 2: read sector 0 (type 0 = T_IN; header at HDR + 0x100 is all zero).
    a.mem(STATUS + 0x10, 0xff);
    a.desc(3, HDR + 0x100, 16, 1, 4);
    a.desc(4, DATA_IN, 512, 2 | 1, 5);
    a.desc(5, STATUS + 0x10, 1, 2, 0);
    // Avail ring: [0] = 0, [1] = 3, idx = 2; notify queue 0.
    a.mem(AVAIL + 4, 3 << 16);
    a.mem(AVAIL, 2 << 16);
    a.reg(0x50, 0);
    // Served synchronously: results are in place when the notify returns.
    a.load_u16(USED + 2);
    a.expect_eax(2, 6); // used idx
    a.load_u8(STATUS);
    a.expect_eax(0, 7); // VIRTIO_BLK_S_OK
    a.load_u8(STATUS + 0x10);
    a.expect_eax(0, 8);
    a.load_u32(DATA_IN);
    a.expect_eax(IN_MARK, 9);
    a.load_u32(USED + 4 + 8 + 4); // used[1].len: 512 data + 1 status
    a.expect_eax(513, 10);
    a.load_reg(0x60);
    a.expect_eax(1, 11); // InterruptStatus: used buffer
    a.reg(0x64, 1);
    a.load_reg(0x60);
    a.expect_eax(0, 12);
    // Unmapped MMIO next door reads all ones.
    a.load_reg(0x1000);
    a.expect_eax(u32::MAX, 13);
    a.exit(SUCCESS);
    a.0
}

/// The driver guest and its disk (64 sectors, [`IN_MARK`] at the start of sector 0) as
/// scratch files named with `suffix`: (the image's bytes, the disk's path, the kernel's).
fn driver_files(suffix: &str) -> (Vec<u8>, String, String) {
    let mut img = vec![0u8; 64 * 512];
    img[0..4].copy_from_slice(&IN_MARK.to_le_bytes());
    let disk = write_scratch(&format!("driver-disk{suffix}.img"), &img);
    let k = write_scratch(
        &format!("virtio-driver{suffix}.elf"),
        &elf64(&driver_guest(), 0x20_0000),
    );
    (img, disk, k)
}

#[test]
fn freestanding_driver_writes_and_reads_a_disk() {
    need_kvm!("freestanding_driver_writes_and_reads_a_disk");
    let (_, disk, k) = driver_files("");
    let (o, report) = vmm_report(&["run", "--kernel", &k, "--disk", &disk]);
    let e = err(&o);
    // Debug exit V: status (V << 1) | 1.
    assert_eq!(
        status(&o),
        ((SUCCESS << 1) | 1) as i32,
        "guest check (V = status >> 1) failed; stderr:\n{e}"
    );
    let after = std::fs::read(&disk).expect("disk image");
    assert_eq!(after.len(), 64 * 512);
    assert_eq!(&after[512..516], b"PVMK", "sector 1 not written");
    assert!(after[516..1024].iter().all(|&b| b == 0));
    assert_eq!(&after[0..4], b"DISK");
    let report = report.expect("run report");
    let d = &report["disks"][0];
    assert_eq!(
        (
            &d["sectors"],
            &d["read_only"],
            &d["reads"],
            &d["bytes_read"]
        ),
        (&64.into(), &false.into(), &1.into(), &512.into()),
        "{d}"
    );
    assert_eq!(
        (&d["writes"], &d["bytes_written"]),
        (&1.into(), &512.into()),
        "{d}"
    );
}

#[test]
fn read_only_disk_refuses_the_guest_write() {
    need_kvm!("read_only_disk_refuses_the_guest_write");
    let (img, disk, k) = driver_files("-ro");
    let spec = format!("{disk},ro");
    let o = vmm(&["run", "--kernel", &k, "--disk", &spec, "--stats"]);
    // The guest stops at check 7: the write's status is not OK (it is IOERR).
    assert_eq!(status(&o), (7 << 1) | 1, "stderr:\n{}", err(&o));
    assert_eq!(std::fs::read(&disk).expect("disk image"), img);
}

#[test]
fn disk_errors_are_one_clear_line() {
    need_kvm!("disk_errors_are_one_clear_line");
    for (disk, needle) in [
        (
            "/nonexistent/vpmu/perf.img",
            "cannot open disk image /nonexistent/vpmu/perf.img",
        ),
        (",ro", "--disk ',ro': expected PATH"),
    ] {
        assert_clean_error(&demo_args(&["--disk", disk]), needle);
    }
    let tiny = write_scratch("tiny.img", &[0u8; 100]);
    let o = vmm(&demo_args(&["--disk", &tiny]));
    assert_eq!(status(&o), 2);
    assert!(
        err(&o).contains("smaller than one 512-byte sector"),
        "{}",
        err(&o)
    );
    let many: Vec<String> = (0..9)
        .flat_map(|_| ["--disk".to_string(), tiny.clone()])
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let o = vmm(&demo_args(&many));
    assert_eq!(status(&o), 2);
    assert!(err(&o).contains("at most 8 disks"), "{}", err(&o));
}

#[test]
fn freestanding_guest_with_a_disk_still_runs() {
    need_kvm!("freestanding_guest_with_a_disk_still_runs");
    // The demo ignores the device; its argument string must not gain virtio_mmio.device=.
    let disk = write_scratch("unused.img", &vec![0u8; 4096]);
    let o = vmm(&["demo", "--pmu", "off"]);
    let plain = status(&o);
    let o = assert_demo_runs(&["--disk", &disk]);
    assert_eq!(plain, 0);
    assert!(!out(&o).contains("virtio_mmio"), "{}", out(&o));
}

#[test]
fn disks_must_be_regular_files_or_block_devices() {
    need_kvm!("disks_must_be_regular_files_or_block_devices");
    let fifo = mkfifo(&scratch("disk.fifo"));
    for (disk, what) in [
        ("/dev/null", "a character device"),
        ("/dev/zero,ro", "a character device"),
        (fifo.as_str(), "a FIFO"),
        // (read-write, a directory cannot even be opened: "Is a directory")
        ("/,ro", "a directory"),
        // Kernel interfaces that look like regular files: procfs and sysfs.
        ("/proc/self/status,ro", "a file on procfs"),
        ("/sys/kernel/address_bits,ro", "a file on sysfs"),
    ] {
        let path = disk.strip_suffix(",ro").unwrap_or(disk);
        if !std::path::Path::new(path).exists() {
            continue;
        }
        assert_clean_error(
            &demo_args(&["--disk", disk]),
            &format!("disk image {path} is {what}, not a regular file or block device"),
        );
    }
}

/// Takes an OFD lock on all of `f` (F_OFD_SETLK, like vpmu-vmm and QEMU).
fn ofd_lock(f: &std::fs::File, exclusive: bool) {
    use std::os::fd::AsFd;
    if let Err(e) = host_sys::ofd_lock(f.as_fd(), exclusive) {
        panic!("F_OFD_SETLK: {e}");
    }
}

#[test]
fn disk_images_are_locked() {
    need_kvm!("disk_images_are_locked");
    let disk = write_scratch("locked.img", &vec![0u8; 4096]);
    let ro = format!("{disk},ro");
    let held = "is locked: another process (or another --disk of this VM) has it open";
    // Two --disk of one image in one VM: the second cannot lock it.
    let locked = |disks: &[&str]| {
        let args: Vec<&str> = disks.iter().flat_map(|&d| ["--disk", d]).collect();
        assert_clean_error(&demo_args(&args), &format!("disk image {disk} {held}"));
    };
    for (a, b) in [(&disk, &disk), (&disk, &ro), (&ro, &disk)] {
        locked(&[a, b]);
    }
    // Read-only users share the image.
    assert_demo_runs(&["--disk", &ro, "--disk", &ro]);
    // A lock held by another process (this test): exclusive keeps everyone out, shared
    // keeps writers out.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .expect("open image");
    ofd_lock(&f, true);
    for spec in [&disk, &ro] {
        locked(&[spec]);
    }
    ofd_lock(&f, false);
    locked(&[&disk]);
    assert_demo_runs(&["--disk", &ro]);
    drop(f);
    assert_demo_runs(&["--disk", &disk]);
}
