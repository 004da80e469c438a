#![no_std]
#![no_main]
#[path = "pure/cmdline.rs"]
mod cmdline;
#[path = "pure/fmt.rs"]
mod fmt;
#[path = "pure/layout.rs"]
mod layout;
mod pmu;
mod rt;

#[no_mangle]
pub fn guest_main(_cpu: u32, _cmd: &'static str, _n: u32) -> ! {
    rt::puts("bench: not implemented yet");
    rt::exit(1)
}
