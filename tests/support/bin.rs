//! Running the binary in tests: a hang is reported as a failure of its own.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::common::{TestEnv, free_port};

/// Runs the binary in `dir` with `env`; kills it if it has not ended after `hang` (a hang is
/// a failure of its own, reported as such: this is not a speed measurement).
pub fn run_bin(dir: &Path, args: &[&str], env: &[(&str, &str)], hang: Duration) -> Output {
    let mut cmd = Command::new(TestEnv::bin());
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    wait_or_kill(child, hang, args)
}

pub fn wait_or_kill(mut child: Child, hang: Duration, what: &[&str]) -> Output {
    let deadline = Instant::now() + hang;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what:?} hung; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A port nothing listens on.
pub fn closed_port() -> String {
    format!("127.0.0.1:{}", free_port())
}
