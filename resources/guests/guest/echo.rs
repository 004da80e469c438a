//! echo: an interactive console guest for testing the VMM's terminal handling. It reads
//! COM1 by polling (no interrupts), echoes each byte, and at the end of a line (CR or LF)
//! prints how many bytes the line had and the line itself. Ctrl-C (0x03) prints "^C"
//! (the terminal's raw mode delivers it as a byte, not a signal to the VMM). The line
//! `exit` ends the VM through the debug-exit port with 0 (status 1 under `run`). Other
//! vCPUs halt.
#![no_std]
#![no_main]

#[path = "pure/fmt.rs"]
mod fmt;
mod rt;

use fmt::Line;

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_DATA_READY: u8 = 1;
/// Longest line kept; longer lines are counted in full but shown cut.
const MAX_LINE: usize = 1024;

fn getc() -> u8 {
    while rt::inb(LSR) & LSR_DATA_READY == 0 {
        core::hint::spin_loop();
    }
    rt::inb(COM1)
}

fn putc(b: u8) {
    rt::outb(COM1, b);
}

fn prompt() {
    for &b in b"\r\necho> " {
        putc(b);
    }
}

#[no_mangle]
pub fn guest_main(cpu: u32, _cmd: &'static str, _ncpus: u32) -> ! {
    if cpu != 0 {
        rt::halt_forever();
    }
    rt::puts("vpmu-vmm echo guest: type a line; `exit` ends the VM");
    let mut line = [0u8; MAX_LINE];
    let mut len = 0usize;
    prompt();
    loop {
        let b = getc();
        match b {
            b'\r' | b'\n' => {
                let shown = len.min(MAX_LINE);
                let text = core::str::from_utf8(&line[..shown]).unwrap_or("<not utf-8>");
                if text == "exit" {
                    rt::puts("\r\nbye");
                    rt::exit(0);
                }
                let mut l = Line::new();
                l.s("\r\ngot ").u(len as u64).s(" bytes: [");
                for &c in l.as_bytes().iter().chain(&line[..shown]).chain(b"]") {
                    putc(c);
                }
                len = 0;
                prompt();
            }
            0x03 => {
                for &c in b"^C" {
                    putc(c);
                }
                len = 0;
                prompt();
            }
            _ => {
                putc(b);
                if len < MAX_LINE {
                    line[len] = b;
                }
                len += 1;
            }
        }
    }
}
