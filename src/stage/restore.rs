//! Restore decisions, pure: the input positions a changelog names against the group's
//! committed offsets.

use std::collections::HashMap;

/// Next offset per input topic of one partition number.
pub type Positions = HashMap<String, i64>;

/// How the changelog's positions compare with the group's committed offsets.
#[derive(Debug, PartialEq, Eq)]
pub enum Agreement {
    Yes(Positions),
    /// The group is behind (offsets reset or the group deleted): trust the changelog.
    ChangelogAhead(Positions),
    /// The group committed more than the changelog shows: keep reading.
    ChangelogBehind,
}

/// Compares the positions named in the changelog with the committed offsets.
pub fn agree(in_log: Option<&Positions>, committed: &HashMap<String, Option<i64>>) -> Agreement {
    let empty = Positions::new();
    let log = in_log.unwrap_or(&empty);
    let mut ahead = false;
    for (t, c) in committed {
        match (log.get(t), c) {
            (Some(l), Some(c)) if l == c => {}
            (Some(l), Some(c)) if l > c => ahead = true,
            (Some(_), None) => ahead = true,
            (None, None) => {}
            _ => return Agreement::ChangelogBehind,
        }
    }
    if ahead {
        Agreement::ChangelogAhead(log.clone())
    } else {
        Agreement::Yes(log.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(pairs: &[(&str, i64)]) -> Positions {
        pairs.iter().map(|(t, o)| (t.to_string(), *o)).collect()
    }

    fn committed(pairs: &[(&str, Option<i64>)]) -> HashMap<String, Option<i64>> {
        pairs.iter().map(|(t, o)| (t.to_string(), *o)).collect()
    }

    #[test]
    fn changelog_and_committed_offsets_must_agree() {
        let log = pos(&[("debits", 10), ("grants", 4)]);
        assert_eq!(
            agree(
                Some(&log),
                &committed(&[("debits", Some(10)), ("grants", Some(4))])
            ),
            Agreement::Yes(log.clone())
        );
        // The group committed a transaction whose changelog records are not visible yet.
        assert_eq!(
            agree(
                Some(&log),
                &committed(&[("debits", Some(12)), ("grants", Some(4))])
            ),
            Agreement::ChangelogBehind
        );
        assert_eq!(
            agree(None, &committed(&[("debits", Some(1)), ("grants", None)])),
            Agreement::ChangelogBehind
        );
        // Fresh: nothing anywhere.
        assert_eq!(
            agree(None, &committed(&[("debits", None), ("grants", None)])),
            Agreement::Yes(Positions::new())
        );
        // Offsets reset or group deleted: the changelog describes the state; trust it.
        assert_eq!(
            agree(
                Some(&log),
                &committed(&[("debits", None), ("grants", Some(4))])
            ),
            Agreement::ChangelogAhead(log.clone())
        );
        // One input never consumed yet.
        let only_debits = pos(&[("debits", 3)]);
        assert_eq!(
            agree(
                Some(&only_debits),
                &committed(&[("debits", Some(3)), ("grants", None)])
            ),
            Agreement::Yes(only_debits.clone())
        );
    }
}
