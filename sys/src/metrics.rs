//! The Prometheus endpoint both daemons serve (`hyper`, HTTP/1 only): `GET /metrics` (and `/`)
//! answered with a fresh snapshot in the text format, version 0.0.4.
//!
//! The event loop owns the daemon's state, so the server never reads counters itself: each
//! scrape sends a [`Request`] over a channel and the loop answers with a snapshot between two
//! batches; rendering happens here, off the loop. Nothing runs between scrapes (no timer), and a
//! connection serves one request and is closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::prometheus_text;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// How long one scrape may take, from accept to the last byte (a slow or silent client is cut).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// A snapshot the endpoint can serve.
pub trait Render: Send + 'static {
    /// The snapshot in the Prometheus text format.
    fn render(&self) -> String;
}

/// A scrape asking the event loop for a snapshot.
pub type Request<S> = oneshot::Sender<S>;

/// Binds the metrics listener (separately from [`serve`], so a bad address fails at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves scrapes until the loop goes away (its receiver is dropped).
pub async fn serve<S: Render>(listener: TcpListener, requests: mpsc::Sender<Request<S>>) {
    while !requests.is_closed() {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = requests.closed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, requests.clone()));
            let connection = http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(SCRAPE_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics request failed"),
                Err(_) => tracing::debug!(%peer, "metrics request timed out"),
            }
        });
    }
}

/// Answers one request: the snapshot for `GET /metrics` (or `/`), a short error otherwise.
async fn answer<B, S: Render>(
    request: hyper::Request<B>,
    requests: mpsc::Sender<Request<S>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let (status, body) = if request.method() != Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, String::from("only GET\n"))
    } else if path != "/metrics" && path != "/" {
        (StatusCode::NOT_FOUND, String::from("try /metrics\n"))
    } else {
        let (tx, rx) = oneshot::channel();
        let snapshot = match requests.send(tx).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        match snapshot {
            Some(snapshot) => (StatusCode::OK, snapshot.render()),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                String::from("shutting down\n"),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u64);

    impl Render for Fixed {
        fn render(&self) -> String {
            format!("# TYPE upmt_test gauge\nupmt_test {}\n", self.0)
        }
    }

    #[tokio::test]
    async fn each_scrape_asks_the_loop_for_a_new_snapshot_and_the_server_ends_with_the_loop() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, mut rx) = mpsc::channel::<Request<Fixed>>(4);
        let server = tokio::spawn(serve(listener, tx));
        let answering = tokio::spawn(async move {
            for n in 1..=2 {
                let reply = rx.recv().await.expect("a scrape");
                let _ = reply.send(Fixed(n));
            }
        });
        let first =
            crate::testing::http_exchange(addr, "GET /metrics HTTP/1.1\r\nHost: mh\r\n\r\n").await;
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(
            first.ends_with("\r\n\r\n# TYPE upmt_test gauge\nupmt_test 1\n"),
            "{first}"
        );
        let second = crate::testing::http_exchange(addr, "GET / HTTP/1.0\r\n\r\n").await;
        assert!(second.ends_with("upmt_test 2\n"), "{second}");
        answering.await.expect("loop");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops once the loop's receiver is gone")
            .expect("server task");
    }
}
