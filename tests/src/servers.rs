//! Servers the lab runs on the correspondent host: an HTTP server (generated files of known
//! sha256, plus `GET /whoami` that answers the client's address as the CH saw it), iperf3
//! servers and a UDP echo server. All listen only on the CH's own addresses inside the lab.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{LabError, Result};
use crate::exec::python;
use crate::lab::{Host, Lab};
use crate::process::ProcHandle;
use crate::topology::{Family, HTTP_PORT, IPERF3_PORT, UDP_ECHO_PORT, authority};
use crate::wait_for;

/// Size of `big.bin`.
pub const BIG_FILE_SIZE: usize = 32 * 1024 * 1024;
/// Size of `mid.bin` (the server ignores Range requests: ask for a smaller file instead).
pub const MID_FILE_SIZE: usize = 2 * 1024 * 1024;
/// Seed of the generator that fills `big.bin`, fixed so its sha256 is the same in every lab.
const BIG_FILE_SEED: u64 = 0x7570_6d74_6c61_6221;
/// How long a server is given to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP server: `http.server` with a `/whoami` route, one process for both families.
const HTTP_SERVER_PY: &str = r#"
import functools, http.server, socket, socketserver, sys, threading

class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.split("?")[0] == "/whoami":
            body = (self.client_address[0] + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.client_address[0], fmt % args))

class V4(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        # HTTPServer.server_bind resolves its own name (getfqdn): a DNS query that cannot be
        # answered inside the lab and stalls startup for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

class V6(V4):
    address_family = socket.AF_INET6

directory, port, addrs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
handler = functools.partial(Handler, directory=directory)
servers = [(V6 if ":" in a else V4)((a, port), handler) for a in addrs]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("listening on", addrs, port, flush=True)
servers[0].serve_forever()
"#;

/// The UDP echo server: every datagram goes back to its sender, unchanged.
const UDP_ECHO_PY: &str = r#"
import select, socket, sys
port, socks = int(sys.argv[1]), []
for a in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, port))
    socks.append(s)
print("echoing on", sys.argv[2:], port, flush=True)
while True:
    ready, _, _ = select.select(socks, [], [])
    for s in ready:
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)
"#;

/// A file the CH serves over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedFile {
    /// Its name, also its URL path.
    pub name: String,
    /// Where it lives on disk.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, lowercase hex.
    pub sha256: String,
}

/// The CH's HTTP server, as started by [`Lab::start_http_server`].
#[derive(Debug, Clone)]
pub struct HttpServer {
    /// The port, on both of the CH's addresses.
    pub port: u16,
    /// The files served: `big.bin` ([`BIG_FILE_SIZE`] pseudo-random bytes), `mid.bin`
    /// ([`MID_FILE_SIZE`], the same generator) and `small.txt` (4 KiB of text).
    pub files: Vec<ServedFile>,
    /// The server process's pid.
    pub pid: u32,
}

impl HttpServer {
    /// `http://CH:port/name` in `family`.
    pub fn url(&self, family: Family, name: &str) -> String {
        format!("http://{}/{name}", authority(family.ch(), self.port))
    }

    /// The served file called `name`.
    pub fn file(&self, name: &str) -> Option<&ServedFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// The sha256 (hex) of the served file called `name`.
    pub fn sha256(&self, name: &str) -> Option<&str> {
        self.file(name).map(|f| f.sha256.as_str())
    }
}

/// The CH's iperf3 servers, as started by [`Lab::start_iperf3_server`].
#[derive(Debug, Clone)]
pub struct Iperf3Server {
    /// Where the IPv4 server listens.
    pub v4: SocketAddr,
    /// Where the IPv6 server listens.
    pub v6: SocketAddr,
}

impl Iperf3Server {
    /// The server of `family`.
    pub fn addr(&self, family: Family) -> SocketAddr {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }
}

/// Servers started so far; their processes live as long as the lab.
#[derive(Debug, Default)]
pub(crate) struct Servers {
    http: Option<HttpServer>,
    iperf3: Option<Iperf3Server>,
    udp_echo: Option<SocketAddr>,
    procs: Vec<ProcHandle>,
}

