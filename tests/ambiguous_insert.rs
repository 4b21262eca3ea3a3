//! An insert whose answer is lost after the server stored it (ClickHouse killed, or its
//! disk filling up, between commit and response) is not stored twice: before retrying, the
//! sink looks up which (partition, offset) rows landed. A proxy in front of the real
//! ClickHouse forwards the first INSERT and then hangs up instead of passing the answer on.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde::Serialize;
use usage_aggregator::health::Health;
use usage_aggregator::sink::insert::Inserter;

#[derive(Debug, Clone, Serialize, clickhouse::Row)]
struct Line {
    id: String,
    src_partition: i32,
    src_offset: i64,
}

/// Forwards connections to `upstream`; for the first request that carries an INSERT, reads
/// the server's answer (so the insert is complete) and closes the client's connection
/// without passing it on. Returns the proxy's address.
fn lossy_proxy(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dropped = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let upstream = upstream.clone();
            let dropped = dropped.clone();
            std::thread::spawn(move || {
                let mut up = TcpStream::connect(&upstream).unwrap();
                let mut up_reader = up.try_clone().unwrap();
                let mut client_writer = client.try_clone().unwrap();
                // Server -> client, unless this is the answer to lose.
                let answer_lost = Arc::new(AtomicBool::new(false));
                let lost = answer_lost.clone();
                let back = std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = match up_reader.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if lost.load(Ordering::SeqCst) {
                            // The server answered the INSERT: it is stored. Hang up.
                            let _ = client_writer.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        if client_writer.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
                let mut buf = [0u8; 16384];
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if text.contains("INSERT") && !dropped.swap(true, Ordering::SeqCst) {
                        answer_lost.store(true, Ordering::SeqCst);
                    }
                    if up.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = up.shutdown(std::net::Shutdown::Write);
                let _ = back.join();
            });
        }
    });
    addr
}

#[test]
fn an_insert_whose_answer_is_lost_is_not_stored_twice() {
    let env = TestEnv::new("ambiguous");
    let db = &env.cfg.clickhouse.database;
    env.ch(&format!("CREATE DATABASE IF NOT EXISTS {db}"));
    env.ch(&format!(
        "CREATE TABLE {db}.lines (id String, src_partition Int32, src_offset Int64) ENGINE = MergeTree() ORDER BY (src_partition, src_offset)"
    ));
    let upstream = env
        .cfg
        .clickhouse
        .url
        .trim_start_matches("http://")
        .to_string();
    let proxy = lossy_proxy(upstream);
    let mut cfg = env.cfg.clickhouse.clone();
    cfg.url = format!("http://{proxy}");
    let inserter = Inserter {
        ch: usage_aggregator::sink::client(&cfg)
            .unwrap()
            .with_database(db),
        clickhouse: cfg,
        health: Arc::new(Health::default()),
        max_backoff: Duration::from_secs(1),
    };
    let rows: Vec<Line> = (0..250)
        .map(|i| Line {
            id: format!("line-{i}"),
            src_partition: i % 3,
            src_offset: 1000 + i as i64,
        })
        .collect();
    let sources: Vec<(i32, i64)> = rows
        .iter()
        .map(|r| (r.src_partition, r.src_offset))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = rt.block_on(inserter.insert_all("lines", &rows, &sources));
    assert!(refused.is_empty());
    let retries = usage_aggregator::metrics::METRICS
        .sink_retries
        .with_label_values(&["lines"])
        .get();
    assert!(
        retries >= 1,
        "the first insert's answer was lost and retried"
    );
    assert_eq!(
        env.ch(&format!("SELECT count(), uniqExact(id) FROM {db}.lines"))
            .trim(),
        "250\t250",
        "each row once although the first INSERT was stored and its answer lost"
    );
}
