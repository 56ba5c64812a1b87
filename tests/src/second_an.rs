//! A second anchor node in the lab, for failover: its namespace (`an2`, on the internet router
//! like the first, so both uplinks and the CH reach it) and its daemon, which hands the mobile
//! host another virtual address ([`MH_VIRTUAL2_V4`]) than the first anchor does.
//!
//! The first anchor and the mobile host come from [`crate::Deployment`]; the mobile host's
//! config names this anchor as a `[[fallback_anchor]]` through
//! [`crate::DeployOptions::mh_extra`] ([`SecondAnchor::mh_config`]).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use upmt_proto::keys::{PublicKey, StaticSecret};

use crate::bin_path;
use crate::deploy::{AN_PORT, AN_TUN, Deployment, write_private};
use crate::error::{LabError, Result};
use crate::lab::{Lab, Role};
use crate::measure::wait_for;
use crate::process::ProcHandle;
use crate::topology::AN2_V4;

/// The mobile host's virtual address on the second anchor.
pub const MH_VIRTUAL2_V4: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);

/// Builds the `an2` namespace: `eth0` 198.19.1.2/24 and 2001:db8:6::2/64, its peer `to-an2` on
/// the internet router.
pub(crate) fn build(lab: &mut Lab) -> Result<()> {
    lab.adopt_namespace(Role::An2)?;
    let an2 = lab.host(Role::An2);
    an2.ip(&["link", "set", "lo", "up"])?;
    an2.run(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ])?;
    let inet_ns = lab.ns(Role::Inet).to_owned();
    an2.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "to-an2", "netns", &inet_ns,
    ])?;
    for (host, ifname, v4, v6) in [
        (an2, "eth0", "198.19.1.2/24", "2001:db8:6::2/64"),
        (lab.inet(), "to-an2", "198.19.1.1/24", "2001:db8:6::1/64"),
    ] {
        host.ip(&["-4", "addr", "add", v4, "dev", ifname])?;
        host.ip(&["-6", "addr", "add", v6, "dev", ifname, "nodad"])?;
        host.ip(&["link", "set", ifname, "up"])?;
    }
    an2.ip(&[
        "-4",
        "route",
        "replace",
        "default",
        "via",
        "198.19.1.1",
        "dev",
        "eth0",
    ])?;
    an2.ip(&[
        "-6",
        "route",
        "replace",
        "default",
        "via",
        "2001:db8:6::1",
        "dev",
        "eth0",
    ])?;
    Ok(())
}

/// The second anchor's identity, known before the mobile host's config is written.
pub struct SecondAnchor {
    secret: StaticSecret,
}

impl SecondAnchor {
    /// A fresh key for it.
    pub fn new() -> Result<SecondAnchor> {
        let secret = StaticSecret::generate()
            .map_err(|e| LabError::Deploy(format!("generating the second anchor's key: {e}")))?;
        Ok(SecondAnchor { secret })
    }

    /// Its endpoint, as the mobile host's config names it.
    pub fn endpoint(&self) -> String {
        format!("{AN2_V4}:{AN_PORT}")
    }

    /// The `[[fallback_anchor]]` table naming it, for the mobile host's config.
    pub fn mh_config(&self) -> String {
        format!(
            "[[fallback_anchor]]\nanchor = \"{}\"\nanchor_public_key = \"{}\"\n",
            self.endpoint(),
            self.secret.public_key()
        )
    }

    /// Starts `upmt-an` in `an2` with the deployed mobile host as its only peer; returns once
    /// its TUN exists.
    pub fn start(&self, lab: &Lab, deployment: &Deployment<'_>, log: &str) -> Result<ProcHandle> {
        let mh_public = mh_public_key(&deployment.mh_config)?;
        let config = lab.dir().join("an2.toml");
        let text = format!(
            "listen = \"[::]:{AN_PORT}\"\nprivate_key = \"{}\"\ntun = \"{AN_TUN}\"\n\
             subnet = \"10.78.0.0/24\"\nsubnet6 = \"fd78::/64\"\negress = \"eth0\"\n\
             [[peer]]\nname = \"phone\"\npublic_key = \"{mh_public}\"\naddress = \"{MH_VIRTUAL2_V4}\"\n\
             address6 = \"fd78::2\"\n",
            self.secret,
        );
        write_private(&config, &text)?;
        let an2 = lab
            .host(Role::An2)
            .command(&[
                bin_path("upmt-an")?.as_os_str(),
                "run".as_ref(),
                "--config".as_ref(),
                config.as_os_str(),
            ])
            .env("RUST_LOG", log)
            .label("upmt-an2")
            .spawn()?;
        wait_for("upmt-an2's TUN", Duration::from_secs(10), || {
            lab.host(Role::An2)
                .run(&["ip", "link", "show", "dev", AN_TUN])
                .is_ok()
                || !an2.is_running()
        })?;
        if !an2.is_running() {
            return Err(LabError::Deploy(format!(
                "upmt-an2 exited at start:\n{}",
                an2.log()
            )));
        }
        Ok(an2)
    }
}

/// The public key of the mobile host whose config is at `path` (its `private_key` line).
fn mh_public_key(path: &Path) -> Result<PublicKey> {
    let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("private_key = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .and_then(|key| key.parse::<StaticSecret>().ok())
        .map(|secret| secret.public_key())
        .ok_or_else(|| LabError::Deploy(format!("no private_key in {}", path.display())))
}