impl Lab {
    fn servers(&self) -> std::sync::MutexGuard<'_, Servers> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts (once) the CH's HTTP server on port [`HTTP_PORT`] of both of its addresses,
    /// serving `big.bin`, `mid.bin` and `small.txt` and answering `GET /whoami` with the client's address.
    pub fn start_http_server(&self) -> Result<HttpServer> {
        let mut servers = self.servers();
        if let Some(http) = &servers.http {
            return Ok(http.clone());
        }
        let www = self.dir().join("www");
        fs::create_dir_all(&www).map_err(|source| LabError::Io {
            path: www.clone(),
            source,
        })?;
        let files = vec![
            write_file(&www, "big.bin", BIG_FILE_SIZE, FileKind::Random)?,
            write_file(&www, "mid.bin", MID_FILE_SIZE, FileKind::Random)?,
            write_file(&www, "small.txt", 4096, FileKind::Text)?,
        ];
        let script = write_script(self.dir(), "http_server.py", HTTP_SERVER_PY)?;
        let ch = self.ch();
        let port = HTTP_PORT.to_string();
        let v4 = Family::V4.ch().to_string();
        let v6 = Family::V6.ch().to_string();
        let py = python();
        let proc = ch
            .command(&[
                py.as_str(),
                "-u",
                path_str(&script)?,
                path_str(&www)?,
                &port,
                &v4,
                &v6,
            ])
            .label("http-server")
            .spawn()?;
        for family in Family::BOTH {
            wait_listening(&ch, "tcp", SocketAddr::new(family.ch(), HTTP_PORT), &proc)?;
        }
        let http = HttpServer {
            port: HTTP_PORT,
            files,
            pid: proc.pid(),
        };
        servers.procs.push(proc);
        servers.http = Some(http.clone());
        Ok(http)
    }

    /// The HTTP server, if started.
    pub fn http(&self) -> Option<HttpServer> {
        self.servers().http.clone()
    }

    /// Starts (once) `iperf3 -s` on the CH, one process per family, port [`IPERF3_PORT`]; they
    /// stay up for any number of tests.
    pub fn start_iperf3_server(&self) -> Result<Iperf3Server> {
        let mut servers = self.servers();
        if let Some(iperf) = &servers.iperf3 {
            return Ok(iperf.clone());
        }
        let ch = self.ch();
        let port = IPERF3_PORT.to_string();
        let mut procs = Vec::new();
        for family in Family::BOTH {
            let addr = family.ch().to_string();
            let label = format!("iperf3-server-{}", family.flag().trim_start_matches('-'));
            let proc = ch
                .command(&["iperf3", "-s", "-B", &addr, "-p", &port, "--forceflush"])
                .label(&label)
                .spawn()?;
            wait_listening(&ch, "tcp", SocketAddr::new(family.ch(), IPERF3_PORT), &proc)?;
            procs.push(proc);
        }
        let iperf = Iperf3Server {
            v4: SocketAddr::new(Family::V4.ch(), IPERF3_PORT),
            v6: SocketAddr::new(Family::V6.ch(), IPERF3_PORT),
        };
        servers.procs.extend(procs);
        servers.iperf3 = Some(iperf.clone());
        Ok(iperf)
    }

    /// Starts (once) a UDP echo server on the CH, port [`UDP_ECHO_PORT`] of both addresses.
    /// Returns the IPv4 address; the IPv6 one is `[CH_V6]:UDP_ECHO_PORT`.
    pub fn start_udp_echo(&self) -> Result<SocketAddr> {
        let mut servers = self.servers();
        if let Some(addr) = servers.udp_echo {
            return Ok(addr);
        }
        let script = write_script(self.dir(), "udp_echo.py", UDP_ECHO_PY)?;
        let ch = self.ch();
        let port = UDP_ECHO_PORT.to_string();
        let v4 = Family::V4.ch().to_string();
        let v6 = Family::V6.ch().to_string();
        let py = python();
        let proc = ch
            .command(&[py.as_str(), "-u", path_str(&script)?, &port, &v4, &v6])
            .label("udp-echo")
            .spawn()?;
        for family in Family::BOTH {
            wait_listening(
                &ch,
                "udp",
                SocketAddr::new(family.ch(), UDP_ECHO_PORT),
                &proc,
            )?;
        }
        let addr = SocketAddr::new(Family::V4.ch(), UDP_ECHO_PORT);
        servers.procs.push(proc);
        servers.udp_echo = Some(addr);
        Ok(addr)
    }

    /// The address the CH sees for a request from the MH, sent through `interface` (bound with
    /// `curl --interface`) or, when `None`, wherever the MH's routes send it. Starts the HTTP
    /// server if needed.
    pub fn whoami_via(&self, interface: Option<&str>, family: Family) -> Result<IpAddr> {
        self.mh().whoami(interface, family)
    }
}

