//! SIEM forwarding from the running daemon: syslog (RFC 5424, octet-counted, over TCP and TLS)
//! and JSON lines over HTTP. The receivers are real listeners, stopped and restarted mid-run; the
//! daemon is stopped and started again mid-stream. Every record must arrive, in seq order, with no
//! gap; a record may arrive twice only where a send was cut off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::app::App;
use latchkey_sim::NukiOptions;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

type Seqs = Arc<Mutex<Vec<i64>>>;

/// A syslog receiver on a loopback port: records the `seq` of every complete octet-counted frame.
struct Receiver {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(port: u16, got: Seqs, tls: Option<tokio_rustls::TlsAcceptor>) -> (Self, u16) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            let mut down = stopped.clone();
            loop {
                tokio::select! {
                    a = listener.accept() => {
                        let Ok((tcp, _)) = a else { continue };
                        let got = got.clone();
                        let stopped = stopped.clone();
                        let tls = tls.clone();
                        conns.push(tokio::spawn(async move {
                            match tls {
                                None => serve(tcp, got, stopped).await,
                                Some(acceptor) => {
                                    if let Ok(s) = acceptor.accept(tcp).await {
                                        serve(s, got, stopped).await;
                                    }
                                }
                            }
                        }));
                    }
                    _ = down.wait_for(|s| *s) => break,
                }
            }
            for c in conns {
                let _ = c.await;
            }
        });
        (Self { stop, task }, port)
    }

    /// Down: no new connections, and each open one reads what already arrived, then closes.
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }
}

async fn serve<S: AsyncRead + Unpin>(mut s: S, got: Seqs, mut stopped: watch::Receiver<bool>) {
    use futures::FutureExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        tokio::select! {
            n = s.read(&mut chunk) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    frames(&mut buf, &got);
                }
            },
            _ = stopped.wait_for(|s| *s) => {
                // What already arrived is taken in; then the connection closes.
                while let Some(Ok(n)) = s.read(&mut chunk).now_or_never() {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                frames(&mut buf, &got);
                return;
            }
        }
    }
}

