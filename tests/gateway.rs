//! The Genesys SDKs' gateway mode (`inbound.gateway`, SPEC §12) on the real proxy in front
//! of the simulator: the login answers caller tokens, a token authenticates its caller,
//! refusals have Genesys' login shape, tokens expire and die with a key rotation, the
//! `api_path` prefix works and cannot carry a traversal, and no token is ever logged.

mod support;

use std::time::Duration;

use base64::Engine;
use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use serde_json::json;
use support::{Answer, GcpoolProcess, HttpClient, THREE_CLIENTS};
use tracing::info;

const IVR_KEY: &str = "ivr-key-0123456789abcdef";
const BATCH_KEY: &str = "batch-key-fedcba9876543210";
const FORM: &str = "application/x-www-form-urlencoded";

/// Config for gcpool (listening on `listen` / `admin`) in front of `sim`, with callers
/// `ivr` and `batch` (keys `ivr_key`, [`BATCH_KEY`]) and `gateway` as the lines of
/// `inbound.gateway` (2 spaces in).
fn gateway_yaml(
    sim: &Simulator,
    listen: &str,
    admin: &str,
    ivr_key: &str,
    gateway: &str,
) -> String {
    support::config_yaml(&sim.base_url(), listen, admin, &THREE_CLIENTS, "").replace(
        "inbound:\n  allow_anonymous: true\n",
        &format!(
            "inbound:\n  api_keys:\n    - name: ivr\n      key: \"{ivr_key}\"\n    \
             - name: batch\n      key: \"{BATCH_KEY}\"\n  gateway:\n{gateway}"
        ),
    )
}

async fn start(sim: &Simulator, ivr_key: &str, gateway: &str) -> gcpool::app::Gcpool {
    let yaml = gateway_yaml(sim, "127.0.0.1:0", "127.0.0.1:1", ivr_key, gateway);
    support::start_config(support::config(&yaml)).await
}

