//! A tmux server on its own socket with one pane running a shell command: tests type into
//! it with `send-keys` and read its screen with `capture-pane`, as a user at a terminal
//! would. Killed on drop.

use std::process::Command;
use std::time::{Duration, Instant};

/// One tmux server and its pane.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// `None` when tmux can be used, else why not.
    pub fn unavailable() -> Option<String> {
        match Command::new("tmux").arg("-V").output() {
            Ok(o) if o.status.success() => None,
            _ => Some("tmux is not installed (Debian: apt-get install tmux)".into()),
        }
    }

    /// Starts `sh -c script` in a 220x50 pane.
    pub fn start(name: &str, script: &str) -> Tmux {
        let socket = format!("vpmu-{}-{name}", std::process::id());
        let ok = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "220", "-y", "50", "sh", "-c", script])
            .status()
            .expect("tmux")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux { socket }
    }

    /// `tmux send-keys` with these key names (e.g. "Enter", "C-c").
    pub fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "0"])
            .args(keys)
            .status()
            .expect("tmux send-keys")
            .success();
        assert!(ok, "send-keys {keys:?}");
    }

    /// Types `text` as it is.
    pub fn literal(&self, text: &str) {
        self.keys(&["-l", text]);
    }

    /// Types `text` as it is, then Enter.
    pub fn line(&self, text: &str) {
        self.literal(text);
        self.keys(&["Enter"]);
    }

    /// The screen and up to 500 lines of history, wrapped lines joined.
    pub fn screen(&self) -> String {
        let o = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-J", "-t", "0"])
            .args(["-S", "-500"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits up to `limit` until the screen contains `needle`; returns the screen.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            assert!(
                t.elapsed() < limit,
                "waited {limit:?} for {needle:?}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}
