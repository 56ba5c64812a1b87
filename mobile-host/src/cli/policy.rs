//! `upmt policy reload`: makes the daemon read its policy file again (as SIGHUP does). A valid
//! file applies to new flows and re-evaluates existing ones; an invalid one is refused with its
//! file:line:col and the old policy stays in force.

use std::io::Write;

use clap::Subcommand;

use crate::control::client::Client;
use crate::control::proto::{ReloadReply, Request, Response};

/// Policy actions.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Policy {
    /// Read the policy file again; a bad file is refused and the old policy stays.
    Reload,
}

/// Sends the reload and prints its outcome.
pub async fn run(
    client: &mut Client,
    what: Policy,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match what {
        Policy::Reload => {
            let Response::Reloaded(reply) = client.request(Request::ReloadPolicy).await? else {
                anyhow::bail!("unexpected answer from the daemon to policy reload");
            };
            if json {
                super::print_json(out, &reply)
            } else {
                Ok(out.write_all(render(&reply).as_bytes())?)
            }
        }
    }
}

/// The human form of a reload reply.
pub fn render(reply: &ReloadReply) -> String {
    format!(
        "policy {} loaded: {} rule{}; {} flow{} re-evaluated, {} moved\n",
        reply.path,
        reply.rules,
        if reply.rules == 1 { "" } else { "s" },
        reply.reevaluated,
        if reply.reevaluated == 1 { "" } else { "s" },
        reply.moved
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_reports_rules_and_reevaluated_flows() {
        let reply = ReloadReply {
            path: "/etc/upmt/policy.toml".into(),
            rules: 3,
            reevaluated: 1,
            moved: 0,
        };
        assert_eq!(
            render(&reply),
            "policy /etc/upmt/policy.toml loaded: 3 rules; 1 flow re-evaluated, 0 moved\n"
        );
    }
}
