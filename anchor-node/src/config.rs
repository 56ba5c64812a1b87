//! The anchor node's TOML configuration: parsing and semantic validation.
//!
//! Every error names the file, the line and column of the offending value, and what was expected,
//! so an operator can fix the file without reading code. This module does no networking and
//! touches no file other than the config and the private key file it names.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use toml::Spanned;
use upmt_proto::keys::{PublicKey, StaticSecret};
use upmt_sys::cipher::CipherSetting;
use upmt_sys::config::{ConfigText, line_col, shown};
use upmt_sys::tunbatch::OffloadSetting;

pub use upmt_sys::config::ConfigError;

/// Where the config lives when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/upmt/an.toml";

/// Where the daemon's control socket is when the config names none (`upmt-an show` looks there).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/upmt/an.sock";

/// The account the daemon drops to after setup when the config names none.
pub const DEFAULT_USER: &str = "nobody";

/// One mobile host allowed to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub public_key: PublicKey,
    pub address: Ipv4Addr,
    pub address6: Option<Ipv6Addr>,
}

/// A validated anchor-node configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub private_key: StaticSecret,
    pub tun: String,
    pub subnet: Ipv4Net,
    pub subnet6: Option<Ipv6Net>,
    pub egress: String,
    pub mtu: u16,
    pub metrics: Option<SocketAddr>,
    /// Resolver that DNS arriving through the tunnel (udp/tcp port 53) is redirected to.
    pub dns: Option<IpAddr>,
    /// A path silent this long is skipped for downlink (the core's `path_stale_after`).
    pub path_stale_after: std::time::Duration,
    /// A session silent this long is forgotten (the core's `session_timeout`); `None`: the
    /// core's default.
    pub session_timeout: Option<std::time::Duration>,
    /// Mobile hosts may reach each other through the anchor.
    pub allow_peer_to_peer: bool,
    /// Ports (tcp and udp) of the anchor's own host that mobile hosts may reach.
    pub allow_to_host: Vec<u16>,
    /// Mobile hosts may reach private, link-local and metadata ranges on the anchor's side.
    pub allow_private_egress: bool,
    /// The account the daemon runs as after setup ("root" keeps root).
    pub user: String,
    /// The control socket `upmt-an show` and `reload` talk to (relative to the config's
    /// directory when relative).
    pub control_socket: PathBuf,
    /// A group whose members may use the control socket besides root.
    pub control_group: Option<String>,
    /// `private_key_file` as written, when the key is in a file (a reload compares it).
    pub private_key_file: Option<String>,
    /// Whether AES-256-GCM is picked for mobile hosts that offer it (`cipher`, default auto).
    pub cipher: CipherSetting,
    /// Whether the TUN uses the kernel's segmentation and coalescing offloads (`offload`,
    /// default on where the kernel has them).
    pub offload: OffloadSetting,
    /// The private key is written in the config itself (not in `private_key_file`, whose
    /// mode is checked when it is read).
    pub key_in_config: bool,
    pub peers: Vec<Peer>,
}

impl Config {
    /// The anchor's own virtual address: the first host of the subnet.
    pub fn anchor_address(&self) -> Ipv4Addr {
        first_host4(self.subnet)
    }

    /// The anchor's own virtual IPv6 address, when an IPv6 subnet is configured.
    pub fn anchor_address6(&self) -> Option<Ipv6Addr> {
        self.subnet6.map(first_host6)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Spanned<String>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    tun: Spanned<String>,
    subnet: Spanned<String>,
    subnet6: Option<Spanned<String>>,
    egress: Spanned<String>,
    mtu: Option<Spanned<u16>>,
    metrics: Option<Spanned<String>>,
    dns: Option<Spanned<String>>,
    path_stale_after_ms: Option<Spanned<u64>>,
    session_timeout_s: Option<Spanned<u64>>,
    #[serde(default)]
    allow_peer_to_peer: bool,
    #[serde(default)]
    allow_to_host: Vec<Spanned<u16>>,
    #[serde(default)]
    allow_private_egress: bool,
    user: Option<Spanned<String>>,
    control_socket: Option<Spanned<String>>,
    control_group: Option<Spanned<String>>,
    cipher: Option<Spanned<String>>,
    offload: Option<bool>,
    #[serde(default)]
    peer: Vec<RawPeer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Spanned<String>,
    public_key: Spanned<String>,
    address: Spanned<String>,
    address6: Option<Spanned<String>>,
}

/// Reads and validates the config at `path` (a regular file of at most 16 MiB: `/dev/zero` or
/// a FIFO is refused before it is read).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    // Zeroed after parsing: it may hold `private_key = "..."`.
    let text = zeroize::Zeroizing::new(upmt_sys::config::read(path)?);
    parse(path, &text)
}

