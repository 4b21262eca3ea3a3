//! Workload generator: parameters and the catalog in, a deterministic stream of realistic
//! usage events out (agent executions with model and tool calls, direct calls, duplicates,
//! late calls and bad events), keyed as producers key them.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::catalog::{AssetType, Catalog};

/// What to generate.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub executions: u64,
    pub direct_calls: u64,
    pub duplicates: f64,
    pub bad: f64,
    pub late: f64,
    pub accounts: u32,
    pub max_calls: u32,
    pub concurrency: usize,
    pub seed: u64,
    pub start: DateTime<Utc>,
    pub run_id: String,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            executions: 1000,
            direct_calls: 1000,
            duplicates: 0.01,
            bad: 0.005,
            late: 0.002,
            accounts: 50,
            max_calls: 50,
            concurrency: 64,
            seed: 7,
            start: Utc::now(),
            run_id: "run".into(),
        }
    }
}

/// One generated message.
#[derive(Debug, Clone)]
pub struct Generated {
    pub key: String,
    pub payload: Vec<u8>,
    /// True for the `execution_finished` of an execution (latency measurements).
    pub finish_of: Option<String>,
}

#[derive(Clone)]
struct Asset {
    id: String,
    kind: AssetType,
    units: Vec<String>,
}

struct Exec {
    id: String,
    account: String,
    agent: String,
    remaining: u32,
    calls: u32,
}

/// The generator; an iterator of messages.
pub struct Workload {
    spec: WorkloadSpec,
    rng: StdRng,
    models: Vec<Asset>,
    tools: Vec<Asset>,
    active: Vec<Exec>,
    started: u64,
    direct_left: u64,
    seq: u64,
    pending: Vec<Generated>,
    history: Vec<Generated>,
    closed: Vec<(String, String)>,
}

const COMPONENTS: [&str; 4] = ["planner", "orchestrator", "inspector", "responder"];

impl Workload {
    pub fn new(spec: WorkloadSpec, catalog: &Catalog) -> Workload {
        let mut models = Vec::new();
        let mut tools = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for v in catalog.versions() {
            if !seen.insert(v.asset_id.clone()) || v.prices.is_empty() {
                continue;
            }
            let a = Asset {
                id: v.asset_id.clone(),
                kind: v.asset_type,
                units: v.prices.keys().cloned().collect(),
            };
            match v.asset_type {
                AssetType::Model => models.push(a),
                _ => tools.push(a),
            }
        }
        Workload {
            rng: StdRng::seed_from_u64(spec.seed),
            direct_left: spec.direct_calls,
            spec,
            models,
            tools,
            active: Vec::new(),
            started: 0,
            seq: 0,
            pending: Vec::new(),
            history: Vec::new(),
            closed: Vec::new(),
        }
    }

