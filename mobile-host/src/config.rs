//! The `upmt-mh` configuration file: one TOML document naming the anchor, the keys, the TUN and
//! the uplinks.
//!
//! Parsing is strict (`deny_unknown_fields`) so a typo is an error, not a silently ignored line.
//! Every error names the file, the line and column, and what was expected. This module only
//! reads files (the config, an optional `private_key_file` and the policy file it names); it
//! never touches the network.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_spanned::Spanned;
use upmt_mh_core::candidates::Pattern;
use upmt_paft::MAX_UPLINKS;
use upmt_proto::keys::{PublicKey, StaticSecret};
use upmt_sys::cipher::CipherSetting;
use upmt_sys::config::{ConfigText, shown};
use upmt_sys::ifname;
use upmt_sys::tunbatch::OffloadSetting;

pub use upmt_sys::config::ConfigError;
pub use upmt_sys::file::MAX_FILE_BYTES;

use crate::appid::android::PACKAGES_LIST;
use crate::routing::layout::{ANDROID_BAND_END, DnsRoute, Platform};

/// Default SO_MARK of the daemon's own sockets on Linux; the routing rules exempt it from the
/// TUN.
pub const DEFAULT_FWMARK: u32 = 0x5550;
/// Default routing table holding the TUN's default routes on Linux.
pub const DEFAULT_TABLE: u32 = 5550;
/// Default priority of the `not fwmark M lookup T` rule on Linux; the bypass, DNS and
/// `lookup main suppress_prefixlength 0` rules sit at `P - 3` to `P - 1`. Before the main
/// table's rule (32766).
pub const DEFAULT_RULE_PRIORITY: u32 = 5550;
/// Android's default mark: netd's protectedFromVpn bit, which its rules already exempt.
pub const ANDROID_FWMARK: u32 = crate::routing::layout::PROTECTED_FROM_VPN;
/// Android's default table: below netd's per-interface tables (ifindex + 1000), clear of its
/// 97-99.
pub const ANDROID_TABLE: u32 = 555;
/// Android's default band start: the band 14001-14999 lies between netd's PROHIBIT_NON_VPN
/// (14000) and its explicit-network rules (15000, 16000).
pub const ANDROID_RULE_PRIORITY: u32 = 14001;
/// The file whose presence says the host is Android (`platform` unset).
pub const ANDROID_BUILD_PROP: &str = "/system/build.prop";
/// Default procfs root of the app lookup.
pub const DEFAULT_PROC_ROOT: &str = "/proc";
/// Default TUN name.
pub const DEFAULT_TUN: &str = "upmt0";
/// Where a Linux host keeps the config unless told otherwise.
pub const LINUX_CONFIG: &str = "/etc/upmt/mh.toml";
/// Where everything of the daemon lives on an Android phone (root only; Magisk's own
/// `/data/adb` survives updates of the module and of Android).
pub const ANDROID_DIR: &str = "/data/adb/upmt";
/// The config's default path on Android.
pub const ANDROID_CONFIG: &str = "/data/adb/upmt/mh.toml";
/// The control socket's default path on Android (Android has no `/run`).
pub const ANDROID_SOCKET: &str = "/data/adb/upmt/mh.sock";
/// Where a Linux host keeps the usage ledger unless `usage_file` says otherwise.
pub const LINUX_USAGE_FILE: &str = "/var/lib/upmt/usage.json";
/// The usage ledger's default path on Android.
pub const ANDROID_USAGE_FILE: &str = "/data/adb/upmt/usage.json";

/// Whether this host keeps its files the Android way: [`ANDROID_DIR`] exists (the Magisk
/// module makes it) or the system is Android ([`ANDROID_BUILD_PROP`]).
pub fn android_paths() -> bool {
    Path::new(ANDROID_DIR).is_dir() || Path::new(ANDROID_BUILD_PROP).is_file()
}

/// The config file `upmt-mh` reads unless `--config` names another.
pub fn default_config() -> &'static str {
    if android_paths() {
        ANDROID_CONFIG
    } else {
        LINUX_CONFIG
    }
}

/// The control socket unless the config or `upmt --socket` names another.
pub fn default_socket() -> &'static str {
    if android_paths() {
        ANDROID_SOCKET
    } else {
        crate::control::DEFAULT_SOCKET
    }
}
/// The longest probe interval, keepalive, path timeout or hold-down the config takes.
pub const MAX_PROBE_TIME: Duration = Duration::from_secs(3600);
/// The longest idle keepalive `idle_keepalive_s = "auto"` learns, unless
/// `idle_keepalive_max_s` says otherwise.
pub const DEFAULT_KEEPALIVE_MAX: Duration = Duration::from_secs(300);
/// The longest uplink name (it lands in logs, the policy and `upmt status`).
pub const MAX_UPLINK_NAME: usize = 64;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The anchor node's UDP endpoint (the first of [`Config::anchors`]).
    pub anchor: SocketAddr,
    /// Every endpoint of the anchor, at most one per address family, preferred first: each
    /// uplink uses the first family that works on it.
    pub anchors: Vec<SocketAddr>,
    /// The anchor's static public key (X25519, 32 bytes).
    pub anchor_public_key: PublicKey,
    /// Further anchors in order (`[[fallback_anchor]]`): the host moves to the next when the
    /// one in use is gone (see `upmt_mh_core::anchors`).
    pub fallback_anchors: Vec<FallbackAnchor>,
    /// This host's static private key (X25519, 32 bytes).
    pub private_key: StaticSecret,
    /// Name of the TUN device.
    pub tun: String,
    /// SO_MARK of the daemon's own sockets.
    pub fwmark: u32,
    /// Routing table of the TUN's default routes.
    pub table: u32,
    /// Linux: priority of the `not fwmark` rule (the others sit at `rule_priority - 3` to
    /// `- 1`). Android: the first priority of the band (it ends 998 later).
    pub rule_priority: u32,
    /// Whose routing the host lives in (`platform`; detected when unset).
    pub platform: Platform,
    /// Where tunnelled apps' DNS goes (`dns`).
    pub dns: DnsRoute,
    /// Uplinks in file order; uplink `i` is path `i`.
    pub uplinks: Vec<UplinkConfig>,
    /// The per-application policy file (resolved against the config's directory); `None`:
    /// everything is tunnelled over the first uplink that is up, in config order.
    pub policy: Option<PathBuf>,
    /// The control socket `upmt` talks to (resolved against the config's directory).
    pub control_socket: PathBuf,
    /// A group whose members may use the control socket besides root.
    pub control_group: Option<String>,
    /// Where the Prometheus endpoint listens (`metrics`); `None`: no endpoint (the default).
    pub metrics: Option<std::net::SocketAddr>,
    /// Probe timings of the core (the `[probe]` table).
    pub probe: ProbeConfig,
    /// The procfs the app lookup reads processes from (`proc_root`, default `/proc`).
    pub proc_root: PathBuf,
    /// Android's uid -> package table (`packages_list`, default [`PACKAGES_LIST`]); absent on
    /// Linux, which is fine.
    pub packages_list: PathBuf,
    /// Whether inits offer AES-256-GCM (`cipher`, default auto: where the CPU has AES hardware).
    pub cipher: CipherSetting,
    /// Whether the TUN uses the kernel's segmentation and coalescing offloads (`offload`,
    /// default on where the kernel has them; a TUN opened from Android's `/dev/tun` has none).
    pub offload: OffloadSetting,
    /// Where the usage ledger is kept across restarts (`usage_file`, resolved against the
    /// config's directory; default [`LINUX_USAGE_FILE`], or [`ANDROID_USAGE_FILE`] on Android).
    pub usage_file: PathBuf,
}

/// How the core probes its paths (`[probe]`); each maps onto a `ClientConfig` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Probe interval while the tunnel carried data recently (`probe_interval`).
    pub active_interval: Duration,
    /// One keepalive probe per this while idle, enough for NAT bindings (`keepalive`).
    pub idle_keepalive: Duration,
    /// With `idle_keepalive_s = "auto"` (the default): learn each uplink's NAT binding
    /// lifetime on a disposable socket, starting at `idle_keepalive` and stretching up to this
    /// (`keepalive_max`); `None` with an explicit number of seconds.
    pub idle_keepalive_max: Option<Duration>,
    /// A probe unanswered this long marks its path down (`path_timeout`).
    pub path_timeout: Duration,
    /// How long a returning preferred path must stay up before traffic moves back (`hold_down`).
    pub hold_down: Duration,
    /// How long no path may answer, with an uplink up, before the host moves to the next
    /// anchor (`failover_after_ms`; only with `[[fallback_anchor]]`).
    pub failover_after: Duration,
}

/// One `[[fallback_anchor]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackAnchor {
    /// Its endpoints, at most one per address family, preferred first.
    pub endpoints: Vec<SocketAddr>,
    /// Its static public key.
    pub public_key: PublicKey,
}

impl Default for ProbeConfig {
    /// The core's own defaults (a unit test holds them equal), and learning the keepalive,
    /// which the core leaves to drivers that open the test sockets.
    fn default() -> Self {
        ProbeConfig {
            active_interval: Duration::from_millis(200),
            idle_keepalive: Duration::from_secs(25),
            idle_keepalive_max: Some(DEFAULT_KEEPALIVE_MAX),
            path_timeout: Duration::from_millis(700),
            hold_down: Duration::from_secs(3),
            failover_after: upmt_mh_core::anchors::DEFAULT_FAILOVER_AFTER,
        }
    }
}