/// The longest peer name (it lands in logs and metrics labels).
pub const MAX_PEER_NAME: usize = 64;

/// Parses and validates `text` as if read from `path` (which names errors and anchors a
/// relative `private_key_file`).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_with(path, text, true)
}

/// Reads and validates the config at `path` like [`load`], except that a `private_key_file` is
/// not read: its key is left all zeros. For a reload, which never changes the key (a changed
/// `private_key_file` path needs a restart) and may run after the daemon dropped the privilege
/// to read the key file.
pub fn load_without_key_file(path: &Path) -> Result<Config, ConfigError> {
    let text = zeroize::Zeroizing::new(upmt_sys::config::read(path)?);
    parse_with(path, &text, false)
}

fn parse_with(path: &Path, text: &str, read_key_file: bool) -> Result<Config, ConfigError> {
    let v = Validator {
        path,
        source: ConfigText::new(path, text),
        read_key_file,
    };
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| v.source.parser_error(e.span(), e.message()))?;
    v.validate(raw)
}

struct Validator<'a> {
    path: &'a Path,
    source: ConfigText<'a>,
    read_key_file: bool,
}

impl Validator<'_> {
    fn err(&self, span: Range<usize>, message: String) -> ConfigError {
        self.source.error(span, message)
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = raw.listen.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.err(
                raw.listen.span(),
                format!(
                    "expected a socket address like \"0.0.0.0:51900\" or \"[::]:51900\", got {}",
                    shown(raw.listen.get_ref())
                ),
            )
        })?;

        let key_in_config = raw.private_key.is_some();
        let private_key = match (&raw.private_key, &raw.private_key_file) {
            (Some(k), None) => self.key(k, "private_key")?,
            (None, Some(_)) if !self.read_key_file => StaticSecret::from_bytes([0; 32]),
            (None, Some(f)) => self.key_file(f)?,
            (Some(_), Some(f)) => {
                return Err(self.err(
                    f.span(),
                    "expected only one of private_key and private_key_file".into(),
                ));
            }
            (None, None) => {
                return Err(self.err(
                    0..0,
                    "missing private_key (or private_key_file): expected the anchor's base64 private key"
                        .into(),
                ));
            }
        };

        let tun = self.ifname(&raw.tun, "tun")?;
        let egress = self.ifname(&raw.egress, "egress")?;
        if tun == egress {
            return Err(self.err(
                raw.egress.span(),
                "expected an egress interface other than the tun device".into(),
            ));
        }

        let subnet = raw
            .subnet
            .get_ref()
            .parse::<Ipv4Net>()
            .ok()
            .filter(|n| n.prefix_len() <= 30 && n.network() == n.addr())
            .ok_or_else(|| {
                self.err(
                    raw.subnet.span(),
                    format!(
                        "expected an IPv4 network like \"10.77.0.0/24\" (prefix at most /30, no host bits), got {}",
                        shown(raw.subnet.get_ref())
                    ),
                )
            })?;
        let subnet6 = match &raw.subnet6 {
            None => None,
            Some(s) => Some(
                s.get_ref()
                    .parse::<Ipv6Net>()
                    .ok()
                    .filter(|n| n.prefix_len() <= 126 && n.network() == n.addr())
                    .ok_or_else(|| {
                        self.err(
                            s.span(),
                            format!(
                                "expected an IPv6 network like \"fd77::/64\" (prefix at most /126, no host bits), got {}",
                                shown(s.get_ref())
                            ),
                        )
                    })?,
            ),
        };

        let mtu = match &raw.mtu {
            None => upmt_proto::DEFAULT_MTU,
            Some(m) => {
                let value = *m.get_ref();
                // 1280 is the IPv6 minimum: inner IPv6 must always fit.
                if !(1280..=9000).contains(&value) {
                    return Err(self.err(
                        m.span(),
                        format!("expected an mtu between 1280 and 9000, got {value}"),
                    ));
                }
                value
            }
        };

        let metrics = match &raw.metrics {
            None => None,
            Some(m) => Some(m.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.err(
                    m.span(),
                    format!(
                        "expected a socket address like \"127.0.0.1:9100\", got {}",
                        shown(m.get_ref())
                    ),
                )
            })?),
        };

        let dns = match &raw.dns {
            None => None,
            Some(d) => Some(
                d.get_ref()
                    .parse::<IpAddr>()
                    .ok()
                    .filter(|a| !a.is_unspecified() && !a.is_loopback() && !a.is_multicast())
                    .ok_or_else(|| {
                        self.err(
                            d.span(),
                            format!(
                                "expected the IP address of a DNS resolver like \"9.9.9.9\" (not loopback: the kernel does not route redirected packets there), got {}",
                                shown(d.get_ref())
                            ),
                        )
                    })?,
            ),
        };
        let cipher = match &raw.cipher {
            None => CipherSetting::Auto,
            Some(c) => CipherSetting::parse(c.get_ref()).ok_or_else(|| {
                self.err(
                    c.span(),
                    format!(
                        "expected cipher {}, got {}",
                        CipherSetting::EXPECTED,
                        shown(c.get_ref())
                    ),
                )
            })?,
        };
        let path_stale_after = match &raw.path_stale_after_ms {
            None => upmt_proto::anchor::DEFAULT_PATH_STALE_AFTER,
            Some(ms) => {
                let v = *ms.get_ref();
                if !(50..=60_000).contains(&v) {
                    return Err(self.err(
                        ms.span(),
                        format!("expected path_stale_after_ms between 50 and 60000, got {v}"),
                    ));
                }
                std::time::Duration::from_millis(v)
            }
        };
        let session_timeout = match &raw.session_timeout_s {
            None => None,
            Some(secs) => {
                let v = *secs.get_ref();
                if !(5..=3600).contains(&v) {
                    return Err(self.err(
                        secs.span(),
                        format!("expected session_timeout_s between 5 and 3600, got {v}"),
                    ));
                }
                Some(std::time::Duration::from_secs(v))
            }
        };

        let mut allow_to_host = Vec::with_capacity(raw.allow_to_host.len());
        for port in &raw.allow_to_host {
            let p = *port.get_ref();
            if p == 0 {
                return Err(self.err(
                    port.span(),
                    "expected allow_to_host to list ports from 1 to 65535, got 0".into(),
                ));
            }
            if !allow_to_host.contains(&p) {
                allow_to_host.push(p);
            }
        }
        let user = match &raw.user {
            None => DEFAULT_USER.to_owned(),
            Some(u) => {
                let name = u.get_ref();
                let ok = !name.is_empty()
                    && name.len() <= 32
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if !ok {
                    return Err(self.err(
                        u.span(),
                        format!("expected user to be an account name like \"upmt\" (or \"root\" to keep root), got {name:?}"),
                    ));
                }
                name.clone()
            }
        };

        let control_socket = match &raw.control_socket {
            Some(p) if p.get_ref().trim().is_empty() => {
                return Err(self.err(
                    p.span(),
                    format!(
                        "empty control_socket: expected a path, e.g. {DEFAULT_CONTROL_SOCKET:?}"
                    ),
                ));
            }
            Some(p) => self
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .join(p.get_ref()),
            None => PathBuf::from(DEFAULT_CONTROL_SOCKET),
        };
        let control_group = match &raw.control_group {
            Some(g) if g.get_ref().trim().is_empty() => {
                return Err(self.err(
                    g.span(),
                    "empty control_group: expected a group name or a numeric gid, e.g. \"upmt\""
                        .into(),
                ));
            }
            Some(g) => Some(g.get_ref().trim().to_owned()),
            None => None,
        };

        let anchor4 = first_host4(subnet);
        let anchor6 = subnet6.map(first_host6);
        let mut peers = Vec::with_capacity(raw.peer.len());
        let mut names = HashMap::new();
        let mut keys = HashMap::new();
        let mut addrs4 = HashMap::new();
        let mut addrs6 = HashMap::new();
        for p in &raw.peer {
            let name = p.name.get_ref().trim();
            if name.is_empty()
                || name.len() > MAX_PEER_NAME
                || name
                    .chars()
                    .any(|c| c.is_control() || c == '"' || c == '\\')
            {
                return Err(self.err(
                    p.name.span(),
                    format!(
                        "expected a non-empty peer name of at most {MAX_PEER_NAME} bytes without quotes, backslashes or control characters"
                    ),
                ));
            }
            if let Some(first) = names.insert(name.to_owned(), p.name.span()) {
                return Err(self.dup(p.name.span(), "peer name", name, first));
            }
            let public_key: PublicKey = self.key(&p.public_key, "public_key")?;
            if let Some(first) = keys.insert(public_key, p.public_key.span()) {
                return Err(self.dup(p.public_key.span(), "public key", name, first));
            }

            let address = p
                .address
                .get_ref()
                .parse::<Ipv4Addr>()
                .ok()
                .filter(|a| {
                    subnet.contains(a)
                        && *a != subnet.network()
                        && *a != subnet.broadcast()
                        && *a != anchor4
                })
                .ok_or_else(|| {
                    self.err(
                        p.address.span(),
                        format!(
                            "expected an IPv4 host address inside subnet {subnet} other than the anchor's {anchor4}, got {}",
                            shown(p.address.get_ref())
                        ),
                    )
                })?;
            if let Some(first) = addrs4.insert(address, p.address.span()) {
                return Err(self.dup(p.address.span(), "address", name, first));
            }

            let address6 = match (&p.address6, subnet6) {
                (None, _) => None,
                (Some(a), None) => {
                    return Err(self.err(
                        a.span(),
                        "address6 needs subnet6 to be set at the top of the file".into(),
                    ));
                }
                (Some(a), Some(net6)) => {
                    let parsed = a
                        .get_ref()
                        .parse::<Ipv6Addr>()
                        .ok()
                        .filter(|x| {
                            net6.contains(x) && *x != net6.network() && Some(*x) != anchor6
                        })
                        .ok_or_else(|| {
                            self.err(
                                a.span(),
                                format!(
                                    "expected an IPv6 host address inside subnet6 {net6} other than the anchor's {}, got {}",
                                    first_host6(net6),
                                    shown(a.get_ref())
                                ),
                            )
                        })?;
                    if let Some(first) = addrs6.insert(parsed, a.span()) {
                        return Err(self.dup(a.span(), "address6", name, first));
                    }
                    Some(parsed)
                }
            };

            peers.push(Peer {
                name: name.to_owned(),
                public_key,
                address,
                address6,
            });
        }

        Ok(Config {
            path: self.path.to_owned(),
            listen,
            private_key,
            tun,
            subnet,
            subnet6,
            egress,
            mtu,
            metrics,
            dns,
            path_stale_after,
            session_timeout,
            allow_peer_to_peer: raw.allow_peer_to_peer,
            allow_to_host,
            allow_private_egress: raw.allow_private_egress,
            user,
            control_socket,
            control_group,
            private_key_file: raw.private_key_file.as_ref().map(|f| f.get_ref().clone()),
            cipher,
            offload: OffloadSetting::from_bool(raw.offload.unwrap_or(true)),
            key_in_config,
            peers,
        })
    }

    fn dup(&self, span: Range<usize>, what: &str, peer: &str, first: Range<usize>) -> ConfigError {
        let (line, col) = line_col(self.source.text, first.start);
        self.err(
            span,
            format!("duplicate {what} in peer {peer:?}: already used at {line}:{col}"),
        )
    }

    fn key<K: std::str::FromStr>(
        &self,
        s: &Spanned<String>,
        field: &str,
    ) -> Result<K, ConfigError> {
        s.get_ref().trim().parse::<K>().map_err(|_| {
            self.err(
                s.span(),
                format!(
                    "expected {field} to be a 32-byte key in standard base64 (44 characters, as `upmt-an genkey` prints)"
                ),
            )
        })
    }

    fn key_file(&self, f: &Spanned<String>) -> Result<StaticSecret, ConfigError> {
        self.source.private_key_file(f.span(), f.get_ref())
    }

    /// An interface name by the kernel's rules that can also stand in the nftables ruleset:
    /// there it is a quoted string in which `*` is a wildcard and `"` ends the string, and the
    /// tun's name is part of the table's name, so only letters, digits, '_', '-' and '.' pass.
    fn ifname(&self, s: &Spanned<String>, field: &str) -> Result<String, ConfigError> {
        let name = s.get_ref();
        upmt_sys::ifname::check(name)
            .map_err(|why| self.err(s.span(), format!("invalid {field}: {why}")))?;
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(self.err(
                s.span(),
                format!(
                    "invalid {field}: {} cannot be named in the nftables ruleset: expected an interface name of letters, digits, '_', '-' or '.'",
                    shown(name)
                ),
            ));
        }
        Ok(name.clone())
    }
}

