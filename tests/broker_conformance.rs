//! Broker conformance: exactly the Kafka features this project relies on, checked against
//! the test broker (Apache Kafka, started by scripts/services) before anything else:
//! consumer groups and mid-batch resume, exact watermarks, compacted topics, explicit
//! partitions, CreatePartitions, static membership, and the transactions the `exactly_once`
//! pipeline is built on (commit visible, abort invisible to `read_committed`, offsets
//! committed with the outputs, a crashed producer's transaction aborted by its successor).

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn base() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", kafka_addr());
    c
}

fn produce(topic: &str, n: usize, compression: &str) {
    let p: ThreadedProducer<DefaultProducerContext> = base()
        .set("compression.type", compression)
        .set("linger.ms", "50")
        .set("batch.num.messages", "1000")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for i in 0..n {
        let payload = format!("m{i}");
        p.send(
            BaseRecord::to(topic)
                .key("k")
                .payload(&payload)
                .partition(0),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn group_consumer(group: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = base()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

fn take(c: &BaseConsumer, n: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push((
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
            ));
        }
    }
    out
}

async fn create(admin: &AdminClient<DefaultClientContext>, name: &str, parts: i32, compact: bool) {
    let mut t = NewTopic::new(name, parts, TopicReplication::Fixed(1));
    if compact {
        t = t.set("cleanup.policy", "compact");
    }
    let r = admin
        .create_topics(&[t], &AdminOptions::new())
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}

#[tokio::test]
async fn broker_conformance_for_what_the_pipeline_relies_on() {
    let admin: AdminClient<DefaultClientContext> = base().create().unwrap();
    let topic = unique("conformance");
    create(&admin, &topic, 1, false).await;
    let compact = format!("{topic}.compact");
    create(&admin, &compact, 2, true).await;

    // Topic creation with configs: the compacted state topic keeps its policy. Right after
    // creation the broker may not describe the topic yet: ask until it does (10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let policy = loop {
        let cfgs = admin
            .describe_configs(&[ResourceSpecifier::Topic(&compact)], &AdminOptions::new())
            .await
            .unwrap();
        let policy = cfgs[0]
            .as_ref()
            .ok()
            .and_then(|res| res.get("cleanup.policy").and_then(|e| e.value.clone()));
        if policy.is_some() || Instant::now() > deadline {
            break policy;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(policy.as_deref(), Some("compact"));

    // Produce two compressed batches; high watermark is exact.
    produce(&topic, 500, "lz4");
    produce(&topic, 500, "none");
    let c = group_consumer(&format!("{topic}-g"), &topic);
    let (low, high) = c
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!((low, high), (0, 1000));

    // Consume part of the first (compressed) batch, commit mid-batch, drop the consumer.
    let first = take(&c, 137);
    assert_eq!(first.len(), 137);
    assert_eq!(first.last().unwrap().0, 136);
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(137))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
    drop(c);

    // A new member of the group resumes exactly at the committed offset: nothing skipped.
    let c = group_consumer(&format!("{topic}-g"), &topic);
    let rest = take(&c, 1000 - 137);
    assert_eq!(rest.len(), 1000 - 137);
    assert_eq!(rest[0], (137, "m137".to_string()));
    assert_eq!(rest.last().unwrap().0, 999);
    let offsets: Vec<i64> = rest.iter().map(|r| r.0).collect();
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, no repeat"
    );

    // Committed offsets are readable (lag monitoring).
    let committed = c.committed(Duration::from_secs(10)).unwrap();
    let e = committed.find_partition(&topic, 0).unwrap();
    assert_eq!(e.offset(), rdkafka::Offset::Offset(137));

    // Explicit partition produce (close markers, state chunks) lands where asked.
    let p: ThreadedProducer<DefaultProducerContext> = base().create().unwrap();
    p.send(BaseRecord::to(&compact).key("x").payload("v").partition(1))
        .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let (_, h1) = c
        .fetch_watermarks(&compact, 1, Duration::from_secs(10))
        .unwrap();
    let (_, h0) = c
        .fetch_watermarks(&compact, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!((h0, h1), (0, 1));

    // CreatePartitions: a topic grows (scaling out the usage topic).
    let grown = admin
        .create_partitions(
            &[rdkafka::admin::NewPartitions::new(&topic, 3)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(grown[0].is_ok(), "{grown:?}");
    let md = c
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 3);
}

fn txn_producer(id: &str) -> ThreadedProducer<DefaultProducerContext> {
    let p: ThreadedProducer<DefaultProducerContext> = base()
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "60000")
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    p
}

/// Every message of partition 0 that a reader with `isolation` sees, read to the end.
fn read_all(topic: &str, isolation: &str) -> Vec<String> {
    let c: BaseConsumer = base()
        .set("group.id", unique("reader"))
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            _ => {}
        }
    }
    panic!("no end of partition reading {topic}");
}

