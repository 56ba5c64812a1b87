//! `upmt unpin flow ID` and `upmt unpin app NAME`: hands pinned flows back to their policy,
//! which may move them at once.

use std::io::Write;

use clap::Subcommand;

use crate::control::client::Client;
use crate::control::proto::{Request, Response, UnpinReply};

/// What to unpin.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Unpin {
    /// Hand one flow back to its policy.
    Flow {
        /// The flow's id.
        id: u64,
    },
    /// Hand all of an app's pinned flows back to its policy.
    App {
        /// The app's name.
        name: String,
    },
}

/// Sends the unpin and prints what changed.
pub async fn run(
    client: &mut Client,
    what: Unpin,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let request = match what {
        Unpin::Flow { id } => Request::UnpinFlow { flow: id },
        Unpin::App { name } => Request::UnpinApp { app: name },
    };
    let Response::Unpinned(reply) = client.request(request).await? else {
        anyhow::bail!("unexpected answer from the daemon to unpin");
    };
    if json {
        super::print_json(out, &reply)
    } else {
        Ok(out.write_all(render(&reply).as_bytes())?)
    }
}

/// The human form of an unpin reply.
pub fn render(reply: &UnpinReply) -> String {
    match reply.flows.as_slice() {
        [] => "no pinned flows; nothing changed\n".to_owned(),
        [id] => format!("flow {id} follows its policy again\n"),
        ids => {
            let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
            format!("flows {} follow their policy again\n", ids.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpins_are_reported_in_one_line() {
        assert_eq!(
            render(&UnpinReply { flows: vec![] }),
            "no pinned flows; nothing changed\n"
        );
        assert_eq!(
            render(&UnpinReply { flows: vec![9] }),
            "flow 9 follows its policy again\n"
        );
        assert_eq!(
            render(&UnpinReply { flows: vec![1, 2] }),
            "flows 1, 2 follow their policy again\n"
        );
    }
}