fn basic(id: &str, secret: &str) -> String {
    let pair = format!("{id}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// `POST {login}` as the SDKs send it: HTTP Basic, a form body.
async fn login(client: &HttpClient, url: &str, id: &str, secret: &str, body: &str) -> Answer {
    let auth = basic(id, secret);
    client
        .request(
            Method::POST,
            url,
            &[("authorization", auth.as_str()), ("content-type", FORM)],
            body,
        )
        .await
}

/// The access token of a login that must succeed.
async fn token(client: &HttpClient, url: &str, id: &str, secret: &str) -> String {
    let answer = login(client, url, id, secret, "grant_type=client_credentials").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.json()["access_token"]
        .as_str()
        .expect("access_token is a string")
        .to_owned()
}

async fn get_with(client: &HttpClient, url: &str, token: &str) -> Answer {
    let bearer = format!("Bearer {token}");
    client
        .request(Method::GET, url, &[("authorization", bearer.as_str())], "")
        .await
}

fn invalid_client() -> serde_json::Value {
    json!({
        "error": "invalid_client",
        "description": "authentication failed",
        "error_description": "authentication failed",
    })
}

/// The login answers a bearer token (Genesys' shape, never cached) without touching the
/// upstream; the token then authenticates its caller, whose name labels the metrics.
#[tokio::test]
async fn the_login_answers_a_token_that_authenticates_its_caller() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let gcpool = start(&sim, IVR_KEY, "    token_lifetime: 1h\n").await;
    let client = HttpClient::new();
    let base = format!("http://{}", gcpool.api_addr());
    let grants_at_start = sim.stats().token_grants;

    info!("logging in as the Python and JavaScript SDKs do");
    let answer = login(
        &client,
        &format!("{base}/login/oauth/token"),
        "ivr",
        IVR_KEY,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.header("content-type"), "application/json");
    assert_eq!(answer.header("cache-control"), "no-store");
    let body = answer.json();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().expect("a token").to_owned();
    assert!(token.len() > 40, "an opaque token: {token}");

    info!("logging in with the credentials in the form, as Genesys' login also allows");
    let answer = client
        .request(
            Method::POST,
            &format!("{base}/login/oauth/token"),
            &[("content-type", FORM)],
            &format!("grant_type=client_credentials&client_id=batch&client_secret={BATCH_KEY}"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());

    let stats = sim.stats();
    assert_eq!(
        (stats.accepted, stats.token_grants),
        (0, grants_at_start),
        "a login reaches no upstream"
    );

    info!("calling the API with the token");
    let answer = get_with(&client, &format!("{base}/api/v2/users/u-1"), &token).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let echo = answer.json();
    assert_eq!(echo["path"], "/api/v2/users/u-1");
    let forwarded: Vec<String> = echo["headers"]
        .as_array()
        .expect("echoed headers")
        .iter()
        .filter(|h| h[0] == "authorization")
        .map(|h| h[1].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert!(
        !forwarded[0].contains(&token),
        "the caller token never goes upstream: {forwarded:?}"
    );

    let metrics = support::metrics(&gcpool).await;
    for series in [
        r#"gcpool_requests_total{caller="ivr",method="POST",outcome="answered",route="/oauth/token",status="200"}"#,
        r#"gcpool_requests_total{caller="batch",method="POST",outcome="answered",route="/oauth/token",status="200"}"#,
        r#"gcpool_requests_total{caller="ivr",method="GET",outcome="forwarded",route="/api/v2/users/{userId}",status="200"}"#,
    ] {
        assert_eq!(
            support::metric_value(&metrics, series),
            Some(1.0),
            "{series}\n{metrics}"
        );
    }
}

/// Wrong or missing credentials get Genesys' own `invalid_client`; a grant other than
/// client credentials `unsupported_grant_type`; neither says which part was wrong, and the
/// anonymous caller can never log in.
#[tokio::test]
async fn refused_logins_have_genesys_login_errors() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let yaml = gateway_yaml(
        &sim,
        "127.0.0.1:0",
        "127.0.0.1:1",
        IVR_KEY,
        "    login_path: \"\"\n",
    )
    .replace("inbound:\n", "inbound:\n  allow_anonymous: true\n");
    let gcpool = support::start_config(support::config(&yaml)).await;
    let client = HttpClient::new();
    let url = format!("http://{}/oauth/token", gcpool.api_addr());
    let grant = "grant_type=client_credentials";

    for (id, secret) in [
        ("ivr", "wrong-key"),
        ("ivr", BATCH_KEY),
        ("nobody", IVR_KEY),
        ("IVR", IVR_KEY),
        ("anonymous", ""),
        ("", ""),
    ] {
        let answer = login(&client, &url, id, secret, grant).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{id}:{secret}");
        assert_eq!(answer.json(), invalid_client(), "{id}:{secret}");
        assert_eq!(answer.header("x-gcpool-reason"), "unauthorized");
        assert!(!answer.text().contains(IVR_KEY));
    }
    let answer = client
        .request(Method::POST, &url, &[("content-type", FORM)], grant)
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "no credentials at all"
    );
    assert_eq!(answer.json(), invalid_client());

    let answer = login(
        &client,
        &url,
        "ivr",
        IVR_KEY,
        "grant_type=password&username=x",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "unsupported_grant_type");
    assert_eq!(
        answer.json()["error_description"],
        "grant type not supported"
    );
    let answer = login(&client, &url, "ivr", IVR_KEY, "").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "invalid_request");
    let answer = login(&client, &url, "nobody", "x", "grant_type=password").await;
    assert_eq!(
        answer.json(),
        invalid_client(),
        "the client is checked before the grant"
    );

    info!("the login path takes POST only, and a body of a few form fields");
    let answer = client.request(Method::GET, &url, &[], "").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.header("allow"), "POST");
    let big = format!("{grant}&pad={}", "x".repeat(20_000));
    let answer = login(&client, &url, "ivr", IVR_KEY, &big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    let metrics = support::metrics(&gcpool).await;
    let refused = support::metric_value(
        &metrics,
        r#"gcpool_rejections_total{caller="unknown",reason="unauthorized"}"#,
    );
    assert_eq!(refused, Some(8.0), "{metrics}");
    assert_eq!(
        support::metric_value(
            &metrics,
            r#"gcpool_rejections_total{caller="ivr",reason="bad_request"}"#,
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(sim.stats().accepted, 0, "no login reached the upstream");

    info!("without a token, the anonymous caller still passes (sidecar), but gets no token");
    let answer = client
        .get(&format!("http://{}/api/v2/users/u-1", gcpool.api_addr()))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// A token is refused once `token_lifetime` has passed: gcpool's usual 401.
#[tokio::test]
async fn an_expired_token_is_refused() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let gcpool = start(&sim, IVR_KEY, "    token_lifetime: 2s\n").await;
    let client = HttpClient::new();
    let base = format!("http://{}", gcpool.api_addr());
    let token = token(
        &client,
        &format!("{base}/login/oauth/token"),
        "ivr",
        IVR_KEY,
    )
    .await;
    let url = format!("{base}/api/v2/users/u-1");
    assert_eq!(get_with(&client, &url, &token).await.status, StatusCode::OK);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer = get_with(&client, &url, &token).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.header("x-gcpool-reason"), "unauthorized");
    assert_eq!(answer.json()["code"], "authentication.required");
    for forged in ["", "gcp1.x.1.y", &format!("{token}x")] {
        let answer = get_with(&client, &url, forged).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{forged}");
    }
    assert_eq!(sim.stats().accepted, 1, "refused tokens reach no upstream");
}

/// A reload that gives a caller a new key kills the tokens of the old one (and only its);
/// the new key logs in, the old one no more. Another replica with the same config takes
/// the same tokens.
#[tokio::test]
async fn a_key_rotation_kills_old_tokens_and_replicas_share_them() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let gateway = "    token_lifetime: 1h\n";
    let gcpool = start(&sim, IVR_KEY, gateway).await;
    let replica = start(&sim, IVR_KEY, gateway).await;
    let client = HttpClient::new();
    let base = format!("http://{}", gcpool.api_addr());
    let login_url = format!("{base}/login/oauth/token");
    let ivr = token(&client, &login_url, "ivr", IVR_KEY).await;
    let batch = token(&client, &login_url, "batch", BATCH_KEY).await;
    let url = format!("{base}/api/v2/users/u-1");
    let on_replica = format!("http://{}/api/v2/users/u-1", replica.api_addr());
    for t in [&ivr, &batch] {
        assert_eq!(get_with(&client, &url, t).await.status, StatusCode::OK);
        assert_eq!(
            get_with(&client, &on_replica, t).await.status,
            StatusCode::OK,
            "no shared state: the same config verifies it"
        );
    }

    info!("rotating ivr's key by a reload");
    let rotated = "ivr-key-rotated-00000000";
    let yaml = gateway_yaml(&sim, "127.0.0.1:0", "127.0.0.1:1", rotated, gateway);
    gcpool
        .reload(support::config(&yaml))
        .expect("reload applies");
    let answer = get_with(&client, &url, &ivr).await;
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "the old key's token is dead"
    );
    assert_eq!(get_with(&client, &url, &batch).await.status, StatusCode::OK);
    let answer = login(
        &client,
        &login_url,
        "ivr",
        IVR_KEY,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.json(), invalid_client());
    let fresh = token(&client, &login_url, "ivr", rotated).await;
    assert_eq!(get_with(&client, &url, &fresh).await.status, StatusCode::OK);
    assert_eq!(
        get_with(&client, &on_replica, &fresh).await.status,
        StatusCode::UNAUTHORIZED,
        "the replica still has the old key"
    );
}

