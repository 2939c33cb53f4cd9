//! The least a hyper proxy does per request, as a floor for `bench/instructions.sh`: one
//! thread, HTTP/1.1 in (hyper's server connection, no version detection), one upstream
//! HTTP/1.1 connection per caller connection (hyper's client connection), the caller's
//! request sent on it with its URI in origin form and a fixed `Authorization`, the answer
//! streamed back. No admission, no metrics, no deadlines, no header rewriting: whatever
//! gcpool spends above this is gcpool's, and this itself is what hyper costs.
//!
//! `cargo run --release --example bare_proxy -- LISTEN UPSTREAM BEARER`
//! (e.g. `127.0.0.1:9000 127.0.0.1:8080 "Bearer x"`); stops on Ctrl-C / SIGTERM.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, bearer] = args.as_slice() else {
        return Err("usage: bare_proxy LISTEN UPSTREAM BEARER".into());
    };
    let bearer = HeaderValue::from_str(bearer)?;
    let upstream: Arc<str> = upstream.as_str().into();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen.as_str()).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = term.recv() => return Ok(()),
            };
            stream.set_nodelay(true)?;
            tokio::spawn(serve(stream, upstream.clone(), bearer.clone()));
        }
    })
}

/// One caller connection, with its own upstream connection made on the first request.
async fn serve(stream: TcpStream, upstream: Arc<str>, bearer: HeaderValue) {
    let sender: Upstream = Arc::default();
    let service = service_fn(move |request: Request<Incoming>| {
        forward(request, sender.clone(), upstream.clone(), bearer.clone())
    });
    let _: Result<(), Infallible> = server::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
        .or(Ok(()));
}

type Upstream = Arc<Mutex<Option<client::SendRequest<Incoming>>>>;

async fn forward(
    mut request: Request<Incoming>,
    sender: Upstream,
    upstream: Arc<str>,
    bearer: HeaderValue,
) -> Result<Response<Incoming>, BoxError> {
    let mut slot = sender.lock().await;
    let sender = match slot.as_mut() {
        Some(sender) => sender,
        None => {
            let io = TcpStream::connect(upstream.as_ref()).await?;
            io.set_nodelay(true)?;
            let (sender, connection) = client::handshake(TokioIo::new(io)).await?;
            tokio::spawn(connection);
            slot.insert(sender)
        }
    };
    let path = request.uri().path_and_query().cloned();
    *request.uri_mut() = path.map_or_else(|| Uri::from_static("/"), Uri::from);
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    sender.ready().await?;
    Ok(sender.send_request(request).await?)
}