/// Take every complete `LEN SP MSG` frame off the front of `buf`.
fn frames(buf: &mut Vec<u8>, got: &Seqs) {
    loop {
        let Some(sp) = buf.iter().position(|b| *b == b' ') else {
            return;
        };
        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
        if buf.len() < sp + 1 + len {
            return;
        }
        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
        buf.drain(..sp + 1 + len);
        assert!(msg.starts_with("<109>1 "), "{msg}");
        let seq = msg
            .split("seq=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .parse()
            .unwrap();
        // The message is the record as JSON, carrying the chain.
        let json: serde_json::Value =
            serde_json::from_str(msg.split_once('\u{feff}').unwrap().1).unwrap();
        assert_eq!(json["seq"], seq);
        got.lock().unwrap().push(seq);
    }
}

async fn append(store: &latchkey::store::Store, n: usize, tag: &str) {
    for i in 0..n {
        let mut tx = store.begin_write().await.unwrap();
        latchkey::audit::append(
            &mut tx,
            1_790_000_000_000_000,
            "auditor-test",
            "test.record",
            &format!("{tag}-{i}"),
            &serde_json::json!({"i": i}),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
}

async fn head(store: &latchkey::store::Store) -> i64 {
    latchkey::store::audit::head(store.pool()).await.unwrap().0
}

/// The daemon (`App::run`), as `latchkey run` runs it, with `extra` added to the configuration.
struct Daemon {
    app: Arc<App>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<latchkey::app::Result<()>>,
}

impl Daemon {
    async fn start(h: &Harness, extra: &str) -> Self {
        Self::start_with(h, extra, &[]).await
    }

    /// With extra environment (the secrets the configuration refers to).
    async fn start_with(h: &Harness, extra: &str, vars: &[(&str, &str)]) -> Self {
        let app = Arc::new(h.open_with(extra, vars).await);
        let (stop, rx) = watch::channel(false);
        let runner = app.clone();
        let task = tokio::spawn(async move { runner.run(rx).await });
        Self { app, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap();
    }

    fn metric(&self, series: &str) -> Option<String> {
        self.app
            .engine
            .metrics
            .encode_prometheus()
            .lines()
            .find(|l| l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    }
}

/// Wait (no figure asserted: only that it happens) until `f` holds.
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..1200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn received(got: &Seqs) -> Vec<i64> {
    got.lock().unwrap().clone()
}

/// Every record 1..=head arrived; each arrival is the next record or a resend of earlier ones
/// (never a gap), and resends start at most `resends` times.
fn assert_complete_in_order(got: &[i64], head: i64, resends: usize, what: &str) {
    assert_eq!(got.first(), Some(&1), "{what}: {got:?}");
    let mut high = 0;
    let mut back = 0;
    for w in got.windows(2) {
        assert!(
            w[1] <= w[0] + 1,
            "{what}: gap after {} ({} next): {got:?}",
            w[0],
            w[1]
        );
        if w[1] <= w[0] {
            back += 1;
        }
    }
    for s in got {
        high = high.max(*s);
    }
    assert_eq!(high, head, "{what}: {got:?}");
    let distinct: std::collections::BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(distinct, (1..=head).collect(), "{what}");
    assert!(back <= resends, "{what}: {back} resends: {got:?}");
}

fn syslog_sink(port: u16, tls: &str) -> String {
    format!(
        "[audit.forward.siem]\nkind = \"syslog\"\naddress = \"127.0.0.1:{port}\"\nbatch = 5\nmax_backoff_seconds = 1\n{tls}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn syslog_forwarding_survives_a_receiver_outage_and_a_daemon_restart() {
    let tmp = tempfile::tempdir().unwrap();
    for (backend, url) in backends(tmp.path()).await {
        let h = Harness::new(
            &backend,
            &url,
            &tmp.path().join(&backend),
            NukiOptions::default(),
        )
        .await;
        let store = h.app.store().clone();
        append(&store, 20, "before").await;
        let got: Seqs = Arc::default();
        let (rx, port) = Receiver::start(0, got.clone(), None).await;
        let sink = syslog_sink(port, "");
        let d = Daemon::start(&h, &sink).await;
        let first = head(&store).await;
        until("the first records arrive", async || {
            received(&got).contains(&first)
        })
        .await;

        // The receiver goes down; the log grows meanwhile. Nothing is lost while it is down.
        rx.stop().await;
        append(&store, 150, "outage").await;
        until("a failed send is counted", async || {
            d.metric("latchkey_audit_forward_failures_total{sink=\"siem\"}")
                .is_some_and(|v| v != "0")
        })
        .await;
        // The lag gauge is refreshed on the forwarder's own cycle, not with the failure count.
        until("the lag is shown while the receiver is down", async || {
            d.metric("latchkey_audit_forward_lag_records{sink=\"siem\"}")
                .is_some_and(|v| v != "0")
        })
        .await;

        // It comes back on the same port; the daemon is stopped mid-stream and started again.
        let (rx, _) = Receiver::start(port, got.clone(), None).await;
        until("forwarding resumed", async || {
            received(&got).len() > first as usize + 20
        })
        .await;
        d.stop().await;
        append(&store, 30, "restart").await;
        let d = Daemon::start(&h, &sink).await;
        let last = head(&store).await;
        until("every record arrived", async || {
            received(&got).contains(&last)
        })
        .await;
        until("the lag is back to zero", async || {
            d.metric("latchkey_audit_forward_lag_records{sink=\"siem\"}")
                .is_some_and(|v| v == "0")
        })
        .await;
        d.stop().await;
        rx.stop().await;
        // Stopping the daemon audits its lease releases: more records than `last`, sent or not.
        let got = received(&got);
        let last_sent = *got.iter().max().unwrap();
        assert!(last_sent >= last);
        assert_complete_in_order(&got, last_sent, 3, &backend);
        let cursor = latchkey::store::audit::forward_cursor(store.pool(), "siem")
            .await
            .unwrap();
        assert_eq!(
            cursor, last_sent,
            "{backend}: the cursor is the last accepted record"
        );
    }
}

/// A CA and a server certificate for `localhost` it signed (openssl, as an operator would).
fn certificates(
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |f: &str| {
        dir.join(format!("{name}-{f}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca, ca_key, key, csr, cert, ext) = (
        p("ca.pem"),
        p("ca.key"),
        p("srv.key"),
        p("srv.csr"),
        p("srv.pem"),
        p("ext.cnf"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            "/CN=latchkey test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"],
    ]
    .concat());
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    (ca.into(), cert.into(), key.into())
}

fn acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn syslog_over_tls_trusts_only_the_configured_ca_and_survives_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(tmp.path(), "good");
    let (other_ca, _, _) = certificates(tmp.path(), "other");
    let (backend, url) = backends(tmp.path()).await.pop().unwrap();
    let h = Harness::new(
        &backend,
        &url,
        &tmp.path().join(&backend),
        NukiOptions::default(),
    )
    .await;
    let store = h.app.store().clone();
    append(&store, 12, "tls").await;
    let got: Seqs = Arc::default();
    let (rx, port) = Receiver::start(0, got.clone(), Some(acceptor(&cert, &key))).await;

    // A receiver whose certificate the configured CA did not sign gets nothing.
    let untrusted = syslog_sink(
        port,
        &format!(
            "tls = true\nserver_name = \"localhost\"\nca_file = \"{}\"\n",
            other_ca.display()
        ),
    );
    let d = Daemon::start(&h, &untrusted).await;
    until("the untrusted receiver is refused", async || {
        d.metric("latchkey_audit_forward_failures_total{sink=\"siem\"}")
            .is_some_and(|v| v != "0")
    })
    .await;
    d.stop().await;
    assert!(received(&got).is_empty(), "{backend}");
    assert_eq!(
        latchkey::store::audit::forward_cursor(store.pool(), "siem")
            .await
            .unwrap(),
        0
    );

    let sink = syslog_sink(
        port,
        &format!(
            "tls = true\nserver_name = \"localhost\"\nca_file = \"{}\"\n",
            ca.display()
        ),
    );
    let d = Daemon::start(&h, &sink).await;
    let first = head(&store).await;
    until("records arrive over TLS", async || {
        received(&got).contains(&first)
    })
    .await;
    rx.stop().await;
    append(&store, 40, "tls-outage").await;
    let (rx, _) = Receiver::start(port, got.clone(), Some(acceptor(&cert, &key))).await;
    let last = head(&store).await;
    until("every record arrived over TLS", async || {
        received(&got).contains(&last)
    })
    .await;
    d.stop().await;
    rx.stop().await;
    let got = received(&got);
    assert_complete_in_order(&got, *got.iter().max().unwrap(), 2, &backend);
}

/// An HTTP collector: 503 while `down`, else it takes the JSON lines (and wants its token).
#[derive(Clone, Default)]
struct Collector {
    got: Seqs,
    down: Arc<AtomicBool>,
    refused: Arc<Mutex<usize>>,
}

async fn collect(
    axum::extract::State(c): axum::extract::State<Collector>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer siem-token") {
        return StatusCode::UNAUTHORIZED;
    }
    if c.down.load(Ordering::SeqCst) {
        *c.refused.lock().unwrap() += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let mut got = c.got.lock().unwrap();
    for line in body.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["hash"].as_str().map(str::len), Some(64));
        got.push(v["seq"].as_i64().unwrap());
    }
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_forwarding_retries_a_refusing_collector_and_sends_each_record_once() {
    let tmp = tempfile::tempdir().unwrap();
    for (backend, url) in backends(tmp.path()).await {
        let h = Harness::new(
            &backend,
            &url,
            &tmp.path().join(&backend),
            NukiOptions::default(),
        )
        .await;
        let store = h.app.store().clone();
        append(&store, 25, "http").await;
        let c = Collector::default();
        c.down.store(true, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/ingest", axum::routing::post(collect))
            .with_state(c.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        // The token reaches the daemon through its environment, never the file.
        let sink = format!(
            "[audit.forward.collector]\nkind = \"http\"\nurl = \"http://{addr}/ingest\"\nbatch = 10\nmax_backoff_seconds = 1\nheaders = {{ authorization = {{ env = \"SIEM_AUTH\" }} }}\n"
        );
        let d = Daemon::start_with(&h, &sink, &[("SIEM_AUTH", "Bearer siem-token")]).await;
        until("the collector refused a batch", async || {
            *c.refused.lock().unwrap() >= 2
        })
        .await;
        assert!(received(&c.got).is_empty());
        c.down.store(false, Ordering::SeqCst);
        append(&store, 15, "http-after").await;
        let last = head(&store).await;
        until("every record arrived", async || {
            received(&c.got).contains(&last)
        })
        .await;
        d.stop().await;
        server.abort();
        let got = received(&c.got);
        let max = *got.iter().max().unwrap();
        assert_eq!(
            got,
            (1..=max).collect::<Vec<_>>(),
            "{backend}: each record once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_for_emergencies_only_is_the_break_glass_webhook() {
    let tmp = tempfile::tempdir().unwrap();
    for (backend, url) in backends(tmp.path()).await {
        let mut h = Harness::new(
            &backend,
            &url,
            &tmp.path().join(&backend),
            NukiOptions::default(),
        )
        .await;
        h.feed(&[employee("E1", "sales", "berlin")]).await;
        let store = h.app.store().clone();
        append(&store, 7, "noise").await;
        let c = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(collect))
            .with_state(c.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let sink = format!(
            "[audit.forward.pager]\nkind = \"http\"\nurl = \"http://{addr}/hook\"\nbatch = 4\n\
             actions = [\"emergency.*\"]\nheaders = {{ authorization = {{ env = \"PAGER_AUTH\" }} }}\n"
        );
        let d = Daemon::start_with(&h, &sink, &[("PAGER_AUTH", "Bearer siem-token")]).await;
        let ask = latchkey::access_requests::Ask {
            person: "E1".into(),
            connector: "nuki".into(),
            target: "berlin-plant-room".into(),
            starts_at: None,
            ends_at: h.clock.now_utc(),
            reason: "water in the plant room".into(),
        };
        latchkey::access_requests::open_emergency(&d.app.engine, &ask, None, "os:alice")
            .await
            .unwrap();
        append(&store, 3, "more-noise").await;
        let last = head(&store).await;
        let pool = store.pool().clone();
        until("the pager sink passed every record", async || {
            latchkey::store::audit::forward_cursor(&pool, "pager")
                .await
                .unwrap()
                >= last
        })
        .await;
        d.stop().await;
        server.abort();
        let all = latchkey::store::audit::page(&pool, 0, last, 10_000)
            .await
            .unwrap();
        let emergencies: Vec<i64> = all
            .iter()
            .filter(|r| r.action.starts_with("emergency."))
            .map(|r| r.seq)
            .collect();
        assert!(!emergencies.is_empty(), "{backend}");
        assert_eq!(
            received(&c.got),
            emergencies,
            "{backend}: the emergency records and nothing else"
        );
    }
}
