//! The interactive console, typed at for real: a tmux session runs `vpmu-vmm run
//! --kernel builtin:echo` on a pseudo-terminal, types into it with `send-keys` and reads
//! the screen with `capture-pane`. Checks: raw mode (a typed line shows once: the guest
//! echoes, the host terminal does not), long input is fed as the guest drains its
//! 64-byte FIFO (a 300-character line arrives whole), Ctrl-C goes to the guest instead of
//! killing the VMM, Ctrl-A x stops the guest with status 12, SIGTERM ends the run
//! cleanly, and the terminal's settings (`stty -g`) are the same after every ending.

mod common;
use common::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The pane running `vpmu-vmm run --kernel builtin:echo`, with the files its script
/// leaves: the terminal settings before and after, the VMM's pid and exit status.
struct Pane {
    tmux: tmux::Tmux,
    dir: PathBuf,
}

impl Pane {
    fn start(name: &str) -> Pane {
        let dir = scratch(name);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let d = dir.display();
        // `exec` makes the pid file name the VMM itself; the pane stays open afterwards
        // so that its screen can still be read.
        let script = format!(
            "stty -g > {d}/before; sh -c 'echo $$ > {d}/pid; exec {bin} run --kernel builtin:echo'; \
             echo \"status=$?\" > {d}/status.tmp; stty -g > {d}/after; mv {d}/status.tmp {d}/status; sleep 300",
            bin = bin()
        );
        Pane {
            tmux: tmux::Tmux::start(name, &script),
            dir,
        }
    }

    fn keys(&self, keys: &[&str]) {
        self.tmux.keys(keys);
    }

    fn line(&self, text: &str) {
        self.tmux.line(text);
    }

    fn screen(&self) -> String {
        self.tmux.screen()
    }

    fn wait_for(&self, needle: &str) -> String {
        self.tmux.wait_for(needle, Duration::from_secs(60))
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(name)).ok()
    }

    /// Waits for the VMM to end; returns its status line and checks the terminal.
    fn ended(&self) -> String {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.file("status") {
                break s.trim().to_string();
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the VMM did not end; the screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            self.file("before"),
            self.file("after"),
            "the terminal's settings were not restored"
        );
        status
    }

    fn vmm_pid(&self) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(p) = self.file("pid").and_then(|p| p.trim().parse().ok()) {
                return p;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no pid file");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn unusable() -> Option<String> {
    kvm_unusable().or_else(tmux::Tmux::unavailable)
}

macro_rules! need {
    ($name:expr) => {
        if let Some(why) = unusable() {
            skip($name, &why);
            return;
        }
    };
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn typing_into_the_guest_long_lines_ctrl_c_and_the_escape() {
    need!("typing_into_the_guest_long_lines_ctrl_c_and_the_escape");
    let p = Pane::start("typing");
    p.wait_for("echo> ");

    // Raw mode: the guest's echo is the only one.
    p.line("hello world");
    let s = p.wait_for("got 11 bytes: [hello world]");
    assert_eq!(
        count(&s, "hello world"),
        2,
        "the line shows once as typed (guest echo) and once in the guest's answer; a third \
         copy is the host terminal's own echo (not in raw mode):\n{s}"
    );

    // Longer than the 64-byte receive FIFO: fed as the guest drains it, nothing lost.
    let long: String = (b'a'..=b'z').cycle().take(300).map(char::from).collect();
    p.line(&long);
    // (Waiting for the whole answer: the screen is read while the guest still prints.)
    p.wait_for(&format!("got 300 bytes: [{long}]"));

    // Ctrl-C is the guest's: it prints ^C and keeps running.
    p.keys(&["C-c"]);
    p.wait_for("^C");
    p.line("still here");
    p.wait_for("got 10 bytes: [still here]");

    // Ctrl-A x: the VMM stops the guest, says so, exits 12, restores the terminal.
    p.keys(&["C-a", "x"]);
    let status = p.ended();
    assert_eq!(status, "status=12", "screen:\n{}", p.screen());
    assert!(
        p.screen().contains("stopped from the console (Ctrl-A x)"),
        "{}",
        p.screen()
    );
}

#[test]
fn guest_exit_and_sigterm_restore_the_terminal() {
    need!("guest_exit_and_sigterm_restore_the_terminal");
    // The guest ends the VM itself (debug-exit 0 -> status 1).
    let p = Pane::start("exit");
    p.wait_for("echo> ");
    p.line("exit");
    assert_eq!(p.ended(), "status=1", "screen:\n{}", p.screen());
    drop(p);

    // SIGTERM from outside while the guest owns the terminal.
    let p = Pane::start("sigterm");
    p.wait_for("echo> ");
    let pid = p.vmm_pid();
    // SAFETY: kill(2) on the VMM process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(p.ended(), "status=12", "screen:\n{}", p.screen());
    assert!(p.screen().contains("SIGTERM"), "{}", p.screen());
}