/// `api_path` moves the API under a prefix that ends on a segment boundary; what follows it
/// meets every check of the path, so no traversal or encoding gets through it.
#[tokio::test]
async fn the_api_path_prefix_works_and_carries_no_traversal() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let gcpool = start(
        &sim,
        IVR_KEY,
        "    login_path: /gc/login\n    api_path: /gc/api\n",
    )
    .await;
    let client = HttpClient::new();
    let base = format!("http://{}", gcpool.api_addr());
    let token = token(
        &client,
        &format!("{base}/gc/login/oauth/token"),
        "ivr",
        IVR_KEY,
    )
    .await;

    let answer = get_with(
        &client,
        &format!("{base}/gc/api/api/v2/users/u-1?expand=x"),
        &token,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["path"], "/api/v2/users/u-1");
    assert_eq!(answer.json()["query"], "expand=x");
    let answer = get_with(&client, &format!("{base}/api/v2/users/u-2"), &token).await;
    assert_eq!(answer.status, StatusCode::OK, "the plain path stays valid");
    let answer = client
        .request(
            Method::GET,
            &format!("{base}/gc/api/api/v2/users/u-3"),
            &[("x-api-key", IVR_KEY)],
            "",
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "keys work under the prefix too"
    );
    let accepted = sim.stats().accepted;

    for (path, status) in [
        ("/gc/api/api/v2/../../x", StatusCode::BAD_REQUEST),
        (
            "/gc/api/api/v2/users/x%2F..%2F..%2Fauthorization",
            StatusCode::BAD_REQUEST,
        ),
        ("/gc/api/api/v2/users/%2e%2e/roles", StatusCode::BAD_REQUEST),
        ("/gc/api/../api/v2/users/u-1", StatusCode::NOT_FOUND),
        ("/gc/api/%2e%2e/api/v2/users/u-1", StatusCode::NOT_FOUND),
        ("/gc/apix/api/v2/users/u-1", StatusCode::NOT_FOUND),
        ("/gc%2Fapi/api/v2/users/u-1", StatusCode::NOT_FOUND),
        ("/gc/%61pi/api/v2/users/u-1", StatusCode::NOT_FOUND),
        ("/gc/api/api/v2", StatusCode::NOT_FOUND),
        ("/gc/api", StatusCode::NOT_FOUND),
        (
            "/gc/login/oauth/token/../../api/api/v2/users/u-1",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let answer = get_with(&client, &format!("{base}{path}"), &token).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.text());
    }
    assert_eq!(
        sim.stats().accepted,
        accepted,
        "no refused path reached the upstream"
    );
}

