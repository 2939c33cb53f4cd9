//! The admin status page (`GET /`) in a real headless browser: after real traffic through
//! a real gcpool against the simulator, the numbers chromium renders are the ones `/status`
//! gives at the same moment, and they count what the traffic did. The page loads nothing
//! from anywhere.

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::StatusCode;
use serde_json::Value;
use support::{HttpClient, THREE_CLIENTS, dump_dom, eventually, start_gcpool};
use tracing::info;

/// Token budgets of 4 a minute, an org-wide route budget of 6, and a short queue so that
/// requests over budget are answered with a local 429 at once.
const BUDGETS: &str = "budgets:\n  token_per_minute: 4\n  org_per_minute: 1000\n  queue:\n    max_wait: 100ms\n  \
    endpoints:\n    - route: GET /api/v2/users/me\n      per_minute: 6\n      scope: org\n";

/// 200s, upstream 429s (a limit gcpool was not told of) and local 429s (the budgets), then
/// the page at rest: every number on it equals `/status`, and the 429 figures equal what
/// the callers and the simulator saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_in_a_browser_shows_the_numbers_of_status() {
    let Some(chromium) = support::chromium() else {
        eprintln!(
            "SKIPPED: no chromium on PATH (apt-get install chromium); set GCPOOL_REQUIRE_CHROMIUM=1 to fail instead"
        );
        return;
    };
    let sim = Simulator::start(
        SimOptions::with_clients(2)
            .token_limit(100)
            .hidden_limit("sim-client-01", 2),
    )
    .await
    .unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS[..2], BUDGETS).await;
    let client = HttpClient::new();
    let admin = gcpool.admin_addr();

    info!("Sending 14 requests: some go through, some meet the hidden limit, the rest the budgets");
    let (mut ok, mut local_429) = (0u64, 0u64);
    for _ in 0..14 {
        let answer = client
            .get(&format!("http://{}/api/v2/users/me", gcpool.api_addr()))
            .await;
        match answer.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS if answer.headers.contains_key("x-gcpool-reason") => {
                local_429 += 1;
            }
            other => panic!("unexpected {other}: {}", answer.text()),
        }
    }
    let upstream_429 = sim.stats().rejected_429;
    assert!(ok >= 1, "some requests must go through");
    assert!(local_429 >= 1, "the budgets must answer some requests");
    assert!(
        upstream_429 >= 1,
        "the hidden limit must fire: {:?}",
        sim.stats()
    );

    info!("Waiting for rest: nothing queued, nothing in flight");
    let status_url = format!("http://{admin}/status");
    eventually("gcpool at rest", Duration::from_secs(5), async || {
        let status = client.get(&status_url).await.json();
        let busy =
            status["queue_pending"] != 0 || clients(&status).iter().any(|c| c["in_flight"] != 0);
        if busy {
            Err(status.to_string())
        } else {
            Ok(())
        }
    })
    .await;

    info!("Loading the page in chromium between two reads of /status that agree");
    let page_url = format!("http://{admin}/");
    let mut tries = 0;
    let (status, dom) = loop {
        let before = client.get(&status_url).await.json();
        let dom = dump_dom(&chromium, &page_url).await;
        let after = client.get(&status_url).await.json();
        if at_rest(&before) == at_rest(&after) {
            break (before, dom);
        }
        tries += 1;
        assert!(tries < 5, "/status never held still:\n{before}\n{after}");
    };
    let page = Page(&dom);

    assert_eq!(
        page.text("config-generation"),
        status["config_generation"].to_string()
    );
    assert_eq!(page.text("shared-state-backend"), "memory");
    assert_eq!(page.text("shared-state-up"), "up");
    assert_eq!(
        page.text("queue-pending"),
        status["queue_pending"].to_string()
    );
    assert_eq!(
        page.text("org-budget-used"),
        status["org_budget"]["used"].to_string()
    );
    assert_eq!(
        page.text("org-budget-limit"),
        status["org_budget"]["limit"].to_string()
    );

    let listed = clients(&status);
    assert_eq!(listed.len(), 2);
    for (i, c) in listed.iter().enumerate() {
        let field = |name: &str| page.text(&format!("client-{i}-{name}"));
        assert_eq!(field("name"), str_of(&c["name"]));
        assert_eq!(field("state"), str_of(&c["state"]));
        assert_eq!(
            field("healthy"),
            if c["healthy"] == true { "yes" } else { "no" }
        );
        assert_eq!(field("budget-used"), c["budget_used"].to_string());
        assert_eq!(field("budget-limit"), c["budget_limit"].to_string());
        assert_eq!(field("in-flight"), c["in_flight"].to_string());
        assert_eq!(field("upstream-429"), c["upstream_429"].to_string());
        // Read a moment apart from /status: the same to within 2 s.
        let shown: i64 = field("token-expires-in-s").parse().unwrap();
        let said = c["token_expires_in_s"].as_i64().unwrap();
        assert!((shown - said).abs() <= 2, "token expiry {shown} vs {said}");
        assert!(said > 80_000, "the simulator's tokens live a day: {c}");
    }
    assert!(!page.has("client-2"), "one row per client");

    let budgets = status["budgets"].as_array().unwrap();
    // Two token budgets, the org budget, the route budget.
    assert_eq!(budgets.len(), 4, "{status}");
    for (i, b) in budgets.iter().enumerate() {
        let field = |name: &str| page.text(&format!("budget-{i}-{name}"));
        assert_eq!(field("name"), str_of(&b["name"]));
        assert_eq!(field("kind"), str_of(&b["kind"]));
        assert_eq!(field("used"), b["used"].to_string());
        assert_eq!(field("limit"), b["limit"].to_string());
    }
    assert!(!page.has("budget-4"), "one row per budget");
    let route = budgets
        .iter()
        .find(|b| b["name"] == "endpoint:GET /api/v2/users/me")
        .unwrap_or_else(|| panic!("the route budget is listed: {status}"));
    assert!(
        route["used"].as_u64().unwrap() >= ok,
        "every request that went through used the route's window: {route}"
    );

    let learned = status["learned_limits"].as_object().unwrap();
    assert!(
        !learned.is_empty(),
        "the hidden limit's 429 taught a limit: {status}"
    );
    for (i, (name, per_minute)) in learned.iter().enumerate() {
        assert_eq!(page.text(&format!("learned-{i}-name")), *name);
        assert_eq!(
            page.text(&format!("learned-{i}-per-minute")),
            per_minute.to_string()
        );
    }
    assert!(!page.has(&format!("learned-{}-name", learned.len())));

    let minute = &status["last_minute"];
    assert_eq!(
        page.text("upstream-429-last-minute"),
        minute["upstream_429"].to_string()
    );
    assert_eq!(
        page.text("local-429-last-minute"),
        minute["local_429"].to_string()
    );
    assert_eq!(
        page.text("admissions-last-minute"),
        minute["admissions"].to_string()
    );
    let wait = minute["queue_wait_mean_ms"]
        .as_f64()
        .map_or_else(|| "–".to_owned(), |ms| format!("{ms:.1}"));
    assert_eq!(page.text("queue-wait-mean-ms"), wait);
    info!("The figures count what happened (gcpool is younger than a minute: all of it)");
    assert!(
        status["uptime_s"].as_u64().unwrap() < 55,
        "the test must read the page within gcpool's first minute for the counts below: {status}"
    );
    assert_eq!(minute["upstream_429"], upstream_429, "{minute}");
    assert_eq!(minute["local_429"], local_429, "{minute}");
    let per_client: u64 = listed
        .iter()
        .map(|c| c["upstream_429"].as_u64().unwrap())
        .sum();
    assert_eq!(per_client, upstream_429);
    assert!(minute["admissions"].as_u64().unwrap() >= ok);

    assert!(
        dom.contains(r#"<meta http-equiv="refresh" content="2">"#),
        "the page reloads itself: {dom}"
    );
    for (_, _, secret) in &THREE_CLIENTS[..2] {
        assert!(!dom.contains(secret), "a client secret appears on the page");
    }
    eprintln!("status page DOM:\n{dom}");
}

