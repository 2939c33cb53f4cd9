//! SIGTERM: in-flight requests finish, new connections are refused, the process exits 0.

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use support::{HttpClient, THREE_CLIENTS, config_yaml};

#[tokio::test]
async fn in_flight_request_completes_and_new_connections_are_refused() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let yaml = config_yaml(&sim.base_url(), "{API}", "{ADMIN}", &THREE_CLIENTS, "");
    let mut process = support::GcpoolProcess::spawn(&yaml, &[]);
    process.wait_ready().await;
    let api = process.api;

    // A request that takes 1.5 s upstream is in flight when SIGTERM arrives.
    let slow = tokio::spawn(async move {
        HttpClient::new()
            .request(
                Method::GET,
                &format!("http://{api}/api/v2/users"),
                &[("x-sim-delay-ms", "1500")],
                "",
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    process.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refused = tokio::net::TcpStream::connect(api).await;
    assert!(
        refused.is_err(),
        "new connections are refused once shutdown started"
    );

    let answer = slow.await.unwrap();
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the in-flight request completes: {}",
        answer.text()
    );
    let exit = process.wait_exit(Duration::from_secs(10)).await;
    assert!(
        exit.success(),
        "gcpool exits 0 after draining: {exit:?}\n{}",
        process.stderr()
    );
}