/// One physical uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkConfig {
    /// The name the policy uses for it ("wifi", "cell").
    pub name: String,
    /// The network interface it is bound to ("wlan0"), or a prefix pattern ("rmnet_data*")
    /// whose candidates it picks from.
    pub interface: String,
    /// The path id the core knows it by: its position in the file.
    pub path_index: u8,
    /// Data on it costs (cellular): rules with `avoid_metered` use it only as a last resort.
    pub metered: bool,
    /// `idle = "sleep"`: no keepalives while it carries no flows (a metered or cellular link
    /// whose radio should stay idle); the first flow on it costs one round trip more.
    pub sleep: bool,
    /// Its data cap (`cap = "2 GiB per month"`, `cap_reset_day`), if it has one.
    pub cap: Option<upmt_mh_core::usage::Cap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    anchor: Spanned<RawAnchor>,
    anchor_public_key: Spanned<String>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    tun: Option<Spanned<String>>,
    fwmark: Option<Spanned<u32>>,
    table: Option<Spanned<u32>>,
    rule_priority: Option<Spanned<u32>>,
    platform: Option<Spanned<String>>,
    dns: Option<Spanned<String>>,
    policy: Option<Spanned<String>>,
    control_socket: Option<Spanned<String>>,
    control_group: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    probe: Option<RawProbe>,
    proc_root: Option<Spanned<String>>,
    packages_list: Option<Spanned<String>>,
    cipher: Option<Spanned<String>>,
    offload: Option<bool>,
    usage_file: Option<Spanned<String>>,
    #[serde(default)]
    uplink: Vec<RawUplink>,
    #[serde(default)]
    fallback_anchor: Vec<RawFallbackAnchor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallbackAnchor {
    anchor: Spanned<RawAnchor>,
    anchor_public_key: Spanned<String>,
}

