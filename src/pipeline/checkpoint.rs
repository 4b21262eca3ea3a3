//! The `at_least_once` checkpoint coordinator, with no I/O: checkpoints begun (snapshots and
//! input offsets captured) and epochs acknowledged in; actions out ("write these snapshots",
//! "commit these offsets"). The one rule it enforces: offsets are committed only after every
//! output produced before them and the snapshots describing them are acknowledged, so a
//! commit never passes an output that could still be lost.
//!
//! Epochs: every output is counted in the current epoch until the broker acknowledges it
//! (the producer context keeps the counts). Beginning a checkpoint closes the epoch its
//! outputs were counted in; writing its snapshots uses a new epoch of their own.

use std::collections::VecDeque;
use std::time::Instant;

/// What the caller must do next.
#[derive(Debug, PartialEq)]
pub enum Action<S> {
    /// Write these partition snapshots, counting them in `epoch`.
    WriteSnapshots {
        snapshots: Vec<(i32, S)>,
        epoch: u64,
    },
    /// Commit these input offsets (partition, next offset); `started` is when the
    /// checkpoint began (for its duration metric).
    Commit {
        offsets: Vec<(i32, i64)>,
        started: Instant,
    },
}

struct Pending<S> {
    started: Instant,
    outputs_epoch: u64,
    snapshots: Vec<(i32, S)>,
    offsets: Vec<(i32, i64)>,
    snapshot_epoch: Option<u64>,
}

/// Checkpoints in progress, oldest first.
pub struct Coordinator<S> {
    pending: VecDeque<Pending<S>>,
    epoch: u64,
    acked_below: u64,
}

impl<S> Default for Coordinator<S> {
    fn default() -> Self {
        Coordinator {
            pending: VecDeque::new(),
            epoch: 0,
            acked_below: 0,
        }
    }
}

impl<S> Coordinator<S> {
    /// The epoch new outputs are counted in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Checkpoints begun and not yet committed.
    pub fn in_progress(&self) -> usize {
        self.pending.len()
    }

    /// Begins a checkpoint at the current position: `snapshots` of the partitions changed
    /// since the last one and every partition's next offset. Closes the current epoch and
    /// returns the new one (the caller makes sure its counter slot is free).
    pub fn begin(&mut self, snapshots: Vec<(i32, S)>, offsets: Vec<(i32, i64)>) -> u64 {
        self.pending.push_back(Pending {
            started: Instant::now(),
            outputs_epoch: self.epoch,
            snapshots,
            offsets,
            snapshot_epoch: None,
        });
        self.epoch += 1;
        self.epoch
    }

    /// Whether every epoch up to `epoch` is acknowledged; `in_flight(e)` is the number of
    /// messages of epoch `e` not yet acknowledged. The current epoch is never acknowledged
    /// (more may be sent in it).
    fn acked_through(&mut self, epoch: u64, in_flight: &impl Fn(u64) -> u64) -> bool {
        while self.acked_below <= epoch {
            if self.acked_below >= self.epoch || in_flight(self.acked_below) > 0 {
                return false;
            }
            self.acked_below += 1;
        }
        true
    }

