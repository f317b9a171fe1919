//! Syslog (RFC 5424) over TCP with octet-counting framing (RFC 6587 section 3.4.1), optionally in
//! TLS (the framing of RFC 5425).
//!
//! Syslog over TCP has no acknowledgement. A batch counts as accepted when the receiver's TCP stack
//! has acknowledged every byte (the socket's send queue is empty) and the connection is still open
//! a moment later; a receiver that went away shows as end-of-file or a reset, and the batch is sent
//! again on a new connection. Before each batch the connection is checked the same way, as rsyslog
//! does, so a receiver that restarted is reconnected to instead of written into the void.

use super::ForwardError;
use crate::audit::export::Line;
use crate::config::ForwardSink;
use crate::store::audit::AuditRow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

/// Facility 13 (log audit), severity 5 (notice).
const PRI: u8 = 13 * 8 + 5;
/// The structured-data id: `latchkey` under 32473, the enterprise number RFC 5612 reserves for
/// documentation; a site with its own number can map it in the SIEM.
const SD_ID: &str = "latchkey@32473";
/// How long a sent batch must leave the connection open before it counts as accepted.
const SETTLE: Duration = Duration::from_millis(10);

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
}

pub(super) struct Syslog {
    address: String,
    hostname: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    timeout: Duration,
    conn: Option<Conn>,
}

impl Syslog {
    pub(super) fn new(
        s: &ForwardSink,
        hostname: String,
        ca_file: Option<PathBuf>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let address = s.address.clone().unwrap_or_default();
        let tls = if s.tls {
            let host = s.server_name.clone().unwrap_or_else(|| {
                address.rsplit_once(':').map_or(address.clone(), |(h, _)| {
                    h.trim_matches(['[', ']']).to_string()
                })
            });
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("server name `{host}`: {e}"))?;
            Some((tls_connector(ca_file)?, name))
        } else {
            None
        };
        Ok(Self {
            address,
            hostname: printable(&hostname, 255),
            tls,
            timeout,
            conn: None,
        })
    }

    pub(super) fn reset(&mut self) {
        self.conn = None;
    }

    async fn connect(&self) -> Result<Conn, ForwardError> {
        let err = |e: std::io::Error| ForwardError::Send(format!("syslog {}: {e}", self.address));
        let tcp = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&self.address))
            .await
            .map_err(|_| ForwardError::Send(format!("syslog {}: connect timed out", self.address)))?
            .map_err(err)?;
        tcp.set_nodelay(true).map_err(err)?;
        #[cfg(target_os = "linux")]
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| {
                        ForwardError::Send(format!(
                            "syslog {}: TLS handshake timed out",
                            self.address
                        ))
                    })?
                    .map_err(err)?,
            ),
        };
        Ok(Conn {
            io,
            #[cfg(target_os = "linux")]
            fd,
        })
    }

    pub(super) async fn send(&mut self, rows: &[AuditRow]) -> Result<(), ForwardError> {
        if let Some(c) = &mut self.conn
            && !alive(c)
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let mut out = Vec::new();
        for r in rows {
            out.extend(frame(r, &self.hostname));
        }
        let address = self.address.clone();
        let timeout = self.timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Err(ForwardError::Send(format!(
                "syslog {address}: not connected"
            )));
        };
        let err = |e: std::io::Error| ForwardError::Send(format!("syslog {address}: {e}"));
        tokio::time::timeout(timeout, async {
            conn.io.write_all(&out).await?;
            conn.io.flush().await
        })
        .await
        .map_err(|_| ForwardError::Send(format!("syslog {address}: send timed out")))?
        .map_err(err)?;
        tokio::time::timeout(timeout, acknowledged(conn))
            .await
            .map_err(|_| {
                ForwardError::Send(format!("syslog {address}: receiver did not acknowledge"))
            })?;
        tokio::time::sleep(SETTLE).await;
        if !alive(conn) {
            return Err(ForwardError::Send(format!(
                "syslog {address}: receiver closed the connection"
            )));
        }
        Ok(())
    }
}

/// Wait until the receiver's TCP stack has acknowledged every byte sent (Linux: `SIOCOUTQ`).
async fn acknowledged(conn: &Conn) {
    #[cfg(target_os = "linux")]
    let fd = conn.fd;
    #[cfg(target_os = "linux")]
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (= SIOCOUTQ on sockets) writes one c_int; `fd` is the open socket
        // owned by `conn.io`, which outlives this call.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
        if rc != 0 || queued == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = conn;
}

/// Whether the connection is still open: a receiver that closed it shows as end-of-file (or a
/// reset) on a read that does not wait.
fn alive(conn: &mut Conn) -> bool {
    use futures::FutureExt;
    let mut buf = [0u8; 512];
    match conn.io.read(&mut buf).now_or_never() {
        None => true,
        Some(Ok(0)) | Some(Err(_)) => false,
        // A receiver has nothing to say in this protocol; whatever it sent is ignored.
        Some(Ok(_)) => true,
    }
}

fn tls_connector(ca_file: Option<PathBuf>) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("ca_file {}: no certificate in it", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set `ca_file`".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// PRINTUSASCII (33..=126), at most `max` characters; `-` (the nil value) when empty.
fn printable(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if out.is_empty() { "-".into() } else { out }
}

/// One record as an octet-counted RFC 5424 message: the action as MSGID, seq and hashes as
/// structured data, and the record as JSON (the export's line) as the message.
pub(super) fn frame(r: &AuditRow, hostname: &str) -> Vec<u8> {
    let time = crate::clock::from_micros(r.at).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let json = serde_json::to_string(&Line::from(r.clone())).unwrap_or_default();
    let msg = format!(
        "<{PRI}>1 {time} {hostname} latchkey - {msgid} [{SD_ID} seq=\"{seq}\" prev_hash=\"{prev}\" hash=\"{hash}\"] \u{feff}{json}",
        msgid = printable(&r.action, 32),
        seq = r.seq,
        prev = r.prev_hash,
        hash = r.hash,
    );
    format!("{} {msg}", msg.len()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_counts_its_octets_and_carries_the_chain() {
        let r = AuditRow {
            seq: 7,
            at: 1_790_000_000_000_000,
            actor: "alice".into(),
            action: "held.approved".into(),
            subject: "E1".into(),
            details: r#"{"note":"ü"}"#.into(),
            prev_hash: "a".repeat(64),
            hash: "b".repeat(64),
        };
        let f = String::from_utf8(frame(&r, "host-1")).unwrap();
        let (len, msg) = f.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<109>1 2026-"), "{msg}");
        assert!(
            msg.contains(" host-1 latchkey - held.approved [latchkey@32473 seq=\"7\""),
            "{msg}"
        );
        let json = msg.split_once('\u{feff}').unwrap().1;
        let line: Line = serde_json::from_str(json).unwrap();
        assert_eq!((line.seq, line.hash.as_str()), (7, r.hash.as_str()));
    }
}