/// `anchor = ...` (of the first anchor or a fallback): one endpoint, or one per family.
fn anchor_endpoints(
    raw: Spanned<RawAnchor>,
    source: &ConfigText,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let at = |span, message: String| source.error(span, message);
    let anchor_span = raw.span();
    let entries: Vec<(String, Range<usize>)> = match raw.into_inner() {
        RawAnchor::One(text) => vec![(text, anchor_span.clone())],
        RawAnchor::Many(list) => list
            .into_iter()
            .map(|e| {
                let span = e.span();
                (e.into_inner(), span)
            })
            .collect(),
    };
    if entries.is_empty() {
        return Err(at(
            anchor_span,
            "empty anchor list: expected one or two endpoints, e.g. [\"203.0.113.2:51900\", \"[2001:db8::2]:51900\"]".into(),
        ));
    }
    let mut anchors: Vec<SocketAddr> = Vec::with_capacity(entries.len());
    for (text, span) in entries {
        let endpoint: SocketAddr = text.parse().map_err(|_| {
            at(
                span.clone(),
                format!(
                    "invalid anchor {}: expected IPv4:port or [IPv6]:port, e.g. \"203.0.113.2:51900\"",
                    shown(&text)
                ),
            )
        })?;
        if endpoint.port() == 0 {
            return Err(at(span, "anchor port must not be 0".into()));
        }
        if anchors.iter().any(|a| a.is_ipv4() == endpoint.is_ipv4()) {
            return Err(at(
                span,
                format!(
                    "anchor lists two {} endpoints: expected at most one per address family",
                    if endpoint.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
            ));
        }
        anchors.push(endpoint);
    }
    Ok(anchors)
}

/// `anchor_public_key = ...` (of the first anchor or a fallback).
fn anchor_key(raw: &Spanned<String>, source: &ConfigText) -> Result<PublicKey, ConfigError> {
    raw.get_ref().trim().parse::<PublicKey>().map_err(|_| {
        source.error(
            raw.span(),
            "invalid anchor_public_key: expected a base64 X25519 public key (44 characters, as `upmt pubkey` prints)",
        )
    })
}

/// `anchor = "ip:port"`, or a list of one endpoint per family.
enum RawAnchor {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for RawAnchor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawAnchor;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an endpoint string or a list of endpoint strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawAnchor, E> {
                Ok(RawAnchor::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawAnchor, A::Error> {
                let mut all = Vec::new();
                while let Some(e) = seq.next_element::<Spanned<String>>()? {
                    // More than one per family is refused later; this only bounds memory.
                    if all.len() > 2 {
                        return Err(serde::de::Error::custom(
                            "anchor lists more than two endpoints: expected one per address family",
                        ));
                    }
                    all.push(e);
                }
                Ok(RawAnchor::Many(all))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    active_interval_ms: Option<Spanned<u64>>,
    idle_keepalive_s: Option<Spanned<RawKeepalive>>,
    idle_keepalive_max_s: Option<Spanned<u64>>,
    path_timeout_ms: Option<Spanned<u64>>,
    hold_down_ms: Option<Spanned<u64>>,
    failover_after_ms: Option<Spanned<u64>>,
}

/// `idle_keepalive_s`: seconds, or `"auto"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawKeepalive {
    Seconds(u64),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    name: Spanned<String>,
    interface: Spanned<String>,
    #[serde(default)]
    metered: bool,
    idle: Option<Spanned<String>>,
    cap: Option<Spanned<String>>,
    cap_reset_day: Option<Spanned<i64>>,
}

/// An uplink's `cap` and `cap_reset_day`; an error names the span of the offending value.
fn uplink_cap(
    cap: Option<&Spanned<String>>,
    reset_day: Option<&Spanned<i64>>,
) -> Result<Option<upmt_mh_core::usage::Cap>, (Range<usize>, String)> {
    use upmt_mh_core::usage::{Cap, Period, parse_cap};
    let Some(cap) = cap else {
        return match reset_day {
            Some(d) => Err((
                d.span(),
                "cap_reset_day without a cap: expected cap = \"<size> per month\" in the same uplink".into(),
            )),
            None => Ok(None),
        };
    };
    let (limit, monthly) = parse_cap(cap.get_ref()).map_err(|e| (cap.span(), e.to_string()))?;
    let period = match (monthly, reset_day) {
        (false, Some(d)) => {
            return Err((
                d.span(),
                "cap_reset_day with a daily cap: expected it only with \"... per month\"".into(),
            ));
        }
        (false, None) => Period::Day,
        (true, None) => Period::Month { reset_day: 1 },
        (true, Some(d)) => match u8::try_from(*d.get_ref()) {
            Ok(day @ 1..=28) => Period::Month { reset_day: day },
            _ => {
                return Err((
                    d.span(),
                    format!(
                        "invalid cap_reset_day {}: expected a day of the month from 1 to 28",
                        d.get_ref()
                    ),
                ));
            }
        },
    };
    Ok(Some(Cap { limit, period }))
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        // Zeroed after parsing: it may hold `private_key = "..."`.
        let text = zeroize::Zeroizing::new(upmt_sys::config::read(path)?);
        Config::parse(&text, path)
    }

    /// Validates `text`, the contents of the file at `path` (used for error messages and to
    /// resolve a relative `private_key_file`). Without `platform`, the host is Android when
    /// [`ANDROID_BUILD_PROP`] exists.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_on(text, path, Path::new(ANDROID_BUILD_PROP))
    }

    /// [`Config::parse`], with `build_prop` as the file that says the host is Android.
    pub fn parse_on(text: &str, path: &Path, build_prop: &Path) -> Result<Config, ConfigError> {
        let source = ConfigText::new(path, text);
        let at = |span, message: String| source.error(span, message);
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| source.parser_error(e.span(), e.message()))?;

        let anchors = anchor_endpoints(raw.anchor, &source)?;
        let anchor = anchors[0];
        let anchor_public_key = anchor_key(&raw.anchor_public_key, &source)?;
        let mut fallback_anchors = Vec::with_capacity(raw.fallback_anchor.len());
        for f in raw.fallback_anchor {
            let span = f.anchor.span();
            let endpoints = anchor_endpoints(f.anchor, &source)?;
            let taken = anchors.iter().chain(
                fallback_anchors
                    .iter()
                    .flat_map(|a: &FallbackAnchor| &a.endpoints),
            );
            if let Some(dup) = endpoints.iter().find(|e| taken.clone().any(|t| t == *e)) {
                return Err(at(
                    span,
                    format!("anchor endpoint {dup} is listed twice: each anchor needs its own"),
                ));
            }
            fallback_anchors.push(FallbackAnchor {
                endpoints,
                public_key: anchor_key(&f.anchor_public_key, &source)?,
            });
        }

        let private_key = match (&raw.private_key, &raw.private_key_file) {
            (Some(k), None) => k.get_ref().trim().parse::<StaticSecret>().map_err(|_| {
                at(
                    k.span(),
                    "invalid private_key: expected a base64 X25519 private key (44 characters, as `upmt genkey` prints)".into(),
                )
            })?,
            (None, Some(f)) => source.private_key_file(f.span(), f.get_ref())?,
            (Some(_), Some(f)) => {
                return Err(at(
                    f.span(),
                    "private_key and private_key_file are both set: expected exactly one".into(),
                ));
            }
            (None, None) => {
                return Err(at(
                    0..0,
                    "missing private key: expected `private_key = \"base64...\"` or `private_key_file = \"path\"`".into(),
                ));
            }
        };

        let tun = match raw.tun {
            Some(t) => {
                ifname::check(t.get_ref())
                    .map_err(|why| at(t.span(), format!("invalid tun: {why}")))?;
                t.into_inner()
            }
            None => DEFAULT_TUN.to_owned(),
        };

        let platform = match &raw.platform {
            Some(p) => match p.get_ref().as_str() {
                "linux" => Platform::Linux,
                "android" => Platform::Android,
                other => {
                    return Err(at(
                        p.span(),
                        format!(
                            "invalid platform {}: expected \"linux\" or \"android\" (or no platform: android when {} exists)",
                            shown(other),
                            build_prop.display()
                        ),
                    ));
                }
            },
            None if build_prop.exists() => Platform::Android,
            None => Platform::Linux,
        };
        let android = platform == Platform::Android;

        let cipher = match &raw.cipher {
            None => CipherSetting::Auto,
            Some(c) => CipherSetting::parse(c.get_ref()).ok_or_else(|| {
                at(
                    c.span(),
                    format!(
                        "invalid cipher {}: expected {}",
                        shown(c.get_ref()),
                        CipherSetting::EXPECTED
                    ),
                )
            })?,
        };
        let dns = match &raw.dns {
            Some(d) => match d.get_ref().as_str() {
                "tunnel" => DnsRoute::Tunnel,
                "local" => DnsRoute::Local,
                other => {
                    return Err(at(
                        d.span(),
                        format!(
                            "invalid dns {}: expected \"tunnel\" or \"local\"",
                            shown(other)
                        ),
                    ));
                }
            },
            None => DnsRoute::Tunnel,
        };

        let fwmark = match raw.fwmark {
            Some(m) if *m.get_ref() == 0 => {
                return Err(at(
                    m.span(),
                    "fwmark must not be 0: the rules exempt marked sockets, and 0 is every unmarked socket".into(),
                ));
            }
            Some(m) if android && m.get_ref() & ANDROID_FWMARK == 0 => {
                return Err(at(
                    m.span(),
                    format!(
                        "fwmark {:#x} lacks netd's protectedFromVpn bit {ANDROID_FWMARK:#x}: on android the tunnel sockets must carry it",
                        m.get_ref()
                    ),
                ));
            }
            Some(m) => m.into_inner(),
            None if android => ANDROID_FWMARK,
            None => DEFAULT_FWMARK,
        };
        let table = match raw.table {
            // 0 is "unspecified", 253..=255 are default/main/local, 2^32-1 is reserved.
            Some(t) if matches!(*t.get_ref(), 0 | 253..=255 | u32::MAX) => {
                return Err(at(
                    t.span(),
                    format!(
                        "table {} is reserved: expected a table id other than 0, 253 (default), 254 (main), 255 (local)",
                        t.get_ref()
                    ),
                ));
            }
            Some(t) if android && (*t.get_ref() >= 1000 || (97..=99).contains(t.get_ref())) => {
                return Err(at(
                    t.span(),
                    format!(
                        "table {} belongs to netd on android: expected a table below 1000 other than 97-99",
                        t.get_ref()
                    ),
                ));
            }
            Some(t) => t.into_inner(),
            None if android => ANDROID_TABLE,
            None => DEFAULT_TABLE,
        };
        let rule_priority = match raw.rule_priority {
            // The band ends 998 later, before the kernel's main rule.
            Some(p) if android && !(1..=32765 - ANDROID_BAND_END).contains(p.get_ref()) => {
                return Err(at(
                    p.span(),
                    format!(
                        "rule_priority must be between 1 and {} on android (the band runs to rule_priority + {ANDROID_BAND_END})",
                        32765 - ANDROID_BAND_END
                    ),
                ));
            }
            // P - 3 (bypass), P - 2 (DNS) and P - 1 (local subnets) must exist and must not be
            // 0 (the kernel's `lookup local` rule).
            Some(p) if !android && (*p.get_ref() < 4 || *p.get_ref() > 32765) => {
                return Err(at(
                    p.span(),
                    "rule_priority must be between 4 and 32765 (it and the bypass, DNS and local-subnet rules at rule_priority - 3 to - 1 must run before the main table's rule)".into(),
                ));
            }
            Some(p) => p.into_inner(),
            None if android => ANDROID_RULE_PRIORITY,
            None => DEFAULT_RULE_PRIORITY,
        };

        let policy = match &raw.policy {
            Some(p) if p.get_ref().trim().is_empty() => {
                return Err(at(
                    p.span(),
                    "empty policy path: expected a file name, e.g. \"policy.toml\"".into(),
                ));
            }
            Some(p) => Some(path.parent().unwrap_or(Path::new(".")).join(p.get_ref())),
            None => None,
        };

        let control_socket = match &raw.control_socket {
            Some(p) if p.get_ref().trim().is_empty() => {
                return Err(at(
                    p.span(),
                    "empty control_socket: expected a path, e.g. \"/run/upmt/mh.sock\"".into(),
                ));
            }
            Some(p) => path.parent().unwrap_or(Path::new(".")).join(p.get_ref()),
            // Android has no /run; /data/adb/upmt holds everything of the daemon there.
            None if android || Path::new(ANDROID_DIR).is_dir() => PathBuf::from(ANDROID_SOCKET),
            None => PathBuf::from(crate::control::DEFAULT_SOCKET),
        };
        let control_group = match &raw.control_group {
            Some(g) if g.get_ref().trim().is_empty() => {
                return Err(at(
                    g.span(),
                    "empty control_group: expected a group name or a numeric gid, e.g. \"upmt\" or \"3003\"".into(),
                ));
            }
            Some(g) => Some(g.get_ref().clone()),
            None => None,
        };

        let metrics = match &raw.metrics {
            None => None,
            Some(m) => Some(m.get_ref().parse().map_err(|_| {
                at(
                    m.span(),
                    format!(
                        "invalid metrics {}: expected a socket address, e.g. \"127.0.0.1:9101\"",
                        upmt_sys::config::shown(m.get_ref())
                    ),
                )
            })?),
        };

        // Both are the system's own files, so relative paths make no sense for them.
        let system_path = |p: &Option<Spanned<String>>, name: &str, default: &str| match p {
            Some(p) if !Path::new(p.get_ref()).is_absolute() => Err(at(
                p.span(),
                format!(
                    "invalid {name} {}: expected an absolute path, e.g. \"{default}\"",
                    shown(p.get_ref())
                ),
            )),
            Some(p) => Ok(PathBuf::from(p.get_ref())),
            None => Ok(PathBuf::from(default)),
        };
        let usage_file = match &raw.usage_file {
            Some(p) if p.get_ref().trim().is_empty() => {
                return Err(at(
                    p.span(),
                    format!("empty usage_file: expected a path, e.g. \"{LINUX_USAGE_FILE}\""),
                ));
            }
            Some(p) => path.parent().unwrap_or(Path::new(".")).join(p.get_ref()),
            None if android || Path::new(ANDROID_DIR).is_dir() => PathBuf::from(ANDROID_USAGE_FILE),
            None => PathBuf::from(LINUX_USAGE_FILE),
        };
        let proc_root = system_path(&raw.proc_root, "proc_root", DEFAULT_PROC_ROOT)?;
        let packages_list = system_path(&raw.packages_list, "packages_list", PACKAGES_LIST)?;

        if raw.uplink.is_empty() {
            return Err(at(
                0..0,
                "no uplink: expected at least one [[uplink]] with name and interface".into(),
            ));
        }
        // The forwarding table keeps per-uplink state for MAX_UPLINKS uplinks only; flows of
        // an uplink beyond them could never be placed and would be held forever.
        if let Some(extra) = raw.uplink.get(MAX_UPLINKS) {
            return Err(at(
                extra.name.span(),
                format!(
                    "too many uplinks: the data path supports at most {MAX_UPLINKS}, this is uplink {}",
                    MAX_UPLINKS + 1
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut interfaces = HashSet::new();
        let mut uplinks = Vec::with_capacity(raw.uplink.len());
        for (i, u) in raw.uplink.into_iter().enumerate() {
            let name = u.name.get_ref();
            if name.is_empty()
                || name.len() > MAX_UPLINK_NAME
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(at(
                    u.name.span(),
                    format!(
                        "invalid uplink name {}: expected at most {MAX_UPLINK_NAME} letters, digits, '-', '_' or '.'",
                        shown(name)
                    ),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(at(
                    u.name.span(),
                    format!("duplicate uplink name {}", shown(name)),
                ));
            }
            let interface = u.interface.get_ref();
            // A trailing '*' (`rmnet_data*`) names the interfaces with that prefix; the daemon
            // picks among them (see `upmt_mh_core::candidates`).
            ifname::check_pattern(interface)
                .map_err(|why| at(u.interface.span(), format!("invalid interface: {why}")))?;
            let pattern = Pattern::parse(interface).map_err(|why| {
                at(
                    u.interface.span(),
                    format!("invalid interface {}: {why}", shown(interface)),
                )
            })?;
            if pattern.matches(&tun) {
                return Err(at(
                    u.interface.span(),
                    format!(
                        "uplink interface {} {} the TUN itself",
                        shown(interface),
                        if pattern.is_exact() { "is" } else { "matches" }
                    ),
                ));
            }
            if !interfaces.insert(interface.clone()) {
                return Err(at(
                    u.interface.span(),
                    format!("interface {} is used by two uplinks", shown(interface)),
                ));
            }
            let sleep = match &u.idle {
                None => false,
                Some(idle) => match idle.get_ref().as_str() {
                    "keepalive" => false,
                    "sleep" => true,
                    other => {
                        return Err(at(
                            idle.span(),
                            format!(
                                "invalid idle {}: expected \"keepalive\" (the default) or \"sleep\"",
                                shown(other)
                            ),
                        ));
                    }
                },
            };
            let cap = uplink_cap(u.cap.as_ref(), u.cap_reset_day.as_ref())
                .map_err(|(span, message)| at(span, message))?;
            uplinks.push(UplinkConfig {
                name: u.name.into_inner(),
                interface: u.interface.into_inner(),
                // Cannot fail: the length was checked above.
                path_index: u8::try_from(i).unwrap_or(u8::MAX),
                metered: u.metered,
                sleep,
                cap,
            });
        }

        let mut probe = ProbeConfig::default();
        if let Some(p) = raw.probe {
            // Zero would make the core probe in a busy loop or give up on every path at once;
            // beyond an hour a path would never be probed or declared down in practice, and a
            // huge value overflows the core's `Instant + Duration`.
            let positive = |v: Spanned<u64>, name: &str, unit: fn(u64) -> Duration| {
                let value = *v.get_ref();
                let max = MAX_PROBE_TIME.as_nanos() / unit(1).as_nanos();
                if value == 0 {
                    Err(at(
                        v.span(),
                        format!("invalid probe.{name}: must be at least 1"),
                    ))
                } else if u128::from(value) > max {
                    Err(at(
                        v.span(),
                        format!("invalid probe.{name}: must be at most {max} (one hour)"),
                    ))
                } else {
                    Ok(unit(value))
                }
            };
            if let Some(v) = p.active_interval_ms {
                probe.active_interval = positive(v, "active_interval_ms", Duration::from_millis)?;
            }
            // Learning is the default: the disposable test sockets never risk the binding.
            let mut auto = true;
            if let Some(v) = p.idle_keepalive_s {
                let span = v.span();
                match v.into_inner() {
                    RawKeepalive::Seconds(n) => {
                        auto = false;
                        probe.idle_keepalive = positive(
                            Spanned::new(span.clone(), n),
                            "idle_keepalive_s",
                            Duration::from_secs,
                        )?;
                    }
                    RawKeepalive::Word(w) if w == "auto" => auto = true,
                    RawKeepalive::Word(w) => {
                        return Err(at(
                            span,
                            format!(
                                "invalid probe.idle_keepalive_s: expected seconds or \"auto\", found \"{w}\""
                            ),
                        ));
                    }
                }
            }
            match p.idle_keepalive_max_s {
                Some(v) if !auto => {
                    return Err(at(
                        v.span(),
                        "invalid probe.idle_keepalive_max_s: only with idle_keepalive_s = \"auto\""
                            .to_owned(),
                    ));
                }
                Some(v) => {
                    probe.idle_keepalive_max =
                        Some(positive(v, "idle_keepalive_max_s", Duration::from_secs)?);
                }
                None if auto => probe.idle_keepalive_max = Some(DEFAULT_KEEPALIVE_MAX),
                None => probe.idle_keepalive_max = None,
            }
            if let Some(v) = p.path_timeout_ms {
                probe.path_timeout = positive(v, "path_timeout_ms", Duration::from_millis)?;
            }
            if let Some(v) = p.hold_down_ms {
                probe.hold_down = positive(v, "hold_down_ms", Duration::from_millis)?;
            }
            if let Some(v) = p.failover_after_ms {
                probe.failover_after = positive(v, "failover_after_ms", Duration::from_millis)?;
            }
        }

        Ok(Config {
            anchor,
            anchors,
            anchor_public_key,
            fallback_anchors,
            private_key,
            tun,
            fwmark,
            table,
            rule_priority,
            platform,
            dns,
            uplinks,
            policy,
            control_socket,
            control_group,
            metrics,
            probe,
            proc_root,
            packages_list,
            cipher,
            offload: OffloadSetting::from_bool(raw.offload.unwrap_or(true)),
            usage_file,
        })
    }

    /// The uplink names in path order, as the policy refers to them.
    pub fn uplink_names(&self) -> Vec<&str> {
        self.uplinks.iter().map(|u| u.name.as_str()).collect()
    }

    /// Reads and validates the policy file, or the built-in "tunnel everything" policy when
    /// the config names none.
    pub fn load_policy(&self) -> Result<upmt_policy::Policy, PolicyLoadError> {
        let names = self.uplink_names();
        let Some(path) = &self.policy else {
            return Ok(upmt_policy::Policy::tunnel_everything(&names));
        };
        let text = upmt_sys::file::read_bounded(path).map_err(|source| PolicyLoadError::Read {
            path: path.clone(),
            source,
        })?;
        upmt_policy::Policy::parse(&text, &path.display().to_string(), &names)
            .map_err(PolicyLoadError::Invalid)
    }
}

/// What went wrong loading the policy file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// The file could not be read.
    #[error("cannot read policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy (the message names file, line and column).
    #[error("invalid policy")]
    Invalid(#[source] upmt_policy::PolicyError),
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    fn good() -> String {
        format!(
            "anchor = \"203.0.113.2:51900\"\nanchor_public_key = \"{KEY_A}\"\nprivate_key = \"{KEY_B}\"\n\
             tun = \"upmt0\"\n[[uplink]]\nname = \"wifi\"\ninterface = \"wlan0\"\n\
             [[uplink]]\nname = \"cell\"\ninterface = \"rmnet_data0\"\n"
        )
    }

    #[test]
    fn uplinks_are_unmetered_unless_marked_metered() {
        let c = parse(&format!("{}metered = true\n", good())).unwrap();
        let metered: Vec<bool> = c.uplinks.iter().map(|u| u.metered).collect();
        assert_eq!(metered, vec![false, true]);
        let (line, _, message) = invalid(&format!("{}metered = \"yes\"\n", good()));
        assert_eq!(line, 11);
        assert!(message.contains("boolean"), "{message}");
    }

    #[test]
    fn the_app_lookup_reads_proc_and_androids_packages_list_unless_absolute_paths_are_given() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.proc_root, Path::new("/proc"));
        assert_eq!(c.packages_list, Path::new("/data/system/packages.list"));
        let c = parse(&format!(
            "proc_root = \"/tmp/p\"\npackages_list = \"/tmp/packages.list\"\n{}",
            good()
        ))
        .unwrap();
        assert_eq!(c.proc_root, Path::new("/tmp/p"));
        assert_eq!(c.packages_list, Path::new("/tmp/packages.list"));
        let (line, _, message) = invalid(&format!("packages_list = \"packages.list\"\n{}", good()));
        assert_eq!(line, 1);
        assert!(message.contains("absolute path"), "{message}");
        assert!(parse(&format!("proc_root = \"\"\n{}", good())).is_err());
    }

    #[test]
    fn the_control_socket_defaults_to_run_upmt_and_a_relative_one_sits_next_to_the_config() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.control_socket, Path::new("/run/upmt/mh.sock"));
        assert_eq!(c.control_group, None);
        let c = parse(&format!(
            "control_socket = \"mh.sock\"\ncontrol_group = \"upmt\"\n{}",
            good()
        ))
        .unwrap();
        assert_eq!(c.control_socket, Path::new("/etc/upmt/mh.sock"));
        assert_eq!(c.control_group.as_deref(), Some("upmt"));
        assert!(parse(&format!("control_socket = \"\"\n{}", good())).is_err());
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/upmt/mh.toml"))
    }

    #[test]
    fn a_config_that_is_not_a_regular_file_is_refused_without_reading_it() {
        for path in ["/dev/zero", "/tmp"] {
            match Config::load(Path::new(path)) {
                Err(ConfigError::Read { path: p, source }) => {
                    assert_eq!(p, Path::new(path));
                    assert_eq!(source.to_string(), "not a regular file");
                }
                other => panic!("{path}: expected a Read error, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_config_over_16_mib_is_refused_by_size() {
        let path =
            std::env::temp_dir().join(format!("upmt-mh-cfg-huge-{}.toml", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        let result = Config::load(&path);
        let _ = std::fs::remove_file(&path);
        match result {
            Err(ConfigError::Read { source, .. }) => {
                assert!(source.to_string().contains("larger than"), "{source}");
            }
            other => panic!("expected a Read error, got {other:?}"),
        }
    }

    #[test]
    fn a_policy_that_is_not_a_regular_file_is_refused_without_reading_it() {
        let c = parse(&format!("policy = \"/dev/zero\"\n{}", good())).unwrap();
        match c.load_policy() {
            Err(PolicyLoadError::Read { path, source }) => {
                assert_eq!(path, Path::new("/dev/zero"));
                assert_eq!(source.to_string(), "not a regular file");
            }
            other => panic!("expected a Read error, got {other:?}"),
        }
    }

    #[test]
    fn a_huge_value_is_echoed_cut_to_64_characters() {
        let huge = "x".repeat(1 << 20);
        for text in [
            good().replace("wlan0", &huge),
            good().replace("\"wifi\"", &format!("\"{huge}\"")),
            good().replace("203.0.113.2:51900", &huge),
            good()
                .replace("table = ", "")
                .replace("tun = ", &format!("table = \"{huge}\"\ntun = ")),
        ] {
            let message = parse(&text).unwrap_err().to_string();
            assert!(
                message.len() < 400,
                "{} bytes: {:.400}",
                message.len(),
                message
            );
        }
        let (_, _, message) = invalid(&good().replace("wlan0", &huge));
        assert!(
            message.contains(&format!("\"{}\"…", "x".repeat(64))),
            "{message}"
        );
    }

    #[test]
    fn an_uplink_name_over_64_bytes_is_refused() {
        let (line, _, message) =
            invalid(&good().replace("\"wifi\"", &format!("\"{}\"", "w".repeat(65))));
        assert_eq!(line, 6);
        assert!(message.contains("at most 64"), "{message}");
        assert!(parse(&good().replace("\"wifi\"", &format!("\"{}\"", "w".repeat(64)))).is_ok());
    }

    /// The error's (line, column, message), or a panic naming what parsed instead.
    fn invalid(text: &str) -> (usize, usize, String) {
        match parse(text) {
            Err(ConfigError::Invalid {
                line,
                column,
                message,
                path,
            }) => {
                assert_eq!(path, Path::new("/etc/upmt/mh.toml"));
                (line, column, message)
            }
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn a_full_config_parses_with_paths_in_file_order_and_defaults() {
        let c = parse(&good()).expect("valid config");
        assert_eq!(c.anchor, "203.0.113.2:51900".parse().unwrap());
        assert_eq!(c.anchor_public_key.as_bytes()[0..3], [0, 1, 2]);
        assert_eq!(c.private_key.as_bytes()[0..3], [32, 33, 34]);
        assert_eq!(c.tun, "upmt0");
        assert_eq!(c.fwmark, DEFAULT_FWMARK);
        assert_eq!(c.table, DEFAULT_TABLE);
        assert_eq!(c.rule_priority, DEFAULT_RULE_PRIORITY);
        assert_eq!(c.uplinks.len(), 2);
        assert_eq!(
            (
                c.uplinks[0].name.as_str(),
                c.uplinks[0].interface.as_str(),
                c.uplinks[0].path_index
            ),
            ("wifi", "wlan0", 0)
        );
        assert_eq!(
            (
                c.uplinks[1].name.as_str(),
                c.uplinks[1].interface.as_str(),
                c.uplinks[1].path_index
            ),
            ("cell", "rmnet_data0", 1)
        );
    }

    #[test]
    fn a_relative_policy_path_is_resolved_next_to_the_config_and_loaded() {
        let dir = std::env::temp_dir().join(format!("upmt-cfg-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("mh.toml");
        let text = format!("policy = \"policy.toml\"\n{}", good());
        let c = Config::parse(&text, &cfg).expect("valid config");
        assert_eq!(c.policy.as_deref(), Some(dir.join("policy.toml").as_path()));
        assert!(matches!(c.load_policy(), Err(PolicyLoadError::Read { .. })));
        std::fs::write(
            dir.join("policy.toml"),
            "version = 1\n[[rule]]\napp = \"x\"\nuplinks = [\"lte\"]\n",
        )
        .unwrap();
        let e = c.load_policy().unwrap_err();
        let shown = upmt_sys::display_chain(&e);
        assert!(shown.contains("policy.toml:4:"), "{shown}");
        assert!(shown.contains("unknown uplink \"lte\""), "{shown}");
        std::fs::write(dir.join("policy.toml"), "version = 1\n").unwrap();
        assert!(c.load_policy().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_policy_everything_is_tunnelled_over_the_first_uplink_up() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.policy, None);
        let p = c.load_policy().unwrap();
        let up = upmt_policy::UplinkStatus {
            up: true,
            ..upmt_policy::UplinkStatus::default()
        };
        let d = p.decide(&upmt_policy::AppIdentity::default(), &[up, up]);
        assert_eq!(d.verdict, upmt_policy::Verdict::Tunnel(0));
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let text = include_str!("../examples/upmt-mh.toml");
        let c = parse(text).expect("the example must parse");
        assert_eq!(c.fwmark, 0x5550);
        assert_eq!(c.table, 5550);
        assert_eq!(c.uplinks.len(), 2);
        // Copied onto a phone as it is, it takes android's defaults.
        let c = parse_with_build_prop(text, true).expect("the example must parse on android");
        assert_eq!(
            (c.platform, c.fwmark, c.table),
            (Platform::Android, 0x20000, 555)
        );
    }

    #[test]
    fn the_magisk_modules_example_config_is_valid_once_the_anchor_key_is_filled_in() {
        let text = include_str!("../../scripts/magisk/mh.toml.example")
            .replace("REPLACE-WITH-THE-ANCHORS-PUBLIC-KEY-44-CHARS=", KEY_A)
            .replace(
                "private_key_file = \"mh.key\"",
                &format!("private_key = \"{KEY_B}\""),
            );
        let c = Config::parse(&text, Path::new(ANDROID_CONFIG)).expect("the example must parse");
        assert_eq!(c.platform, Platform::Android);
        assert_eq!(c.control_socket, Path::new(ANDROID_SOCKET));
        assert_eq!(c.anchors.len(), 2);
        assert_eq!(c.uplinks[1].interface, "rmnet_data*");
        // As shipped, the placeholder key is refused at its line.
        let raw = include_str!("../../scripts/magisk/mh.toml.example");
        match Config::parse(raw, Path::new(ANDROID_CONFIG)) {
            Err(ConfigError::Invalid { message, .. }) => {
                assert!(message.contains("anchor_public_key"), "{message}")
            }
            other => panic!("expected the placeholder key refused, got {other:?}"),
        }
    }

    #[test]
    fn ipv6_anchor_and_explicit_mark_table_priority_are_honoured() {
        let text = good().replace("203.0.113.2:51900", "[2001:db8::2]:51900") + "";
        let text = text.replace(
            "tun = \"upmt0\"\n",
            "tun = \"t1\"\nfwmark = 0x10\ntable = 100\nrule_priority = 900\n",
        );
        let c = parse(&text).expect("valid");
        assert!(c.anchor.is_ipv6());
        assert_eq!(
            (c.tun.as_str(), c.fwmark, c.table, c.rule_priority),
            ("t1", 0x10, 100, 900)
        );
    }

    #[test]
    fn tun_defaults_to_upmt0_when_absent() {
        let c = parse(&good().replace("tun = \"upmt0\"\n", "")).expect("valid");
        assert_eq!(c.tun, "upmt0");
    }

    #[test]
    fn toml_syntax_error_names_line_and_column() {
        let (line, column, message) = invalid(&good().replace("tun = \"upmt0\"", "tun = upmt0"));
        assert_eq!((line, column), (4, 7));
        assert!(!message.is_empty());
    }

    #[test]
    fn unknown_field_is_refused_with_its_position() {
        let text = good().replace("tun = ", "tunn = ");
        let (line, column, message) = invalid(&text);
        assert_eq!((line, column), (4, 1));
        assert!(message.contains("tunn"), "{message}");
    }

    #[test]
    fn the_probe_table_defaults_to_the_cores_timings_and_overrides_each_one() {
        assert_eq!(parse(&good()).unwrap().probe, ProbeConfig::default());
        let c = parse(&format!(
            "{}[probe]\nactive_interval_ms = 50\nidle_keepalive_s = 15\n\
             path_timeout_ms = 300\nhold_down_ms = 1000\n",
            good()
        ))
        .unwrap();
        assert_eq!(
            c.probe,
            ProbeConfig {
                active_interval: Duration::from_millis(50),
                idle_keepalive: Duration::from_secs(15),
                idle_keepalive_max: None,
                path_timeout: Duration::from_millis(300),
                hold_down: Duration::from_secs(1),
                ..ProbeConfig::default()
            }
        );
        let c = parse(&format!("{}[probe]\nhold_down_ms = 500\n", good())).unwrap();
        assert_eq!(c.probe.hold_down, Duration::from_millis(500));
        assert_eq!(c.probe.path_timeout, ProbeConfig::default().path_timeout);
    }

    #[test]
    fn an_auto_keepalive_learns_up_to_its_maximum_from_the_default_start() {
        let c = parse(&format!("{}[probe]\nidle_keepalive_s = \"auto\"\n", good())).unwrap();
        assert_eq!(c.probe.idle_keepalive, Duration::from_secs(25));
        assert_eq!(c.probe.idle_keepalive_max, Some(DEFAULT_KEEPALIVE_MAX));
        let c = parse(&format!(
            "{}[probe]\nidle_keepalive_s = \"auto\"\nidle_keepalive_max_s = 120\n",
            good()
        ))
        .unwrap();
        assert_eq!(c.probe.idle_keepalive_max, Some(Duration::from_secs(120)));
        let (_, _, message) = invalid(&format!(
            "{}[probe]\nidle_keepalive_s = \"often\"\n",
            good()
        ));
        assert!(message.contains("\"auto\""), "{message}");
        let (line, _, message) = invalid(&format!(
            "{}[probe]\nidle_keepalive_s = 25\nidle_keepalive_max_s = 120\n",
            good()
        ));
        assert_eq!(line, 13);
        assert!(message.contains("only with"), "{message}");
    }

    #[test]
    fn the_keepalive_learns_by_default_and_an_explicit_number_stays_fixed() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.probe.idle_keepalive, Duration::from_secs(25));
        assert_eq!(c.probe.idle_keepalive_max, Some(DEFAULT_KEEPALIVE_MAX));
        let c = parse(&format!("{}[probe]\nidle_keepalive_max_s = 200\n", good())).unwrap();
        assert_eq!(c.probe.idle_keepalive_max, Some(Duration::from_secs(200)));
        let c = parse(&format!("{}[probe]\nidle_keepalive_s = 25\n", good())).unwrap();
        assert_eq!(c.probe.idle_keepalive_max, None);
    }

    #[test]
    fn a_probe_timing_over_an_hour_is_refused_at_its_value_and_an_hour_is_taken() {
        for (key, over, hour) in [
            ("active_interval_ms", "3600001", "3600000"),
            ("idle_keepalive_s", "3601", "3600"),
            ("path_timeout_ms", "3600001", "3600000"),
            ("hold_down_ms", "18446744073709551615", "3600000"),
        ] {
            let (line, column, message) = invalid(&format!("{}[probe]\n{key} = {over}\n", good()));
            assert_eq!((line, column), (12, key.len() + 4), "{key}");
            assert!(message.contains(&format!("probe.{key}")), "{message}");
            assert!(message.contains("at most"), "{message}");
            let c = parse(&format!("{}[probe]\n{key} = {hour}\n", good())).expect(key);
            let longest = [
                c.probe.active_interval,
                c.probe.idle_keepalive,
                c.probe.path_timeout,
                c.probe.hold_down,
            ];
            assert!(longest.contains(&MAX_PROBE_TIME), "{key}: {longest:?}");
        }
    }

    #[test]
    fn more_uplinks_than_the_paft_supports_are_refused_at_the_first_extra_one() {
        let mut text = good();
        for i in 2..=MAX_UPLINKS {
            text.push_str(&format!(
                "[[uplink]]\nname = \"u{i}\"\ninterface = \"eth{i}\"\n"
            ));
        }
        // Uplinks 1 and 2 take lines 5 to 10; each further one three lines.
        let extra_name_line = 11 + 3 * (MAX_UPLINKS - 2) + 1;
        let (line, column, message) = invalid(&text);
        assert_eq!((line, column), (extra_name_line, 8));
        assert!(message.contains("at most 8"), "{message}");
        let fits: String = text
            .lines()
            .take(extra_name_line - 2)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(&fits).expect("8 uplinks").uplinks.len(), MAX_UPLINKS);
    }

    #[test]
    fn the_config_debug_prints_no_private_key() {
        let c = parse(&good()).unwrap();
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains(KEY_B), "{shown}");
        assert!(!shown.contains("32, 33, 34"), "{shown}");
        assert!(!shown.contains("32,\n"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn a_private_key_file_that_is_dev_zero_or_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("upmt-mh-config-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mh.key"), format!("{KEY_B}\n")).unwrap();
        std::fs::set_permissions(dir.join("mh.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let with = |file: &str| {
            good().replace(
                &format!("private_key = \"{KEY_B}\""),
                &format!("private_key_file = \"{file}\""),
            )
        };
        let open = Config::parse(&with("mh.key"), &dir.join("mh.toml"));
        let zero = Config::parse(&with("/dev/zero"), &dir.join("mh.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
        let open = upmt_sys::display_chain(&open.unwrap_err());
        assert!(
            open.starts_with(&format!("{}:3:20: ", dir.join("mh.toml").display())),
            "{open}"
        );
        assert!(
            open.contains(&format!("chmod 600 {}", dir.join("mh.key").display())),
            "{open}"
        );
        let zero = upmt_sys::display_chain(&zero.unwrap_err());
        assert!(zero.contains("not a regular file"), "{zero}");
    }

    #[test]
    fn a_zero_probe_timing_is_refused_at_its_value() {
        let (line, column, message) = invalid(&format!("{}[probe]\npath_timeout_ms = 0\n", good()));
        assert_eq!((line, column), (12, 19));
        assert!(message.contains("probe.path_timeout_ms"), "{message}");
    }

    #[test]
    fn an_unknown_or_mistyped_probe_key_is_refused_with_its_line() {
        let (line, _, message) = invalid(&format!("{}[probe]\ninterval_ms = 100\n", good()));
        assert_eq!(line, 12);
        assert!(message.contains("interval_ms"), "{message}");
        let (line, _, _) = invalid(&format!("{}[probe]\nhold_down_ms = \"3s\"\n", good()));
        assert_eq!(line, 12);
        let (line, _, _) = invalid(&format!("{}[probe]\nhold_down_ms = -1\n", good()));
        assert_eq!(line, 12);
    }

    #[test]
    fn an_uplink_cap_is_read_per_day_or_per_month_from_its_reset_day() {
        use upmt_mh_core::usage::{Cap, Period};
        let text = good().replace(
            "interface = \"rmnet_data0\"\n",
            "interface = \"rmnet_data0\"\ncap = \"2 GiB per month\"\ncap_reset_day = 15\n",
        );
        let c = parse(&text).expect("valid");
        assert_eq!(c.uplinks[0].cap, None);
        assert_eq!(
            c.uplinks[1].cap,
            Some(Cap {
                limit: 2 << 30,
                period: Period::Month { reset_day: 15 }
            })
        );
        let daily = good().replace(
            "interface = \"wlan0\"\n",
            "interface = \"wlan0\"\ncap = \"500 MB per day\"\n",
        );
        assert_eq!(
            parse(&daily).expect("valid").uplinks[0].cap,
            Some(Cap {
                limit: 500_000_000,
                period: Period::Day
            })
        );
    }

    #[test]
    fn a_bad_cap_or_reset_day_is_refused_at_its_value() {
        let with = |extra: &str| {
            good().replace(
                "interface = \"rmnet_data0\"\n",
                &format!("interface = \"rmnet_data0\"\n{extra}"),
            )
        };
        let (line, column, message) = invalid(&with("cap = \"2 GB a month\"\n"));
        assert_eq!((line, column), (11, 7), "{message}");
        assert!(message.contains("per month"), "{message}");
        let (line, column, message) =
            invalid(&with("cap = \"2 GB per month\"\ncap_reset_day = 31\n"));
        assert_eq!((line, column), (12, 17), "{message}");
        assert!(message.contains("from 1 to 28"), "{message}");
        let (line, _, message) = invalid(&with("cap = \"2 GB per day\"\ncap_reset_day = 3\n"));
        assert_eq!(line, 12, "{message}");
        let (line, _, message) = invalid(&with("cap_reset_day = 3\n"));
        assert_eq!(line, 11, "{message}");
        assert!(message.contains("without a cap"), "{message}");
    }

    #[test]
    fn the_usage_file_defaults_by_platform_and_resolves_against_the_config() {
        assert_eq!(
            parse_with_build_prop(&good(), false)
                .expect("valid")
                .usage_file,
            Path::new(LINUX_USAGE_FILE)
        );
        assert_eq!(
            parse_with_build_prop(&good(), true)
                .expect("valid")
                .usage_file,
            Path::new(ANDROID_USAGE_FILE)
        );
        let own = format!("usage_file = \"state/usage.json\"\n{}", good());
        assert_eq!(
            parse(&own).expect("valid").usage_file,
            Path::new("/etc/upmt/state/usage.json")
        );
    }

    #[test]
    fn unknown_field_in_an_uplink_is_refused() {
        let (line, _, message) =
            invalid(&good().replace("interface = \"wlan0\"", "iface = \"wlan0\""));
        assert_eq!(line, 7);
        assert!(message.contains("iface"), "{message}");
    }

    #[test]
    fn missing_anchor_is_refused() {
        let (_, _, message) = invalid(&good().replace("anchor = \"203.0.113.2:51900\"\n", ""));
        assert!(message.contains("anchor"), "{message}");
    }

    #[test]
    fn anchor_without_port_is_refused_at_its_value() {
        let (line, column, message) = invalid(&good().replace("203.0.113.2:51900", "203.0.113.2"));
        assert_eq!((line, column), (1, 10));
        assert!(
            message.contains("expected IPv4:port or [IPv6]:port"),
            "{message}"
        );
    }

    #[test]
    fn anchor_port_zero_is_refused() {
        let (_, _, message) = invalid(&good().replace(":51900", ":0"));
        assert!(message.contains("port"), "{message}");
    }

    #[test]
    fn wrong_type_for_fwmark_is_refused() {
        let (line, _, message) = invalid(&good().replace("tun = \"upmt0\"", "fwmark = \"x\""));
        assert_eq!(line, 4);
        assert!(
            message.contains("u32") || message.contains("integer"),
            "{message}"
        );
    }

    #[test]
    fn bad_anchor_public_key_is_refused() {
        let (line, _, message) = invalid(&good().replace(KEY_A, "not-base64"));
        assert_eq!(line, 2);
        assert!(message.contains("anchor_public_key"), "{message}");
    }

    #[test]
    fn short_private_key_is_refused() {
        let (line, _, message) = invalid(&good().replace(KEY_B, "AAECAw=="));
        assert_eq!(line, 3);
        assert!(message.contains("private_key"), "{message}");
    }

    #[test]
    fn missing_private_key_is_refused() {
        let (_, _, message) = invalid(&good().replace(&format!("private_key = \"{KEY_B}\"\n"), ""));
        assert!(message.contains("private_key_file"), "{message}");
    }

    #[test]
    fn both_private_key_and_key_file_are_refused() {
        let text = good().replace("tun = ", "private_key_file = \"k\"\ntun = ");
        let (line, _, message) = invalid(&text);
        assert_eq!(line, 4);
        assert!(message.contains("exactly one"), "{message}");
    }

    #[test]
    fn private_key_file_relative_to_the_config_is_read() {
        let dir = std::env::temp_dir().join(format!("upmt-mh-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mh.key"), format!("{KEY_B}\n")).unwrap();
        // A key file only its owner can open, as the daemon demands.
        std::fs::set_permissions(
            dir.join("mh.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let text = good().replace(
            &format!("private_key = \"{KEY_B}\""),
            "private_key_file = \"mh.key\"",
        );
        let result = Config::parse(&text, &dir.join("mh.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(result.expect("valid").private_key.as_bytes()[0], 32);
    }

    #[test]
    fn missing_private_key_file_is_an_error_naming_it() {
        let text = good().replace(
            &format!("private_key = \"{KEY_B}\""),
            "private_key_file = \"/nonexistent/upmt.key\"",
        );
        match parse(&text) {
            Err(e @ ConfigError::KeyFile { .. }) => {
                assert!(e.to_string().contains("/nonexistent/upmt.key"), "{e}")
            }
            other => panic!("expected a KeyFile error, got {other:?}"),
        }
    }

    #[test]
    fn private_key_file_with_garbage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("upmt-mh-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mh.key"), "garbage").unwrap();
        // A key file only its owner can open, as the daemon demands.
        std::fs::set_permissions(
            dir.join("mh.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let text = good().replace(
            &format!("private_key = \"{KEY_B}\""),
            "private_key_file = \"mh.key\"",
        );
        let result = Config::parse(&text, &dir.join("mh.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(
                result,
                Err(ConfigError::KeyFile {
                    source: upmt_sys::keys::KeyFileError::Invalid,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn too_long_tun_name_is_refused() {
        let (line, _, message) =
            invalid(&good().replace("tun = \"upmt0\"", "tun = \"abcdefghijklmnop\""));
        assert_eq!(line, 4);
        assert!(message.contains("15 bytes"), "{message}");
    }

    #[test]
    fn tun_name_with_slash_is_refused() {
        let (_, _, message) = invalid(&good().replace("tun = \"upmt0\"", "tun = \"a/b\""));
        assert!(message.contains("not a valid interface name"), "{message}");
    }

    #[test]
    fn zero_fwmark_is_refused() {
        let (line, _, message) = invalid(&good().replace("tun = \"upmt0\"", "fwmark = 0"));
        assert_eq!(line, 4);
        assert!(message.contains("fwmark"), "{message}");
    }

    #[test]
    fn main_table_is_refused() {
        let (_, _, message) = invalid(&good().replace("tun = \"upmt0\"", "table = 254"));
        assert!(message.contains("reserved"), "{message}");
    }

    #[test]
    fn rule_priority_out_of_range_is_refused() {
        let (_, _, message) = invalid(&good().replace("tun = \"upmt0\"", "rule_priority = 1"));
        assert!(message.contains("rule_priority"), "{message}");
        // The bypass rules sit at rule_priority - 3, which must not be rule 0.
        let (_, _, message) = invalid(&good().replace("tun = \"upmt0\"", "rule_priority = 3"));
        assert!(message.contains("between 4 and"), "{message}");
    }

    fn parse_with_build_prop(text: &str, present: bool) -> Result<Config, ConfigError> {
        // Tests share the process when run as threads (the aarch64 run under qemu): one
        // directory per call, so one test's cleanup never removes another's build.prop.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("upmt-config-bp-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let prop = dir.join(if present { "build.prop" } else { "absent.prop" });
        if present {
            std::fs::write(&prop, "ro.build.version.sdk=34\n").expect("write");
        }
        let c = Config::parse_on(text, Path::new("/etc/upmt/mh.toml"), &prop);
        let _ = std::fs::remove_dir_all(&dir);
        c
    }

    #[test]
    fn the_platform_is_android_when_build_prop_exists_unless_the_config_says() {
        let c = parse_with_build_prop(&good(), true).expect("valid");
        assert_eq!(c.platform, Platform::Android);
        assert_eq!(
            (c.fwmark, c.table, c.rule_priority),
            (0x20000, 555, 14001),
            "android's defaults: netd's protected mark, a table below 1000, the free band"
        );
        let c = parse_with_build_prop(&good(), false).expect("valid");
        assert_eq!(c.platform, Platform::Linux);
        assert_eq!((c.fwmark, c.table, c.rule_priority), (0x5550, 5550, 5550));
        let linux = format!("platform = \"linux\"\n{}", good());
        assert_eq!(
            parse_with_build_prop(&linux, true).expect("valid").platform,
            Platform::Linux
        );
        let android = format!("platform = \"android\"\n{}", good());
        assert_eq!(
            parse_with_build_prop(&android, false)
                .expect("valid")
                .platform,
            Platform::Android
        );
        let (line, column, message) = invalid(&format!("platform = \"ios\"\n{}", good()));
        assert_eq!((line, column), (1, 12));
        assert!(message.contains("\"linux\" or \"android\""), "{message}");
    }

    #[test]
    fn offload_defaults_to_on_and_can_be_turned_off() {
        assert_eq!(
            parse_with_build_prop(&good(), false).unwrap().offload,
            OffloadSetting::On
        );
        let off = format!("offload = false\n{}", good());
        assert_eq!(
            parse_with_build_prop(&off, false).unwrap().offload,
            OffloadSetting::Off
        );
        let (line, _, _) = invalid(&format!("offload = \"no\"\n{}", good()));
        assert_eq!(line, 1, "a non-boolean is refused at its line");
    }

    #[test]
    fn the_cipher_defaults_to_auto_and_an_unknown_one_is_refused_at_its_value() {
        assert_eq!(
            parse_with_build_prop(&good(), false).unwrap().cipher,
            CipherSetting::Auto
        );
        let forced = format!("cipher = \"aes256gcm\"\n{}", good());
        assert_eq!(
            parse_with_build_prop(&forced, false).unwrap().cipher,
            CipherSetting::Aes256Gcm
        );
        let (line, column, message) = invalid(&format!("cipher = \"rc4\"\n{}", good()));
        assert_eq!((line, column), (1, 10));
        assert!(
            message.contains("\"auto\", \"chacha20\" or \"aes256gcm\""),
            "{message}"
        );
    }

    #[test]
    fn android_refuses_a_mark_netd_does_not_exempt_and_tables_netd_owns() {
        let android = |extra: &str| format!("platform = \"android\"\n{extra}\n{}", good());
        let (_, _, message) = invalid(&android("fwmark = 0x5550"));
        assert!(message.contains("protectedFromVpn"), "{message}");
        assert_eq!(
            parse(&android("fwmark = 0x20001")).expect("valid").fwmark,
            0x20001
        );
        for table in ["1002", "98"] {
            let (_, _, message) = invalid(&android(&format!("table = {table}")));
            assert!(message.contains("netd"), "{message}");
        }
        let (_, _, message) = invalid(&android("rule_priority = 32000"));
        assert!(message.contains("band"), "{message}");
    }

    #[test]
    fn dns_goes_into_the_tunnel_unless_left_local() {
        assert_eq!(parse(&good()).expect("valid").dns, DnsRoute::Tunnel);
        let local = format!("dns = \"local\"\n{}", good());
        assert_eq!(parse(&local).expect("valid").dns, DnsRoute::Local);
        let (line, _, message) = invalid(&format!("dns = \"8.8.8.8\"\n{}", good()));
        assert_eq!(line, 1);
        assert!(message.contains("\"tunnel\" or \"local\""), "{message}");
    }

    #[test]
    fn an_uplink_may_sleep_while_it_carries_no_flows() {
        let text = good().replace(
            "interface = \"rmnet_data0\"",
            "interface = \"rmnet_data0\"\nidle = \"sleep\"",
        );
        let config = parse(&text).expect("valid");
        let sleep: Vec<bool> = config.uplinks.iter().map(|u| u.sleep).collect();
        assert_eq!(sleep, [false, true]);
        let (line, column, message) = invalid(&text.replace("\"sleep\"", "\"nap\""));
        assert_eq!((line, column), (11, 8));
        assert!(
            message.contains("\"keepalive\" (the default) or \"sleep\""),
            "{message}"
        );
    }

    #[test]
    fn no_uplink_is_refused() {
        let text = good();
        let cut = text.find("[[uplink]]").unwrap();
        let (_, _, message) = invalid(&text[..cut]);
        assert!(message.contains("[[uplink]]"), "{message}");
    }

    #[test]
    fn duplicate_uplink_name_is_refused_at_the_second() {
        let (line, _, message) = invalid(&good().replace("name = \"cell\"", "name = \"wifi\""));
        assert_eq!(line, 9);
        assert!(message.contains("duplicate"), "{message}");
    }

    #[test]
    fn bad_uplink_name_is_refused() {
        let (_, _, message) = invalid(&good().replace("name = \"cell\"", "name = \"ce ll\""));
        assert!(message.contains("uplink name"), "{message}");
    }

    #[test]
    fn interface_shared_by_two_uplinks_is_refused() {
        let (line, _, message) = invalid(&good().replace("rmnet_data0", "wlan0"));
        assert_eq!(line, 10);
        assert!(message.contains("two uplinks"), "{message}");
    }

    #[test]
    fn uplink_on_the_tun_itself_is_refused() {
        let (_, _, message) = invalid(&good().replace("rmnet_data0", "upmt0"));
        assert!(message.contains("TUN"), "{message}");
    }

    #[test]
    fn an_uplink_interface_may_end_in_a_star_as_a_pattern() {
        let c = parse(&good().replace("rmnet_data0", "rmnet_data*")).expect("a pattern uplink");
        assert_eq!(c.uplinks[1].interface, "rmnet_data*");
        let (line, _, message) = invalid(&good().replace("rmnet_data0", "*"));
        assert_eq!(line, 10);
        assert!(message.contains("every interface"), "{message}");
        let (line, _, message) = invalid(&good().replace("rmnet_data0", "a b*"));
        assert_eq!(line, 10);
        assert!(message.contains("not a valid interface name"), "{message}");
    }

    #[test]
    fn a_star_anywhere_but_at_the_end_or_a_pattern_matching_the_tun_is_refused() {
        for bad in ["rm*net", "rmnet**"] {
            let (line, column, message) = invalid(&good().replace("rmnet_data0", bad));
            assert_eq!((line, column), (10, 13), "{bad}");
            assert!(message.contains("'*'"), "{bad}: {message}");
        }
        let (_, _, message) = invalid(&good().replace("rmnet_data0", "upmt*"));
        assert!(message.contains("matches the TUN itself"), "{message}");
    }

    #[test]
    fn the_anchor_may_list_an_ipv4_and_an_ipv6_endpoint_preferred_first() {
        let c = parse(&good().replace(
            "anchor = \"203.0.113.2:51900\"",
            "anchor = [\"[2001:db8::2]:51900\", \"203.0.113.2:51900\"]",
        ))
        .expect("valid");
        assert_eq!(
            c.anchors,
            vec![
                "[2001:db8::2]:51900".parse::<SocketAddr>().unwrap(),
                "203.0.113.2:51900".parse().unwrap()
            ]
        );
        assert_eq!(c.anchor, c.anchors[0]);
        let single = parse(&good()).unwrap();
        assert_eq!(single.anchors, vec![single.anchor]);
    }

    #[test]
    fn a_bad_anchor_list_is_refused_at_the_endpoint_at_fault() {
        let list = |inner: &str| good().replace("\"203.0.113.2:51900\"", inner);
        let (line, column, message) =
            invalid(&list("[\"203.0.113.2:51900\", \"198.51.100.1:51900\"]"));
        assert_eq!((line, column), (1, 32));
        assert!(message.contains("two IPv4 endpoints"), "{message}");
        let (line, column, message) = invalid(&list("[\"203.0.113.2:51900\", \"[2001:db8::2]\"]"));
        assert_eq!((line, column), (1, 32));
        assert!(message.contains("[IPv6]:port"), "{message}");
        let (line, column, message) = invalid(&list("[]"));
        assert_eq!((line, column), (1, 10));
        assert!(message.contains("empty anchor list"), "{message}");
        let (line, _, message) = invalid(&list("[\"a:1\", \"b:2\", \"c:3\", \"d:4\"]"));
        assert_eq!(line, 1);
        assert!(message.contains("one per address family"), "{message}");
        let (line, _, _) = invalid(&list("51900"));
        assert_eq!(line, 1);
    }

    fn with_fallbacks(fallbacks: &str) -> String {
        format!("{}{fallbacks}", good())
    }

    #[test]
    fn fallback_anchors_are_kept_in_order_with_their_own_endpoints_and_keys() {
        let c = parse(&with_fallbacks(&format!(
            "[[fallback_anchor]]\nanchor = [\"198.51.100.7:51900\", \"[2001:db8:7::7]:51900\"]\n\
             anchor_public_key = \"{KEY_B}\"\n\
             [[fallback_anchor]]\nanchor = \"192.0.2.9:51900\"\nanchor_public_key = \"{KEY_A}\"\n\
             [probe]\nfailover_after_ms = 2500\n"
        )))
        .expect("valid");
        assert_eq!(c.fallback_anchors.len(), 2);
        assert_eq!(
            c.fallback_anchors[0].endpoints,
            vec![
                "198.51.100.7:51900".parse::<SocketAddr>().unwrap(),
                "[2001:db8:7::7]:51900".parse().unwrap()
            ]
        );
        assert_eq!(c.fallback_anchors[0].public_key, KEY_B.parse().unwrap());
        assert_eq!(c.fallback_anchors[1].public_key, c.anchor_public_key);
        assert_eq!(c.probe.failover_after, Duration::from_millis(2500));
        let plain = parse(&good()).expect("valid");
        assert!(plain.fallback_anchors.is_empty());
        assert_eq!(
            plain.probe.failover_after,
            upmt_mh_core::anchors::DEFAULT_FAILOVER_AFTER
        );
    }

    #[test]
    fn a_bad_fallback_anchor_is_refused_at_its_line_and_column() {
        // good() has 10 lines: the fallback table starts at line 11.
        let (line, column, message) = invalid(&with_fallbacks(&format!(
            "[[fallback_anchor]]\nanchor = \"198.51.100.7\"\nanchor_public_key = \"{KEY_A}\"\n"
        )));
        assert_eq!((line, column), (12, 10));
        assert!(message.contains("[IPv6]:port"), "{message}");
        let (line, column, message) = invalid(&with_fallbacks(
            "[[fallback_anchor]]\nanchor = \"198.51.100.7:51900\"\nanchor_public_key = \"nope\"\n",
        ));
        assert_eq!((line, column), (13, 21));
        assert!(message.contains("anchor_public_key"), "{message}");
        let (line, _, message) = invalid(&with_fallbacks(&format!(
            "[[fallback_anchor]]\nanchor = \"203.0.113.2:51900\"\nanchor_public_key = \"{KEY_A}\"\n"
        )));
        assert_eq!(line, 12);
        assert!(message.contains("listed twice"), "{message}");
        let (line, _, message) = invalid(&with_fallbacks(
            "[[fallback_anchor]]\nanchor = \"198.51.100.7:51900\"\n",
        ));
        assert_eq!(line, 11);
        assert!(message.contains("anchor_public_key"), "{message}");
        let (line, _, message) = invalid(&with_fallbacks(&format!(
            "[[fallback_anchor]]\nanchor = \"198.51.100.7:51900\"\nanchor_public_key = \"{KEY_A}\"\nport = 1\n"
        )));
        assert_eq!(line, 14);
        assert!(message.contains("port"), "{message}");
        let (_, _, message) = invalid(&format!("{}[probe]\nfailover_after_ms = 0\n", good()));
        assert!(message.contains("failover_after_ms"), "{message}");
    }

    #[test]
    fn on_android_the_control_socket_defaults_under_data_adb_upmt() {
        let android = format!("platform = \"android\"\n{}", good());
        let c = parse(&android).expect("valid");
        assert_eq!(c.control_socket, Path::new("/data/adb/upmt/mh.sock"));
        let c = parse_with_build_prop(&good(), true).expect("valid");
        assert_eq!(c.control_socket, Path::new(ANDROID_SOCKET));
        if !Path::new(ANDROID_DIR).exists() {
            let c = parse(&format!("platform = \"linux\"\n{}", good())).expect("valid");
            assert_eq!(c.control_socket, Path::new("/run/upmt/mh.sock"));
        }
    }

    #[test]
    fn the_metrics_endpoint_is_off_unless_an_address_is_given() {
        assert_eq!(parse(&good()).expect("valid").metrics, None);
        let c = parse(&format!("metrics = \"127.0.0.1:9101\"\n{}", good())).expect("valid");
        assert_eq!(c.metrics, Some("127.0.0.1:9101".parse().unwrap()));
        match parse(&format!("metrics = \"localhost\"\n{}", good())) {
            Err(ConfigError::Invalid { message, .. }) => {
                assert!(
                    message.contains("invalid metrics \"localhost\""),
                    "{message}"
                );
                assert!(message.contains("127.0.0.1:9101"), "{message}");
            }
            other => panic!("expected a located error, got {other:?}"),
        }
    }

    #[test]
    fn a_numeric_control_group_is_kept_as_written() {
        let c = parse(&format!("control_group = \"3003\"\n{}", good())).expect("valid");
        assert_eq!(c.control_group.as_deref(), Some("3003"));
    }

    #[test]
    fn empty_interface_is_refused() {
        let (_, _, message) = invalid(&good().replace("rmnet_data0", ""));
        assert!(message.contains("empty interface name"), "{message}");
    }

    #[test]
    fn unreadable_config_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/upmt/mh.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/upmt/mh.toml"), "{e}");
    }
}