    fn now(&self) -> String {
        (self.spec.start + Duration::milliseconds(self.seq as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    fn quantities(&mut self, a: &Asset) -> serde_json::Value {
        let mut q = serde_json::Map::new();
        for u in &a.units {
            let v: serde_json::Value = match u.as_str() {
                "input_tokens" => self.rng.random_range(50..8000).into(),
                "output_tokens" => self.rng.random_range(10..2000).into(),
                "audio_minutes" => format!(
                    "{}.{}",
                    self.rng.random_range(0..10),
                    self.rng.random_range(0..100)
                )
                .into(),
                "characters" => self.rng.random_range(100..5000).into(),
                _ => self.rng.random_range(1..4).into(),
            };
            q.insert(u.clone(), v);
        }
        serde_json::Value::Object(q)
    }

    fn call(&mut self, exec: Option<(String, String, String)>, account: &str) -> Generated {
        let model =
            self.tools.is_empty() || (!self.models.is_empty() && self.rng.random_bool(0.74));
        let pool = if model { &self.models } else { &self.tools };
        let a = pool[self.rng.random_range(0..pool.len())].clone();
        let q = self.quantities(&a);
        self.seq += 1;
        let event_id = format!("{}-e{}", self.spec.run_id, self.seq);
        let mut ev = json!({
            "type": if a.kind == AssetType::Model { "model_call" } else { "tool_call" },
            "event_id": event_id,
            "occurred_at": self.now(),
            "account_id": account,
            "asset_id": a.id,
            "quantities": q,
        });
        let key = match &exec {
            Some((x, agent, component)) => {
                ev["execution_id"] = x.clone().into();
                ev["agent_id"] = agent.clone().into();
                ev["component"] = component.clone().into();
                x.clone()
            }
            None => account.to_string(),
        };
        Generated {
            key,
            payload: ev.to_string().into_bytes(),
            finish_of: None,
        }
    }

    fn bad_event(&mut self) -> Generated {
        self.seq += 1;
        let id = format!("{}-bad{}", self.spec.run_id, self.seq);
        let now = self.now();
        let payload = match self.rng.random_range(0..6) {
            0 => "{\"type\":\"model_call\",".to_string(),
            1 => json!({"type":"model_call","event_id":id,"occurred_at":now,"account_id":"acct-bad","asset_id":"unknown/model","quantities":{"input_tokens":5}}).to_string(),
            2 => json!({"type":"tool_call","event_id":id,"occurred_at":now,"account_id":"acct-bad","asset_id":"tavily/web-search","quantities":{"requests":-1}}).to_string(),
            3 => json!({"type":"tool_call","event_id":id,"occurred_at":"yesterday","account_id":"acct-bad","asset_id":"tavily/web-search","quantities":{"requests":1}}).to_string(),
            4 => json!({"type":"model_call","event_id":id,"occurred_at":now,"account_id":"acct-bad","quantities":{"input_tokens":5}}).to_string(),
            _ => json!({"type":"gpu_call","event_id":id,"occurred_at":now,"account_id":"acct-bad"}).to_string(),
        };
        Generated {
            key: "acct-bad".into(),
            payload: payload.into_bytes(),
            finish_of: None,
        }
    }

    fn step(&mut self) -> Option<Generated> {
        if let Some(g) = self.pending.pop() {
            return Some(g);
        }
        let r: f64 = self.rng.random();
        if r < self.spec.duplicates && !self.history.is_empty() {
            let i = self.rng.random_range(0..self.history.len());
            let mut g = self.history[i].clone();
            g.finish_of = None;
            return Some(g);
        }
        if r < self.spec.duplicates + self.spec.bad {
            return Some(self.bad_event());
        }
        if r < self.spec.duplicates + self.spec.bad + self.spec.late && !self.closed.is_empty() {
            let i = self.rng.random_range(0..self.closed.len());
            let (x, account) = self.closed.swap_remove(i);
            return Some(self.call(Some((x, "agent-late".into(), "responder".into())), &account));
        }
        while self.active.len() < self.spec.concurrency && self.started < self.spec.executions {
            self.started += 1;
            let account = format!(
                "acct-{}",
                self.rng.random_range(0..self.spec.accounts.max(1))
            );
            let max = self.spec.max_calls.max(1);
            self.active.push(Exec {
                id: format!("{}-x{}", self.spec.run_id, self.started),
                agent: format!("agent-{}", self.rng.random_range(0..20)),
                account,
                remaining: self.rng.random_range(1..=max),
                calls: 0,
            });
        }
        let total_left = self.active.len() as u64 + self.direct_left;
        if total_left == 0 {
            return None;
        }
        if self.rng.random_range(0..total_left) < self.direct_left {
            self.direct_left -= 1;
            let account = format!(
                "acct-{}",
                self.rng.random_range(0..self.spec.accounts.max(1))
            );
            return Some(self.call(None, &account));
        }
        let i = self.rng.random_range(0..self.active.len());
        if self.active[i].remaining == 0 {
            let e = self.active.swap_remove(i);
            self.seq += 1;
            let mut ev = json!({
                "type": "execution_finished",
                "event_id": format!("{}-f{}", self.spec.run_id, self.seq),
                "occurred_at": self.now(),
                "account_id": e.account,
                "execution_id": e.id,
            });
            if self.rng.random_bool(0.5) {
                ev["expected_calls"] = e.calls.into();
            }
            self.closed.push((e.id.clone(), e.account.clone()));
            if self.closed.len() > 10_000 {
                self.closed.swap_remove(0);
            }
            return Some(Generated {
                key: e.id.clone(),
                payload: ev.to_string().into_bytes(),
                finish_of: Some(e.id),
            });
        }
        self.active[i].remaining -= 1;
        self.active[i].calls += 1;
        let component = COMPONENTS[self.rng.random_range(0..COMPONENTS.len())].to_string();
        let (x, agent, account) = (
            self.active[i].id.clone(),
            self.active[i].agent.clone(),
            self.active[i].account.clone(),
        );
        Some(self.call(Some((x, agent, component)), &account))
    }
}

impl Iterator for Workload {
    type Item = Generated;
    fn next(&mut self) -> Option<Generated> {
        let g = self.step()?;
        if self.spec.duplicates > 0.0 && g.finish_of.is_none() && self.history.len() < 4096 {
            self.history.push(g.clone());
        } else if self.spec.duplicates > 0.0 && g.finish_of.is_none() {
            let i = self.rng.random_range(0..self.history.len());
            self.history[i] = g.clone();
        }
        Some(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::{Output, PartitionRollup, RollupConfig};

    fn catalog() -> Catalog {
        Catalog::from_json(
            &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn workload_is_deterministic_and_realistic() {
        let spec = WorkloadSpec {
            executions: 200,
            direct_calls: 300,
            start: DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            ..Default::default()
        };
        let a: Vec<Vec<u8>> = Workload::new(spec.clone(), &catalog())
            .map(|g| g.payload)
            .collect();
        let b: Vec<Vec<u8>> = Workload::new(spec, &catalog()).map(|g| g.payload).collect();
        assert_eq!(a, b);
        let finishes = a
            .iter()
            .filter(|p| p.windows(18).any(|w| w == b"execution_finished"))
            .count();
        assert_eq!(finishes, 200);
        // Everything but the bad events prices against the shipped catalog.
        let mut r = PartitionRollup::new(RollupConfig::default(), 0);
        let mut out = Vec::new();
        let c = catalog();
        for (i, p) in a.iter().enumerate() {
            r.process(i as i64, p, &c, 0, &mut out);
        }
        r.close_all(&crate::plans::NO_PLANS, &mut out);
        let rejected = out
            .iter()
            .filter(|o| matches!(o, Output::Rejected(_)))
            .count();
        assert!(
            rejected > 0 && rejected < a.len() / 50,
            "{rejected} of {}",
            a.len()
        );
        let debits = out.iter().filter(|o| matches!(o, Output::Debit(_))).count();
        assert!(debits >= 500, "{debits}");
    }
}

#[cfg(test)]
mod tests_scan;
