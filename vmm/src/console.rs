//! The main thread's event loop (event-manager): waits for the VM to stop and, when the
//! console is a terminal, forwards stdin to the guest's serial port.

use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::vcpu::Shared;

struct StopWatcher {
    shared: Arc<Shared>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.shared.stop_evt.read();
        self.stopped.store(true, Ordering::SeqCst);
    }
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.shared.stop_evt, EventSet::IN));
    }
}

struct StdinForwarder {
    serial: Arc<Mutex<devices::Serial>>,
}

impl MutEventSubscriber for StdinForwarder {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let stdin = std::io::stdin();
        match stdin.lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                // EOF or error: stop watching stdin, keep the VM running.
                let _ = ops.remove(events);
            }
            Ok(n) => {
                if let Ok(mut s) = self.serial.lock() {
                    let _ = s.enqueue_input(&buf[..n]);
                }
            }
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        let fd = std::io::stdin().as_raw_fd();
        let _ = ops.add(Events::new_raw(fd, EventSet::IN));
    }
}

/// Blocks until the VM stops, forwarding stdin to `serial` if given.
pub fn wait_for_stop(shared: &Arc<Shared>, serial: Option<Arc<Mutex<devices::Serial>>>) {
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut em = match EventManager::<Box<dyn MutEventSubscriber + Send>>::new() {
        Ok(em) => em,
        Err(_) => {
            // No epoll: fall back to polling the stop flag.
            while !shared.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            return;
        }
    };
    em.add_subscriber(Box::new(StopWatcher {
        shared: shared.clone(),
        stopped: stopped.clone(),
    }));
    if let Some(serial) = serial {
        em.add_subscriber(Box::new(StdinForwarder { serial }));
    }
    while !stopped.load(Ordering::SeqCst) && !shared.stopping.load(Ordering::SeqCst) {
        if em.run_with_timeout(100).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