/// The page as served: HTML with a policy that loads nothing, no script, and no link
/// but to the admin's own endpoints.
#[tokio::test]
async fn page_loads_nothing_from_anywhere() {
    let sim = Simulator::start(SimOptions::with_clients(1)).await.unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS[..1], "").await;
    let answer = HttpClient::new()
        .get(&format!("http://{}/", gcpool.admin_addr()))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), "text/html; charset=utf-8");
    let csp = answer.header("content-security-policy");
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(!csp.contains("script-src"), "{csp}");
    let html = answer.text();
    assert!(
        html.contains("<td id=\"client-0-name\">pool-01</td>"),
        "{html}"
    );
    for needle in [
        "http://", "https://", "<script", "url(", "@import", "<link", "<iframe",
    ] {
        assert!(!html.contains(needle), "{needle} in the page:\n{html}");
    }
    let mut links = 0;
    for attribute in ["src=", "href=", "action="] {
        for (at, _) in html.match_indices(attribute) {
            let value = html[at + attribute.len()..].trim_start_matches(['"', '\'']);
            assert!(
                value.starts_with('/') && !value.starts_with("//"),
                "{attribute} must name an admin path: {}",
                &html[at..(at + 60).min(html.len())]
            );
            links += 1;
        }
    }
    assert_eq!(links, 2, "the page links /status and /metrics only");
}

fn clients(status: &Value) -> Vec<Value> {
    status["clients"].as_array().cloned().unwrap_or_default()
}

fn str_of(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a string: {value}"))
}

/// `/status` without what moves while gcpool is at rest (clocks).
fn at_rest(status: &Value) -> Value {
    let mut status = status.clone();
    status["uptime_s"] = Value::Null;
    status["last_minute"]["span_s"] = Value::Null;
    if let Some(clients) = status["clients"].as_array_mut() {
        for c in clients {
            c["token_expires_in_s"] = Value::Null;
        }
    }
    status
}

/// A DOM as chromium serialized it.
struct Page<'a>(&'a str);

impl Page<'_> {
    fn has(&self, id: &str) -> bool {
        self.0.contains(&format!(" id=\"{id}\""))
    }

    /// The text of the element with `id` (its first text node), unescaped.
    fn text(&self, id: &str) -> String {
        let marker = format!(" id=\"{id}\"");
        let at = self
            .0
            .find(&marker)
            .unwrap_or_else(|| panic!("no element #{id} in the page:\n{}", self.0));
        let rest = &self.0[at + marker.len()..];
        let start = rest.find('>').expect("the tag ends") + 1;
        let end = rest[start..].find('<').expect("the element ends") + start;
        rest[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&nbsp;", "\u{a0}")
            .replace("&amp;", "&")
    }
}
