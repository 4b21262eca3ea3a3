//! Ports for the processes the tests start (aggregators, private brokers and ClickHouse
//! servers, chromedriver), chosen so that nothing else takes them between the choice and the
//! bind.
//!
//! Two ways a chosen port was lost in CI: an ephemeral port (the kernel's 32768-60999, what
//! binding port 0 gives) was taken by an outgoing connection before the aggregator bound it
//! (`http.listen = 127.0.0.1:35811: Address already in use`, console test, 2026-12-04), and
//! two test processes running at once could choose the same free port. So every port comes
//! from 29000-32699, below the ephemeral range and above the private cluster's fixed ports
//! (tests/common/cluster.rs: 21000-28907), and is reserved: this process holds an advisory
//! lock (flock) on `$TMPDIR/usage-agg-test-ports/PORT` until it exits, and no test process
//! chooses a port another one holds. The kernel drops the locks when the process ends, even
//! on a crash, so nothing is left to clean up.

use std::fs::File;
use std::net::TcpListener;
use std::sync::Mutex;

const FIRST: u16 = 29_000;
const END: u16 = 32_700;

/// The lock files of the ports this process reserved; held (open and locked) until it exits.
static RESERVED: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// One free port, reserved for this test process (see the module docs).
pub fn free_port() -> u16 {
    quiet_ports(1)
}

/// The first of `n` consecutive ports, each free now and reserved for this test process. For
/// a private broker or ClickHouse, which binds its ports seconds after they are chosen (a
/// broker formats its storage first).
pub fn quiet_ports(n: u16) -> u16 {
    let dir = std::env::temp_dir().join("usage-agg-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port lock directory");
    for _ in 0..10_000 {
        let base = FIRST + rand::random::<u16>() % (END - FIRST - n);
        let mut locks = Vec::new();
        for port in base..base + n {
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(port.to_string()))
                .expect("open a port lock file");
            // A lock is per open file: a port this process holds fails here too.
            if lock.try_lock().is_err() || TcpListener::bind(("127.0.0.1", port)).is_err() {
                break;
            }
            locks.push(lock);
        }
        if locks.len() == usize::from(n) {
            RESERVED.lock().unwrap().extend(locks);
            return base;
        }
    }
    panic!("no {n} consecutive free ports in {FIRST}-{END}");
}