/// Why the daemon refuses a config that holds its private key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(
        "config {path} holds the private key and is open to group or others (mode {mode:04o}), so the key may be known: run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot stat config {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Refuses a config that holds the private key inline when group or others can open it, as
/// `private_key_file` is refused then ([`upmt_sys::keys`]): the key is the anchor's identity,
/// and anyone holding it can impersonate the anchor to every mobile host.
pub fn check_key_file_mode(config: &Config) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    if !config.key_in_config {
        return Ok(());
    }
    let path = &config.path;
    let mode = std::fs::metadata(path)
        .map_err(|source| KeyFileError::Stat {
            path: path.clone(),
            source,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & upmt_sys::keys::GROUP_OR_OTHER != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.clone(),
            mode,
        });
    }
    Ok(())
}

fn first_host4(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(1))
}

fn first_host6(net: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()).wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const KEY_B: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const KEY_C: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    fn good() -> String {
        format!(
            r#"listen = "0.0.0.0:51900"
private_key = "{KEY_A}"
tun = "upmt0"
subnet = "10.77.0.0/24"
subnet6 = "fd77::/64"
egress = "eth0"
metrics = "127.0.0.1:9100"

[[peer]]
name = "phone"
public_key = "{KEY_B}"
address = "10.77.0.2"
address6 = "fd77::2"

[[peer]]
name = "laptop"
public_key = "{KEY_C}"
address = "10.77.0.3"
"#
        )
    }

    fn err_of(text: &str) -> (usize, usize, String) {
        match parse(Path::new("an.toml"), text) {
            Ok(_) => panic!("config unexpectedly accepted:\n{text}"),
            Err(ConfigError::Invalid {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }

    #[test]
    fn a_complete_config_is_accepted_with_defaults_filled_in() {
        let c = parse(Path::new("an.toml"), &good()).expect("valid config");
        assert_eq!(c.listen, "0.0.0.0:51900".parse().unwrap());
        assert_eq!(c.private_key.as_bytes(), &[0; 32]);
        assert_eq!(c.mtu, upmt_proto::DEFAULT_MTU);
        assert_eq!(c.anchor_address(), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(c.anchor_address6(), Some("fd77::1".parse().unwrap()));
        assert_eq!(c.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[0].name, "phone");
        assert_eq!(c.peers[0].public_key.as_bytes(), &[1; 32]);
        assert_eq!(c.peers[0].address6, Some("fd77::2".parse().unwrap()));
        assert_eq!(c.peers[1].address6, None);
    }

    #[test]
    fn the_control_socket_defaults_to_run_upmt_and_a_relative_one_is_next_to_the_config() {
        let c = parse(Path::new("/etc/upmt/an.toml"), &good()).unwrap();
        assert_eq!(c.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.control_group, None);
        let text = good().replacen(
            "[[peer]]",
            "control_socket = \"an.sock\"\ncontrol_group = \"upmt\"\n\n[[peer]]",
            1,
        );
        let c = parse(Path::new("/tmp/lab/an.toml"), &text).unwrap();
        assert_eq!(c.control_socket, Path::new("/tmp/lab/an.sock"));
        assert_eq!(c.control_group.as_deref(), Some("upmt"));
        let (line, col, msg) =
            err_of(&good().replacen("[[peer]]", "control_socket = \" \"\n[[peer]]", 1));
        assert_eq!((line, col), (9, 18), "{msg}");
        assert!(msg.starts_with("empty control_socket"), "{msg}");
    }

    #[test]
    fn a_reload_reads_everything_but_the_key_file() {
        let dir = upmt_sys::testing::temp_dir("an-reload-keyfile");
        let path = dir.join("an.toml");
        let text = good().replace(
            &format!("private_key = \"{KEY_A}\""),
            "private_key_file = \"no-such-key\"",
        );
        std::fs::write(&path, &text).unwrap();
        assert!(load(&path).is_err(), "a full load reads the key file");
        let c = load_without_key_file(&path).expect("the key file is not read");
        assert_eq!(c.private_key_file.as_deref(), Some("no-such-key"));
        assert_eq!(c.peers.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let text = include_str!("../examples/upmt-an.toml");
        let c = parse(Path::new("examples/upmt-an.toml"), text).expect("example must parse");
        assert_eq!(c.tun, "upmt0");
        assert!(!c.peers.is_empty());
    }

    #[test]
    fn an_unknown_key_is_reported_at_its_line_and_column() {
        let text = good().replace("egress = \"eth0\"", "egress = \"eth0\"\n  colour = 1");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (7, 3));
        assert!(msg.contains("unknown field `colour`"), "{msg}");
    }

    #[test]
    fn a_wrong_type_says_what_was_expected() {
        let text = good().replace("egress = \"eth0\"", "egress = \"eth0\"\nmtu = \"big\"");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (7, 7));
        assert!(msg.contains("expected u16"), "{msg}");
    }

    #[test]
    fn a_toml_syntax_error_is_located() {
        let (line, col, _) = err_of("listen = \"0.0.0.0:1\"\ntun = = 3\n");
        assert_eq!(line, 2);
        assert!(col >= 5, "col {col}");
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let text = good().replace("tun = \"upmt0\"\n", "");
        let (_, _, msg) = err_of(&text);
        assert!(msg.contains("missing field `tun`"), "{msg}");
    }

    #[test]
    fn a_bad_listen_address_is_located() {
        let text = good().replace("0.0.0.0:51900", "0.0.0.0");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (1, 10));
        assert!(msg.contains("expected a socket address"), "{msg}");
    }

    #[test]
    fn a_bad_base64_private_key_is_located() {
        let text = good().replace(KEY_A, "not base64!");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (2, 15));
        assert!(msg.contains("private_key"), "{msg}");
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        let text = good().replace(KEY_B, "AAAA");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (11, 14));
        assert!(msg.contains("32-byte key"), "{msg}");
    }

    #[test]
    fn both_key_and_key_file_are_refused() {
        let text = good().replace(
            "tun = ",
            "private_key_file = \"/nonexistent/an.key\"\ntun = ",
        );
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (3, 20));
        assert!(msg.contains("only one of"), "{msg}");
    }

    #[test]
    fn a_missing_private_key_is_refused() {
        let text = good().replace(&format!("private_key = \"{KEY_A}\"\n"), "");
        let (_, _, msg) = err_of(&text);
        assert!(msg.contains("missing private_key"), "{msg}");
    }

    #[test]
    fn an_unreadable_private_key_file_names_the_file() {
        let text = good().replace(
            &format!("private_key = \"{KEY_A}\""),
            "private_key_file = \"/nonexistent/an.key\"",
        );
        match parse(Path::new("an.toml"), &text) {
            Err(e @ ConfigError::KeyFile { line, column, .. }) => {
                assert_eq!((line, column), (2, 20));
                assert!(e.to_string().contains("/nonexistent/an.key"), "{e}");
            }
            other => panic!("expected a KeyFile error, got {other:?}"),
        }
    }

    #[test]
    fn a_private_key_file_relative_to_the_config_is_read() {
        let dir = std::env::temp_dir().join(format!("upmt-an-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("an.key"), format!("{KEY_C}\n")).unwrap();
        // A key file only its owner can open, as the daemon demands.
        std::fs::set_permissions(
            dir.join("an.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let text = good().replace(
            &format!("private_key = \"{KEY_A}\""),
            "private_key_file = \"an.key\"",
        );
        let parsed = parse(&dir.join("an.toml"), &text);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(parsed.expect("valid").private_key.as_bytes(), &[2; 32]);
    }

    #[test]
    fn the_config_debug_prints_no_private_key() {
        let c = parse(
            Path::new("an.toml"),
            &good().replace(KEY_A, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="),
        )
        .unwrap();
        assert_eq!(c.private_key.as_bytes(), &[7; 32]);
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("BwcHBwcH"), "{shown}");
        assert!(!shown.contains("7, 7"), "{shown}");
        assert!(!shown.contains("7,\n"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn a_private_key_file_that_is_dev_zero_or_open_to_others_is_refused_at_its_setting() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("upmt-an-cfg-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("an.key"), format!("{KEY_C}\n")).unwrap();
        std::fs::set_permissions(dir.join("an.key"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let with = |file: &str| {
            good().replace(
                &format!("private_key = \"{KEY_A}\""),
                &format!("private_key_file = \"{file}\""),
            )
        };
        let open = parse(&dir.join("an.toml"), &with("an.key"));
        let zero = parse(&dir.join("an.toml"), &with("/dev/zero"));
        std::fs::remove_dir_all(&dir).unwrap();
        let open = upmt_sys::display_chain(&open.unwrap_err());
        assert!(
            open.starts_with(&format!("{}:2:20: ", dir.join("an.toml").display())),
            "{open}"
        );
        assert!(open.contains("mode 0640"), "{open}");
        assert!(
            open.contains(&format!("chmod 600 {}", dir.join("an.key").display())),
            "{open}"
        );
        let zero = upmt_sys::display_chain(&zero.unwrap_err());
        assert!(zero.contains("not a regular file"), "{zero}");
    }

    #[test]
    fn a_subnet_with_host_bits_is_refused() {
        let text = good().replace("10.77.0.0/24", "10.77.0.5/24");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (4, 10));
        assert!(msg.contains("IPv4 network"), "{msg}");
    }

    #[test]
    fn a_bad_subnet6_is_located() {
        let text = good().replace("fd77::/64", "fd77::");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (5, 11));
        assert!(msg.contains("IPv6 network"), "{msg}");
    }

    #[test]
    fn a_bad_interface_name_is_refused() {
        let text = good().replace("\"eth0\"", "\"eth0; drop\"");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (6, 10));
        assert!(msg.contains("interface name"), "{msg}");
    }

    #[test]
    fn an_interface_name_longer_than_ifnamsiz_is_refused() {
        let text = good().replace("\"upmt0\"", "\"upmt0123456789abc\"");
        let (line, col, _) = err_of(&text);
        assert_eq!((line, col), (3, 7));
    }

    #[test]
    fn egress_equal_to_tun_is_refused() {
        let text = good().replace("\"eth0\"", "\"upmt0\"");
        let (line, _, msg) = err_of(&text);
        assert_eq!(line, 6);
        assert!(msg.contains("other than the tun"), "{msg}");
    }

    #[test]
    fn an_mtu_out_of_range_is_refused() {
        let text = good().replace("egress = \"eth0\"", "egress = \"eth0\"\nmtu = 576");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (7, 7));
        assert!(msg.contains("between 1280 and 9000"), "{msg}");
    }

    #[test]
    fn a_dns_resolver_and_a_stale_time_are_read_and_defaulted() {
        let c = parse(Path::new("an.toml"), &good()).unwrap();
        assert_eq!(c.dns, None);
        assert_eq!(
            c.path_stale_after,
            upmt_proto::anchor::DEFAULT_PATH_STALE_AFTER
        );
        let text = good().replace(
            "egress = \"eth0\"",
            "egress = \"eth0\"\ndns = \"9.9.9.9\"\npath_stale_after_ms = 800",
        );
        let c = parse(Path::new("an.toml"), &text).unwrap();
        assert_eq!(c.dns, Some("9.9.9.9".parse().unwrap()));
        assert_eq!(c.path_stale_after, std::time::Duration::from_millis(800));
    }

    #[test]
    fn the_session_timeout_defaults_to_the_cores_and_is_read_within_bounds() {
        let c = parse(Path::new("an.toml"), &good()).unwrap();
        assert_eq!(c.session_timeout, None);
        let with = |v: u64| {
            good().replace(
                "egress = \"eth0\"",
                &format!("egress = \"eth0\"\nsession_timeout_s = {v}"),
            )
        };
        let c = parse(Path::new("an.toml"), &with(10)).unwrap();
        assert_eq!(c.session_timeout, Some(std::time::Duration::from_secs(10)));
        for bad in [0, 4, 3601] {
            let (line, col, msg) = err_of(&with(bad));
            assert_eq!((line, col), (7, 21), "{bad}");
            assert!(msg.contains("between 5 and 3600"), "{msg}");
        }
    }

    #[test]
    fn ten_thousand_peers_load_in_well_under_a_second() {
        let mut text = good().replace("subnet = \"10.77.0.0/24\"", "subnet = \"10.77.0.0/16\"");
        text.truncate(text.find("[[peer]]").unwrap());
        for i in 0..10_000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[4] = 7;
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 1, 0)) + i);
            text.push_str(&format!(
                "[[peer]]\nname = \"mh{i}\"\npublic_key = \"{}\"\naddress = \"{addr}\"\n",
                PublicKey::from_bytes(key)
            ));
        }
        let started = std::time::Instant::now();
        let c = parse(Path::new("an.toml"), &text).unwrap();
        let took = started.elapsed();
        assert_eq!(c.peers.len(), 10_000);
        // Linear work: a quadratic check would take tens of seconds here, even optimised.
        assert!(took < std::time::Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn a_loopback_or_malformed_dns_resolver_is_refused_at_its_position() {
        for bad in ["127.0.0.53", "dns.example", "0.0.0.0"] {
            let text = good().replace(
                "egress = \"eth0\"",
                &format!("egress = \"eth0\"\ndns = \"{bad}\""),
            );
            let (line, col, msg) = err_of(&text);
            assert_eq!((line, col), (7, 7), "{bad}");
            assert!(msg.contains("DNS resolver"), "{msg}");
        }
        let text = good().replace(
            "egress = \"eth0\"",
            "egress = \"eth0\"\npath_stale_after_ms = 5",
        );
        assert!(err_of(&text).2.contains("between 50 and 60000"));
    }

    #[test]
    fn offload_defaults_to_on_and_can_be_turned_off() {
        let c = parse(Path::new("an.toml"), &good()).unwrap();
        assert_eq!(c.offload, OffloadSetting::On);
        let text = good().replace("egress = \"eth0\"", "egress = \"eth0\"\noffload = false");
        let c = parse(Path::new("an.toml"), &text).unwrap();
        assert_eq!(c.offload, OffloadSetting::Off);
        let text = good().replace("egress = \"eth0\"", "egress = \"eth0\"\noffload = \"yes\"");
        let (line, _, _) = err_of(&text);
        assert_eq!(line, 7, "a non-boolean is refused at its line");
    }

    #[test]
    fn the_cipher_defaults_to_auto_and_an_unknown_one_is_refused_at_its_value() {
        let c = parse(Path::new("an.toml"), &good()).unwrap();
        assert_eq!(c.cipher, CipherSetting::Auto);
        let text = good().replace(
            "egress = \"eth0\"",
            "egress = \"eth0\"\ncipher = \"chacha20\"",
        );
        let c = parse(Path::new("an.toml"), &text).unwrap();
        assert_eq!(c.cipher, CipherSetting::ChaCha20);
        let text = good().replace(
            "egress = \"eth0\"",
            "egress = \"eth0\"\ncipher = \"aes128\"",
        );
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (7, 10));
        assert!(
            msg.contains("\"auto\", \"chacha20\" or \"aes256gcm\""),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_metrics_address_is_located() {
        let text = good().replace("127.0.0.1:9100", "localhost");
        let (line, col, _) = err_of(&text);
        assert_eq!((line, col), (7, 11));
    }

    #[test]
    fn a_peer_address_outside_the_subnet_is_refused() {
        let text = good().replace("10.77.0.3", "10.78.0.3");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (18, 11));
        assert!(msg.contains("inside subnet 10.77.0.0/24"), "{msg}");
    }

    #[test]
    fn a_peer_cannot_take_the_anchor_address() {
        let text = good().replace("10.77.0.3", "10.77.0.1");
        let (line, _, msg) = err_of(&text);
        assert_eq!(line, 18);
        assert!(msg.contains("other than the anchor's 10.77.0.1"), "{msg}");
    }

    #[test]
    fn a_duplicate_peer_address_points_at_both_uses() {
        let text = good().replace("10.77.0.3", "10.77.0.2");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (18, 11));
        assert!(msg.contains("duplicate address"), "{msg}");
        assert!(msg.contains("already used at 12:11"), "{msg}");
    }

    #[test]
    fn a_duplicate_public_key_is_refused() {
        let text = good().replace(KEY_C, KEY_B);
        let (line, _, msg) = err_of(&text);
        assert_eq!(line, 17);
        assert!(msg.contains("duplicate public key"), "{msg}");
    }

    #[test]
    fn a_duplicate_peer_name_is_refused() {
        let text = good().replace("\"laptop\"", "\"phone\"");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (16, 8));
        assert!(msg.contains("duplicate peer name"), "{msg}");
    }

    #[test]
    fn an_empty_peer_name_is_refused() {
        let text = good().replace("\"laptop\"", "\"  \"");
        let (line, _, msg) = err_of(&text);
        assert_eq!(line, 16);
        assert!(msg.contains("non-empty peer name"), "{msg}");
    }

    #[test]
    fn a_duplicate_address6_is_refused() {
        let text = good().replace(
            "address = \"10.77.0.3\"",
            "address = \"10.77.0.3\"\naddress6 = \"fd77::2\"",
        );
        let (line, _, msg) = err_of(&text);
        assert_eq!(line, 19);
        assert!(msg.contains("duplicate address6"), "{msg}");
    }

    #[test]
    fn an_address6_outside_subnet6_is_refused() {
        let text = good().replace("fd77::2\"", "fd78::2\"");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (13, 12));
        assert!(msg.contains("inside subnet6 fd77::/64"), "{msg}");
    }

    #[test]
    fn an_address6_without_subnet6_is_refused() {
        let text = good().replace("subnet6 = \"fd77::/64\"\n", "");
        let (line, _, msg) = err_of(&text);
        assert_eq!(line, 12);
        assert!(msg.contains("needs subnet6"), "{msg}");
    }

    #[test]
    fn isolation_and_user_default_to_closed_and_nobody_and_are_read_when_given() {
        let c = parse(Path::new("an.toml"), &good()).unwrap();
        assert!(!c.allow_peer_to_peer && !c.allow_private_egress);
        assert!(c.allow_to_host.is_empty());
        assert_eq!(c.user, DEFAULT_USER);
        assert!(c.key_in_config);
        let text = good().replace(
            "egress = \"eth0\"",
            "egress = \"eth0\"\nallow_peer_to_peer = true\nallow_to_host = [22, 22, 9100]\n\
             allow_private_egress = true\nuser = \"upmt\"",
        );
        let c = parse(Path::new("an.toml"), &text).unwrap();
        assert!(c.allow_peer_to_peer && c.allow_private_egress);
        assert_eq!(c.allow_to_host, vec![22, 9100]);
        assert_eq!(c.user, "upmt");
    }

    #[test]
    fn a_bad_port_or_user_is_refused_at_its_position() {
        let text = good().replace(
            "egress = \"eth0\"",
            "egress = \"eth0\"\nallow_to_host = [0]",
        );
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (7, 18));
        assert!(msg.contains("ports from 1 to 65535"), "{msg}");
        let text = good().replace("egress = \"eth0\"", "egress = \"eth0\"\nuser = \"a b\"");
        let (line, col, msg) = err_of(&text);
        assert_eq!((line, col), (7, 8));
        assert!(msg.contains("account name"), "{msg}");
    }

    #[test]
    fn a_config_holding_the_key_open_to_others_is_refused_with_the_command_that_fixes_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("upmt-an-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("an.toml");
        std::fs::write(&path, good()).unwrap();
        let c = parse(&path, &good()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = check_key_file_mode(&c).map_err(|e| e.to_string());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let accepted = check_key_file_mode(&c).map_err(|e| e.to_string());
        std::fs::remove_dir_all(&dir).unwrap();
        let msg = refused.expect_err("a world-readable config with the key must be refused");
        assert!(msg.contains("open to group or others (mode 0644)"), "{msg}");
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1);
        accepted.expect("a config readable by its owner only is accepted");
    }
}
