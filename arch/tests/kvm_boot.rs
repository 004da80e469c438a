#![cfg(target_arch = "x86_64")]
//! Boots tiny 64-bit guests on the host's KVM with this crate's boot structures
//! (GDT/TSS, identity paging, long-mode registers, MSRs, CPUID). Skipped, with a note on
//! stderr, when /dev/kvm cannot be opened.

use arch::x86_64::cpuid::normalize;
use arch::x86_64::gdt::write_boot_gdt;
use arch::x86_64::layout::{ram_regions, BOOT_STACK_POINTER};
use arch::x86_64::paging::write_identity_map;
use arch::x86_64::regs::{boot_fpu, boot_msrs, long_mode_regs, setup_long_mode_sregs};
use kvm_bindings::{kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const MEM: u64 = 4 << 20;
const ENTRY: u64 = 0x10_0000;

const MAILBOX: u64 = 0x18_0100;

struct Outcome {
    serial: Vec<u8>,
    /// Value written to port 0xf4, or None if the guest shut down (triple fault).
    debug_exit: Option<u32>,
    /// u32 at MAILBOX when the guest stopped.
    mailbox: u32,
}

/// Runs `code` at ENTRY (and `user_code` at 0x101000) until a write to port 0xf4 or a
/// shutdown.
fn run(code: &[u8], user_code: &[u8], user_pages: bool, rdi: u64) -> Option<Outcome> {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("skipping: /dev/kvm unavailable: {e}");
            return None;
        }
    };
    let vm = kvm.create_vm().unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(MEM)).unwrap();
    for (slot, (addr, len)) in ram_regions(MEM).into_iter().enumerate() {
        let host = mem.get_host_address(addr).unwrap();
        let region = kvm_userspace_memory_region {
            slot: u32::try_from(slot).unwrap(),
            guest_phys_addr: addr.0,
            memory_size: len as u64,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM.
        unsafe { vm.set_user_memory_region(region).unwrap() };
    }
    write_boot_gdt(&mem).unwrap();
    let cr3 = write_identity_map(&mem, user_pages).unwrap();
    mem.write_slice(code, GuestAddress(ENTRY)).unwrap();
    mem.write_slice(user_code, GuestAddress(ENTRY + 0x1000))
        .unwrap();

    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    normalize(&mut cpuid, 0, 1).unwrap();
    vcpu.set_cpuid2(&cpuid).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    setup_long_mode_sregs(&mut sregs, cr3);
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_fpu(&boot_fpu()).unwrap();
    let msrs = Msrs::from_entries(&boot_msrs(0)).unwrap();
    assert_eq!(vcpu.set_msrs(&msrs).unwrap(), boot_msrs(0).len());
    vcpu.set_regs(&long_mode_regs(ENTRY, BOOT_STACK_POINTER, [rdi, 0, 0]))
        .unwrap();

    let mut serial = Vec::new();
    for _ in 0..1000 {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x3f8, data) => serial.extend_from_slice(data),
            VcpuExit::IoOut(0xf4, data) => {
                let mut v = [0u8; 4];
                v[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
                let mailbox = mem.read_obj(GuestAddress(MAILBOX)).unwrap();
                return Some(Outcome {
                    serial,
                    debug_exit: Some(u32::from_le_bytes(v)),
                    mailbox,
                });
            }
            VcpuExit::Shutdown => {
                let mailbox = mem.read_obj(GuestAddress(MAILBOX)).unwrap();
                return Some(Outcome {
                    serial,
                    debug_exit: None,
                    mailbox,
                });
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }
    panic!("guest did not exit");
}

#[test]
fn long_mode_cpl0_guest_runs() {
    let code = [
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, 0x41, // mov al, 'A'
        0xee, // out dx, al
        0x57, // push rdi   (stack + data segment usable)
        0x58, // pop rax
        0xe7, 0xf4, // out 0xf4, eax
        0xf4, // hlt
    ];
    if let Some(o) = run(&code, &[], false, 0x1234_5678) {
        assert_eq!(o.serial, b"A");
        assert_eq!(
            o.debug_exit,
            Some(0x1234_5678),
            "RDI argument reached the guest"
        );
    }
}

#[test]
fn user_pages_and_segments_allow_cpl3() {
    // CPL0: iretq to user code. (IOPL stays 0: on this host's PVM KVM, CPL3 port I/O is
    // not granted, so the user code reports through memory instead.)
    let code = [
        0x6a, 0x33, // push 0x33 (SS: user data | RPL 3)
        0x68, 0x00, 0x00, 0x18, 0x00, // push 0x180000 (RSP)
        0x6a, 0x02, // push 0x2 (RFLAGS)
        0x6a, 0x3b, // push 0x3b (CS: user code64 | RPL 3)
        0x68, 0x00, 0x10, 0x10, 0x00, // push 0x101000 (RIP)
        0x48, 0xcf, // iretq
    ];
    let user = [
        0x8c, 0xc8, // mov eax, cs
        0x50, // push rax (user stack usable)
        0x58, // pop rax
        0x89, 0x04, 0x25, 0x00, 0x01, 0x18, 0x00, // mov [0x180100], eax
        0xf4, // hlt: #GP at CPL3, no IDT -> triple fault -> shutdown
    ];
    if let Some(o) = run(&code, &user, true, 0) {
        assert_eq!(o.debug_exit, None, "stopped by the deliberate fault");
        // CS.RPL = 3: the user code ran at CPL3. The selector itself is 0x3b on hardware
        // KVM; this host's PVM KVM runs guest CPL3 natively and `mov eax, cs` then shows
        // the host's own user CS (0x33), so only the RPL is checked.
        assert_ne!(o.mailbox, 0, "user code ran");
        assert_eq!(
            o.mailbox & 3,
            3,
            "user code ran at CPL3 (CS {:#x})",
            o.mailbox
        );
    }
    // Without U/S in the page tables the first user fetch faults: nothing is written.
    if let Some(o) = run(&code, &user, false, 0) {
        assert_eq!((o.debug_exit, o.mailbox), (None, 0));
    }
}