/// With RUST_LOG=debug, nothing the binary writes, nor `/status` or `/metrics`, holds a
/// caller token or key, after logins good and bad and calls with good, expired and forged
/// tokens.
#[tokio::test]
async fn no_token_or_key_is_ever_logged() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let yaml = gateway_yaml(
        &sim,
        "{API}",
        "{ADMIN}",
        IVR_KEY,
        "    token_lifetime: 2s\n",
    );
    let mut process = GcpoolProcess::spawn(&yaml, &[("RUST_LOG", "debug")]);
    process.wait_ready().await;
    let client = HttpClient::new();
    let base = format!("http://{}", process.api);
    let login_url = format!("{base}/login/oauth/token");
    let token = token(&client, &login_url, "ivr", IVR_KEY).await;
    let wrong = "wrong-key-that-must-not-show";
    let answer = login(
        &client,
        &login_url,
        "ivr",
        wrong,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = login(&client, &login_url, "ivr", IVR_KEY, "grant_type=password").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let url = format!("{base}/api/v2/users/u-1");
    let first = get_with(&client, &url, &token).await;
    let forged = format!("{token}x");
    get_with(&client, &url, &forged).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = get_with(&client, &url, &token).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);

    let status = client
        .get(&format!("http://{}/status", process.admin))
        .await
        .text();
    let metrics = client
        .get(&format!("http://{}/metrics", process.admin))
        .await
        .text();
    let stderr = process.stderr();
    assert!(
        stderr.contains("request refused"),
        "the debug log was written: {stderr}"
    );
    let tag = token.rsplit('.').next().expect("a tag");
    for (what, text) in [
        ("stderr", &stderr),
        ("/status", &status),
        ("/metrics", &metrics),
        ("the API answer", &first.text()),
        ("the expired answer", &expired.text()),
    ] {
        for secret in [token.as_str(), tag, IVR_KEY, wrong] {
            assert!(!text.contains(secret), "{what} holds a secret: {text}");
        }
    }
}