    /// The next action the oldest checkpoint allows, if any. Call repeatedly until `None`.
    /// A `WriteSnapshots` opens a new epoch for the snapshots (returned in the action).
    pub fn next_action(&mut self, in_flight: impl Fn(u64) -> u64) -> Option<Action<S>> {
        let front = self.pending.front()?;
        match front.snapshot_epoch {
            None => {
                let outputs = front.outputs_epoch;
                if !self.acked_through(outputs, &in_flight) {
                    return None;
                }
                let epoch = self.epoch;
                let cp = self.pending.front_mut().expect("front");
                cp.snapshot_epoch = Some(epoch);
                let snapshots = std::mem::take(&mut cp.snapshots);
                self.epoch += 1;
                Some(Action::WriteSnapshots { snapshots, epoch })
            }
            Some(e) => {
                if !self.acked_through(e, &in_flight) {
                    return None;
                }
                let cp = self.pending.pop_front().expect("front");
                Some(Action::Commit {
                    offsets: cp.offsets,
                    started: cp.started,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn never_acked(_: u64) -> u64 {
        1
    }

    fn all_acked(_: u64) -> u64 {
        0
    }

    #[test]
    fn nothing_to_do_without_a_checkpoint() {
        let mut c: Coordinator<u8> = Coordinator::default();
        assert_eq!(c.next_action(all_acked), None);
    }

    #[test]
    fn snapshots_wait_for_outputs_then_commit_waits_for_snapshots() {
        let mut c: Coordinator<&str> = Coordinator::default();
        assert_eq!(c.epoch(), 0);
        let e = c.begin(vec![(0, "s0")], vec![(0, 10), (1, 5)]);
        assert_eq!(e, 1);
        // Outputs of epoch 0 still in flight: nothing may happen.
        assert_eq!(c.next_action(never_acked), None);
        let in_flight = |e: u64| u64::from(e != 0);
        match c.next_action(in_flight) {
            Some(Action::WriteSnapshots { snapshots, epoch }) => {
                assert_eq!(snapshots, vec![(0, "s0")]);
                assert_eq!(epoch, 1);
            }
            other => panic!("{other:?}"),
        }
        // Snapshots (epoch 1) not acknowledged: no commit yet.
        assert_eq!(c.next_action(in_flight), None);
        assert_eq!(c.epoch(), 2);
        // Epoch 1 acknowledged, but it is not the current epoch (2): commit.
        let in_flight = |e: u64| u64::from(e > 1);
        match c.next_action(in_flight) {
            Some(Action::Commit { offsets, .. }) => assert_eq!(offsets, vec![(0, 10), (1, 5)]),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.in_progress(), 0);
    }

    #[test]
    fn an_unacknowledged_older_epoch_holds_back_a_later_checkpoint() {
        let mut c: Coordinator<u8> = Coordinator::default();
        c.begin(vec![], vec![(0, 1)]);
        c.begin(vec![], vec![(0, 2)]);
        // Epoch 0 stuck: neither checkpoint may write or commit.
        let stuck = |e: u64| u64::from(e == 0);
        assert_eq!(c.next_action(stuck), None);
        assert_eq!(c.in_progress(), 2);
    }

    #[test]
    fn the_current_epoch_is_never_taken_as_acknowledged() {
        let mut c: Coordinator<u8> = Coordinator::default();
        c.begin(vec![], vec![(0, 1)]);
        assert!(matches!(
            c.next_action(all_acked),
            Some(Action::WriteSnapshots { epoch: 1, .. })
        ));
        // The snapshot epoch (1) became current + 1 = 2 after the write; commit allowed.
        assert!(matches!(
            c.next_action(all_acked),
            Some(Action::Commit { .. })
        ));
        // A new checkpoint began in epoch 2: its outputs epoch is 2, acknowledged once 3 opens.
        c.begin(vec![], vec![(0, 2)]);
        assert!(matches!(
            c.next_action(all_acked),
            Some(Action::WriteSnapshots { .. })
        ));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Send,
        Ack(usize),
        Begin,
        Advance,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Send),
            3 => (0usize..64).prop_map(Step::Ack),
            1 => Just(Step::Begin),
            2 => Just(Step::Advance),
        ]
    }

    proptest! {
        /// Against a model of the producer: whatever the order of sends, acknowledgements,
        /// checkpoints and advances, a commit never covers a message (output or snapshot)
        /// that is not yet acknowledged, and commits come in checkpoint order.
        #[test]
        fn a_commit_never_passes_an_unacknowledged_message(steps in prop::collection::vec(step(), 1..300)) {
            let mut c: Coordinator<u32> = Coordinator::default();
            // Unacknowledged messages: (id, epoch). A message sent before checkpoint k began
            // (or a snapshot of checkpoint k) must be acked before commit k.
            let mut unacked: Vec<(u64, u64)> = Vec::new();
            let mut next_id = 0u64;
            // Message ids each checkpoint depends on.
            let mut deps: HashMap<u32, Vec<u64>> = HashMap::new();
            let mut all_sent: Vec<u64> = Vec::new();
            let mut begun = 0u32;
            let mut committed = 0u32;
            for s in steps {
                match s {
                    Step::Send => {
                        unacked.push((next_id, c.epoch()));
                        all_sent.push(next_id);
                        next_id += 1;
                    }
                    Step::Ack(i) => {
                        if !unacked.is_empty() {
                            let i = i % unacked.len();
                            unacked.remove(i);
                        }
                    }
                    Step::Begin => {
                        deps.insert(begun, all_sent.clone());
                        c.begin(vec![(0, begun)], vec![(0, i64::from(begun))]);
                        begun += 1;
                    }
                    Step::Advance => {
                        loop {
                            let counts = unacked.clone();
                            let action = c.next_action(|e| counts.iter().filter(|(_, x)| *x == e).count() as u64);
                            match action {
                                None => break,
                                Some(Action::WriteSnapshots { snapshots, epoch }) => {
                                    for (_, k) in snapshots {
                                        unacked.push((next_id, epoch));
                                        deps.get_mut(&k).unwrap().push(next_id);
                                        all_sent.push(next_id);
                                        next_id += 1;
                                    }
                                }
                                Some(Action::Commit { offsets, .. }) => {
                                    let k = offsets[0].1 as u32;
                                    prop_assert_eq!(k, committed, "commits in checkpoint order");
                                    for id in &deps[&k] {
                                        prop_assert!(
                                            !unacked.iter().any(|(u, _)| u == id),
                                            "checkpoint {} committed while message {} unacknowledged", k, id
                                        );
                                    }
                                    committed += 1;
                                }
                            }
                        }
                    }
                }
            }
            // Once everything is acknowledged, every checkpoint commits.
            unacked.clear();
            while let Some(a) = c.next_action(|_| 0) {
                if let Action::Commit { .. } = a { committed += 1; }
            }
            prop_assert_eq!(committed, begun);
        }
    }
}