impl Host<'_> {
    /// The address the CH sees for a request from this host (see [`Lab::whoami_via`]).
    pub fn whoami(&self, interface: Option<&str>, family: Family) -> Result<IpAddr> {
        let http = self.lab().start_http_server()?;
        let url = http.url(family, "whoami");
        let mut args = vec![
            "curl",
            "-sS",
            "--fail",
            "--connect-timeout",
            "3",
            "--max-time",
            "10",
            family.flag(),
        ];
        if let Some(ifname) = interface {
            args.extend(["--interface", ifname]);
        }
        args.push(&url);
        let body = self.run_stdout(&args)?;
        body.trim().parse().map_err(|_| LabError::Parse {
            cmd: args.join(" "),
            detail: format!("expected an IP address, got {body:?}"),
        })
    }
}

/// Waits until `proc` (running in `host`) listens on `addr`, failing early with its log if it
/// exits first.
fn wait_listening(host: &Host<'_>, proto: &str, addr: SocketAddr, proc: &ProcHandle) -> Result<()> {
    let flag = if proto == "udp" { "-Hlun" } else { "-Hltn" };
    let needle = addr.to_string();
    let mut exited = None;
    let ready = wait_for(
        &format!("{proto} {needle} listening"),
        LISTEN_TIMEOUT,
        || {
            if let Some(status) = proc.try_status() {
                exited = Some(status);
                return true;
            }
            host.run_stdout(&["ss", flag])
                .map(|out| out.split_whitespace().any(|w| w == needle))
                .unwrap_or(false)
        },
    );
    if let Some(status) = exited {
        return Err(LabError::Command {
            cmd: format!("{} (server for {needle})", proc.label()),
            status: status.to_string(),
            stderr: proc.log().trim().to_owned(),
        });
    }
    ready
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| LabError::Invalid(format!("non-UTF-8 path {}", path.display())))
}

fn write_script(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, text).map_err(|source| LabError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

enum FileKind {
    /// Pseudo-random bytes from a fixed seed: incompressible, same content in every lab.
    Random,
    /// Readable lines.
    Text,
}

/// Writes `size` bytes to `dir/name` while hashing them.
fn write_file(dir: &Path, name: &str, size: usize, kind: FileKind) -> Result<ServedFile> {
    let path = dir.join(name);
    let io_err = |source| LabError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::io::BufWriter::new(fs::File::create(&path).map_err(io_err)?);
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut rng = SplitMix64(BIG_FILE_SEED);
    let mut line_no = 0u64;
    let mut written = 0usize;
    while written < size {
        let len = chunk.len().min(size - written);
        let buf = &mut chunk[..len];
        match kind {
            FileKind::Random => {
                for word in buf.chunks_mut(8) {
                    let bytes = rng.next().to_le_bytes();
                    word.copy_from_slice(&bytes[..word.len()]);
                }
            }
            FileKind::Text => {
                let mut text = Vec::with_capacity(len);
                while text.len() < len {
                    text.extend_from_slice(
                        format!("upmt lab small file, line {line_no}\n").as_bytes(),
                    );
                    line_no += 1;
                }
                buf.copy_from_slice(&text[..len]);
            }
        }
        hasher.update(&*buf);
        file.write_all(buf).map_err(io_err)?;
        written += len;
    }
    file.flush().map_err(io_err)?;
    Ok(ServedFile {
        name: name.to_owned(),
        path: path.clone(),
        size: size as u64,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// SplitMix64: tiny, fast, good enough to make incompressible test data.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::sha256_file;

    #[test]
    fn generated_files_hash_to_what_is_reported() {
        let dir = std::env::temp_dir().join(format!("upmt-servers-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let random =
            write_file(&dir, "r.bin", 3 * 1024 * 1024 + 5, FileKind::Random).expect("write");
        let text = write_file(&dir, "t.txt", 1000, FileKind::Text).expect("write");
        assert_eq!(sha256_file(&random.path).expect("hash"), random.sha256);
        assert_eq!(sha256_file(&text.path).expect("hash"), text.sha256);
        assert_eq!(
            fs::metadata(&random.path).expect("stat").len(),
            3 * 1024 * 1024 + 5
        );
        let again =
            write_file(&dir, "r2.bin", 3 * 1024 * 1024 + 5, FileKind::Random).expect("write");
        assert_eq!(again.sha256, random.sha256, "same seed, same content");
        let _ = fs::remove_dir_all(&dir);
    }
}
