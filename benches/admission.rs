//! One admission: the budgets that apply to each candidate client (built as the request
//! path builds them, in a reused list), the earliest joint instant, the reservation. 1 and
//! 50 clients, with 1,000 endpoint budgets configured.
//!
//! `cargo bench --bench admission`

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gcpool::admission::{BudgetTable, CandidateLists};
use gcpool::budget::{AdmitRequest, Decision, MemoryStore, Share};
use gcpool::config::Config;
use gcpool::routes::RouteTable;

struct NoEnv;
impl gcpool::config::Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// A config with `clients` clients and 1,000 org-scope endpoint budgets, limits far above
/// what the benchmark reaches in a window (so it measures the admit-at-once path; the
/// loop checks that no admission waits). At 100,000,000 a minute (1.67 million a window)
/// a client admitting every 0.6 µs filled its token window, and the benchmark measured
/// queueing behind it instead.
fn config(clients: usize) -> Config {
    let mut yaml = String::from(
        "inbound:\n  allow_anonymous: true\nbudgets:\n  token_per_minute: 4000000000\n  org_per_minute: 4000000000\n  window: 1s\n  endpoints:\n",
    );
    for op in RouteTable::genesys().operations().take(1000) {
        yaml.push_str(&format!(
            "    - route: \"{op}\"\n      per_minute: 4000000000\n"
        ));
    }
    yaml.push_str("clients:\n");
    for i in 0..clients {
        yaml.push_str(&format!(
            "  - name: c{i}\n    client_id: id{i}\n    client_secret: s{i}\n"
        ));
    }
    Config::from_yaml(&yaml, Path::new("."), &NoEnv).expect("benchmark config is valid")
}

fn bench(c: &mut Criterion) {
    let route = RouteTable::genesys()
        .operations()
        .nth(500)
        .expect("1,000 operations")
        .id();
    for clients in [1usize, 50] {
        let config = config(clients);
        let table = BudgetTable::new(&config);
        let store = MemoryStore::new(table.defs(), clients);
        let lists = CandidateLists::default();
        // The pool's order of preference (`Pool::candidates`, not measured here).
        let order: Vec<usize> = (0..clients).collect();
        c.bench_function(&format!("admit/{clients}_clients/1000_routes"), |b| {
            b.iter(|| {
                let candidates = lists.build(&table, &order, Some(route), None);
                let decision = store.admit_now(AdmitRequest {
                    candidates: &candidates,
                    route: Some(route),
                    max_wait: Duration::from_secs(10),
                    share: Share::WHOLE,
                });
                assert!(
                    matches!(&decision, Decision::Admitted(r) if r.wait.is_zero()),
                    "the benchmark measures admissions that wait for nothing"
                );
                black_box(decision)
            });
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
