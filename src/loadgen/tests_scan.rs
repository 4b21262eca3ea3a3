//! The generator's payloads (valid, bad, duplicates) through the event decoder's fast path:
//! each must give exactly what the serde path alone gives (`crate::event::tests_scan::both`),
//! and the good ones must take the fast path.

use proptest::prelude::*;

use crate::catalog::Catalog;
use crate::event::Origin;
use crate::event::tests_scan::both;
use crate::loadgen::{Workload, WorkloadSpec};

/// Realistic payloads from the workload generator (valid, bad, duplicates), as the bench and
/// the pipeline see them.
fn workload() -> Vec<Vec<u8>> {
    let catalog = Catalog::from_json(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap(),
    )
    .unwrap();
    let spec = WorkloadSpec {
        executions: 60,
        direct_calls: 200,
        bad: 0.1,
        duplicates: 0.05,
        ..Default::default()
    };
    Workload::new(spec, &catalog).map(|g| g.payload).collect()
}

#[test]
fn workload_payloads_take_the_fast_path_and_agree() {
    let payloads = workload();
    let fast = payloads
        .iter()
        .filter(|p| both(p, Origin::Producer).1)
        .count();
    // The generator's bad events include some the splitter declines; the good ones must not
    // fall back, or the fast path buys nothing.
    assert!(
        fast * 100 >= payloads.len() * 90,
        "{fast} of {} took the fast path",
        payloads.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn mutated_workload_payloads_agree(
        index in 0usize..1000,
        at in any::<prop::sample::Index>(),
        edit in prop_oneof![
            Just(b"\\".to_vec()), Just(b"\"".to_vec()), Just(b",".to_vec()), Just(b"}".to_vec()),
            Just(b" ".to_vec()), Just(b"0".to_vec()), Just(b"null".to_vec()), Just(vec![0xff]),
            Just("é".as_bytes().to_vec()), Just(vec![]),
        ],
        replace in any::<bool>(),
    ) {
        thread_local!(static PAYLOADS: Vec<Vec<u8>> = workload());
        let mut p = PAYLOADS.with(|all| all[index % all.len()].clone());
        let at = at.index(p.len());
        if replace {
            p.remove(at);
        }
        for (i, b) in edit.into_iter().enumerate() {
            p.insert(at + i, b);
        }
        let _ = both(&p, Origin::Producer);
    }
}
