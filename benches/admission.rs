//! One admission: the budgets that apply to each candidate client, the earliest joint
//! instant, the reservation. 1 and 50 clients, with 1,000 endpoint budgets configured.
//!
//! `cargo bench --bench admission`

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gcpool::admission::BudgetTable;
use gcpool::budget::{AdmitRequest, Candidate, Decision, MemoryStore};
use gcpool::config::Config;
use gcpool::routes::RouteTable;

struct NoEnv;
impl gcpool::config::Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// A config with `clients` clients and 1,000 org-scope endpoint budgets, limits far above
/// what the benchmark reaches in a window (so it measures the admit-at-once path).
fn config(clients: usize) -> Config {
    let mut yaml = String::from(
        "inbound:\n  allow_anonymous: true\nbudgets:\n  token_per_minute: 100000000\n  org_per_minute: 1000000000\n  window: 1s\n  endpoints:\n",
    );
    for op in RouteTable::genesys().operations().take(1000) {
        yaml.push_str(&format!(
            "    - route: \"{op}\"\n      per_minute: 100000000\n"
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
        c.bench_function(&format!("admit/{clients}_clients/1000_routes"), |b| {
            b.iter(|| {
                let candidates: Vec<Candidate> = (0..clients)
                    .map(|client| Candidate {
                        client,
                        budgets: table.for_client(client, Some(route)),
                    })
                    .collect();
                let decision = store.admit_now(AdmitRequest {
                    candidates: &candidates,
                    route: Some(route),
                    max_wait: Duration::from_secs(10),
                });
                assert!(matches!(decision, Decision::Admitted(_)));
                black_box(decision)
            });
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