/// A login's body is read before the credentials in it can be checked, so it must never
/// take the memory that authenticated callers' bodies share (`max_body_bytes_in_flight`):
/// stalled logins without credentials leave an authenticated POST its room (they draw on an
/// allowance of their own, itself bounded), and a wrong `Authorization: Basic` (what the SDKs
/// send) is refused before its body is read. Before, the login took the callers' memory
/// unauthenticated: about 4,100 stalled logins, no credentials at all, held the default
/// 64 MiB for a whole request_timeout and every authenticated call with a body got 503
/// `body_memory`, while an unauthenticated API call is refused before its body is read.
#[tokio::test]
async fn stalled_logins_take_none_of_the_callers_body_memory() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let gateway = "    token_lifetime: 1h\n";
    let yaml = gateway_yaml(&sim, "127.0.0.1:0", "127.0.0.1:1", IVR_KEY, gateway).replace(
        "server:\n",
        "server:\n  request_timeout: 10s\n  max_body_bytes: 16384\n  \
             max_body_bytes_in_flight: 40000\n",
    );
    let gcpool = support::start_config(support::config(&yaml)).await;
    let addr = gcpool.api_addr();
    let client = HttpClient::new();
    let login_url = format!("http://{addr}/login/oauth/token");
    let head = |authorization: &str| {
        format!(
            "POST /login/oauth/token HTTP/1.1\r\nHost: x\r\n{authorization}Content-Type: {FORM}\r\n\
             Content-Length: 16384\r\n\r\n"
        )
    };
    let stall = |authorization: String, bytes: usize| {
        let head = head(&authorization);
        async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(head.as_bytes()).await.expect("head");
            s.write_all(&vec![b'a'; bytes]).await.expect("body");
            s
        }
    };

    // Stalled logins holding `total` body bytes between them, exactly (each sends part of a
    // 16,384-byte body, so none ends).
    let fill = async |holders: &mut Vec<TcpStream>, total: usize| {
        let mut left = total;
        while left > 0 {
            let bytes = left.min(16_000);
            holders.push(stall(String::new(), bytes).await);
            left -= bytes;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    info!("logins without credentials stall with as many bytes as the callers' bodies may hold");
    let mut holders = Vec::new();
    fill(&mut holders, 40_000).await;

    info!("a wrong key in Authorization is refused before the body is read");
    let wrong = format!("Authorization: {}\r\n", basic("ivr", "wrong-key"));
    let mut refused = stall(wrong, 0).await;
    let (answer, _) = support::read_until_closed(&mut refused, Duration::from_secs(2)).await;
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "answered at once, not after the body (or request_timeout): {answer:?}"
    );
    assert!(answer.contains("invalid_client"), "{answer}");

    info!("authenticated callers' bodies still find their room");
    let url = format!("http://{addr}/api/v2/analytics/conversations/details/query");
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    let answer = client
        .request(
            Method::POST,
            &url,
            &[("x-api-key", IVR_KEY), ("content-type", "application/json")],
            &body,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let ivr = token(&client, &login_url, "ivr", IVR_KEY).await;
    let bearer = format!("Bearer {ivr}");
    let answer = client
        .request(
            Method::POST,
            &url,
            &[
                ("authorization", bearer.as_str()),
                ("content-type", "application/json"),
            ],
            &body,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let answer = client
        .request(
            Method::POST,
            &login_url,
            &[("content-type", FORM)],
            &format!("grant_type=client_credentials&client_id=batch&client_secret={BATCH_KEY}"),
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "a login with its credentials in the form too: {}",
        answer.text()
    );

    info!("the logins' own allowance is bounded as well");
    fill(
        &mut holders,
        gcpool::inbound::gateway::LOGIN_BODIES_IN_FLIGHT - 40_000,
    )
    .await;
    let form = format!("grant_type=client_credentials&client_id=ivr&client_secret={IVR_KEY}");
    let over = support::eventually(
        "a login past the logins' allowance is refused",
        Duration::from_secs(3),
        async || {
            let answer = client
                .request(Method::POST, &login_url, &[("content-type", FORM)], &form)
                .await;
            if answer.status == StatusCode::SERVICE_UNAVAILABLE {
                Ok(answer)
            } else {
                Err(format!("{} {}", answer.status, answer.text()))
            }
        },
    )
    .await;
    assert_eq!(over.header("x-gcpool-reason"), "body_memory");
    drop(holders);
}
