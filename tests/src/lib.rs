//! The upmt lab: a test network of Linux network namespaces for end-to-end tests and demos.
//!
//! [`Lab::new`] builds six namespaces — the mobile host (`mh`, uplinks `wifi` and `cell`), a NAT
//! router behind each uplink (`rwifi`, `rcell`), an internet router (`inet`), the anchor node
//! (`an`) and a correspondent host (`ch`) — with IPv4 and IPv6 everywhere (addresses in
//! [`topology`]). Tests run programs in a namespace ([`Host::run`], [`Host::spawn`] with a chosen
//! `argv[0]`), start servers on the CH ([`Lab::start_http_server`],
//! [`Lab::start_iperf3_server`]), download from it with curl ([`Lab::download`]: sha256, curl's
//! figures and interface counters), and measure which uplink carried what
//! ([`Host::link_counters`], [`Lab::whoami_via`]) while disturbing links ([`Host::set_link`],
//! [`Host::blackhole`], [`Host::tbf`]).
//!
//! ```no_run
//! use upmt_tests::{Family, Lab};
//! let lab = Lab::new("curl_download")?;
//! let http = lab.start_http_server()?;
//! let got = lab.download("big.bin").family(Family::V4).count("wifi").run()?;
//! assert_eq!(got.sha256.as_deref(), http.sha256("big.bin"));
//! assert!(got.counters("wifi").rx_bytes > 32 * 1024 * 1024);
//! # Ok::<(), upmt_tests::LabError>(())
//! ```
//!
//! What it never does: create anything in the root namespace (veths are born inside their
//! namespaces; no route, forwarding or NAT outside them), send traffic outside the lab, or stop a
//! process it did not start. Dropping a [`Lab`] — also on panic — stops its processes by pid and
//! deletes its namespaces; [`sweep_stale`] removes what crashed runs left behind. Needs root,
//! `ip`, `nft` and `/dev/net/tun` ([`check_environment`]).

pub mod android;
pub mod bins;
pub mod crowd;
pub mod deploy;
pub mod download;
pub mod error;
pub mod exec;
pub mod guard;
pub mod lab;
pub mod measure;
pub mod netd;
pub mod process;
pub mod scale;
pub mod scratch;
pub mod second_an;
pub mod servers;
pub mod swarm;
pub mod topology;

pub use bins::bin_path;
pub use crowd::{Connect, Crowd, CrowdOptions};
pub use deploy::{DeployOptions, Deployment};
pub use download::{Download, Downloaded, RunningDownload};
pub use error::{LabError, Result};
pub use lab::{Cmd, Host, Lab, Role, check_environment, list_namespaces, sweep_stale};
pub use measure::{LinkCounters, NftCounter, iperf3_udp_lost, sha256_bytes, sha256_file, wait_for};
pub use process::ProcHandle;
pub use servers::{BIG_FILE_SIZE, HttpServer, Iperf3Server, MID_FILE_SIZE, ServedFile};
pub use topology::Family;
