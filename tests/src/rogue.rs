//! A hostile HTTPS server for the install-line tests: it answers at an address the line
//! trusts with a certificate from any CA the test chooses, and serves files of its own.
//! Real TLS (rustls), real sockets; it records each request's path so a test can tell
//! whether the line got as far as asking for something.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A CA of the test's own: its PEM and the issuer that signs server certificates.
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh CA nobody else trusts.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A CA from its certificate and key PEM (e.g. a controller's own `pki/ca.*`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> TestCa {
        let key = KeyPair::from_pem(key_pem).expect("CA key");
        TestCa {
            pem: cert_pem.to_string(),
            issuer: Issuer::from_ca_cert_pem(cert_pem, key).expect("CA certificate"),
        }
    }

    /// A server certificate for `ip`, with its key: (cert PEM, key PEM).
    pub fn server_cert(&self, ip: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::IpAddress(ip.parse().expect("ip"))];
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

/// An HTTPS server on 127.0.0.1:`port` serving `files` (path → body), 404 otherwise.
pub struct RogueServer {
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl RogueServer {
    pub fn start(
        port: u16,
        cert_pem: &str,
        key_pem: &str,
        files: HashMap<String, Vec<u8>>,
    ) -> RogueServer {
        let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("cert");
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .expect("key")
            .expect("a key");
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config"),
        );
        // The controller that had this port may still be releasing it.
        let listener = crate::wait_for("the rogue server's port", Duration::from_secs(20), || {
            TcpListener::bind(("127.0.0.1", port)).ok()
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let (config, files, r) = (config.clone(), files.clone(), r.clone());
                        std::thread::spawn(move || serve_one(sock, config, &files, &r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        RogueServer {
            stop,
            requests,
            thread: Some(thread),
        }
    }

    /// The paths asked for over a completed TLS handshake, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn serve_one(
    sock: TcpStream,
    config: Arc<rustls::ServerConfig>,
    files: &HashMap<String, Vec<u8>>,
    requests: &Mutex<Vec<String>>,
) {
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string();
    if let Ok(mut r) = requests.lock() {
        r.push(path.clone());
    }
    let (status, body) = match files.get(&path) {
        Some(b) => ("200 OK", b.clone()),
        None => ("404 Not Found", b"not here\n".to_vec()),
    };
    let _ = write!(
        tls,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tls.write_all(&body);
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

impl Drop for RogueServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