#[tokio::test]
async fn broker_conformance_transactions_for_exactly_once() {
    let admin: AdminClient<DefaultClientContext> = base().create().unwrap();
    let input = unique("txn_in");
    let output = format!("{input}.out");
    create(&admin, &input, 1, false).await;
    create(&admin, &output, 1, false).await;
    produce(&input, 10, "lz4");

    // A committed transaction is visible to read_committed; an aborted one is not (its
    // records are in the log: read_uncommitted sees them).
    let id = unique("tx");
    let p = txn_producer(&id);
    p.begin_transaction().unwrap();
    p.send(
        BaseRecord::to(&output)
            .key("k")
            .payload("committed")
            .partition(0),
    )
    .unwrap();
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    p.begin_transaction().unwrap();
    p.send(
        BaseRecord::to(&output)
            .key("k")
            .payload("aborted")
            .partition(0),
    )
    .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    p.abort_transaction(Duration::from_secs(30)).unwrap();
    assert_eq!(read_all(&output, "read_committed"), vec!["committed"]);
    assert_eq!(
        read_all(&output, "read_uncommitted"),
        vec!["committed", "aborted"]
    );

    // send_offsets_to_transaction: the group's offsets move with the outputs, and not at all
    // when the transaction aborts.
    let group = format!("{input}-g");
    let c = group_consumer(&group, &input);
    let got = take(&c, 4);
    assert_eq!(got.len(), 4);
    let cgm = c.group_metadata().unwrap();
    let offsets_at = |o: i64| {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&input, 0, rdkafka::Offset::Offset(o))
            .unwrap();
        tpl
    };
    p.begin_transaction().unwrap();
    p.send(
        BaseRecord::to(&output)
            .key("k")
            .payload("with-offsets")
            .partition(0),
    )
    .unwrap();
    p.send_offsets_to_transaction(&offsets_at(4), &cgm, Duration::from_secs(30))
        .unwrap();
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    let committed = |c: &BaseConsumer| {
        c.committed(Duration::from_secs(10))
            .unwrap()
            .find_partition(&input, 0)
            .unwrap()
            .offset()
    };
    assert_eq!(committed(&c), rdkafka::Offset::Offset(4));
    p.begin_transaction().unwrap();
    p.send(
        BaseRecord::to(&output)
            .key("k")
            .payload("aborted-2")
            .partition(0),
    )
    .unwrap();
    p.send_offsets_to_transaction(&offsets_at(8), &cgm, Duration::from_secs(30))
        .unwrap();
    p.abort_transaction(Duration::from_secs(30)).unwrap();
    assert_eq!(committed(&c), rdkafka::Offset::Offset(4));
    assert_eq!(
        read_all(&output, "read_committed"),
        vec!["committed", "with-offsets"]
    );
    drop(c);

    // A crashed producer (never commits, never aborts) leaves its transaction open, which
    // holds read_committed readers back; its successor with the same transactional.id
    // aborts it at init_transactions, long before the transaction timeout (60 s).
    p.begin_transaction().unwrap();
    p.send(
        BaseRecord::to(&output)
            .key("k")
            .payload("crashed")
            .partition(0),
    )
    .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    std::mem::forget(p); // as if killed: no abort, no commit
    let started = Instant::now();
    let successor = txn_producer(&id);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the successor's init_transactions aborted the open transaction ({took:?})"
    );
    successor.begin_transaction().unwrap();
    successor
        .send(
            BaseRecord::to(&output)
                .key("k")
                .payload("after")
                .partition(0),
        )
        .unwrap();
    successor
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        read_all(&output, "read_committed"),
        vec!["committed", "with-offsets", "after"]
    );
    eprintln!("broker conformance: successor fenced and aborted a crashed transaction in {took:?}");
}

#[test]
fn broker_conformance_static_membership() {
    let topic = unique("static");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin: AdminClient<DefaultClientContext> = base().create().unwrap();
    rt.block_on(create(&admin, &topic, 2, false));
    produce(&topic, 10, "none");
    let group = format!("{topic}-g");
    let member = |instance: &str| -> BaseConsumer {
        let c: BaseConsumer = base()
            .set("group.id", &group)
            .set("group.instance.id", instance)
            .set("session.timeout.ms", "45000")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        c.subscribe(&[&topic]).unwrap();
        c
    };
    let assigned = |c: &BaseConsumer| {
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            let _ = c.poll(Duration::from_millis(100));
            let a = c.assignment().unwrap();
            if a.count() > 0 {
                return a.count();
            }
        }
        0
    };
    let first = member("inst-1");
    assert_eq!(assigned(&first), 2);
    // A static member that goes away (killed, or closed) does not leave the group; its
    // successor with the same group.instance.id gets the partitions back at once instead
    // of waiting for the 45 s session timeout.
    drop(first);
    let started = Instant::now();
    let second = member("inst-1");
    assert_eq!(assigned(&second), 2);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "static member rejoined without a session timeout ({took:?})"
    );
    eprintln!("broker conformance: static member took its partitions back in {took:?}");
}
