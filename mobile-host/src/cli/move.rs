//! `upmt move flow ID UPLINK` and `upmt move app NAME UPLINK`: moves at once and pins the flows
//! there (static) until `upmt unpin` or until that uplink goes down. The anchor follows by itself:
//! it sends each flow's downlink back over the tunnel its latest uplink packet came on.

use std::io::Write;

use clap::Subcommand;

use crate::control::client::Client;
use crate::control::proto::{MoveReply, Request, Response};

/// What to move.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Move {
    /// Move one flow (an id from `upmt flows`) to an uplink and pin it there.
    Flow {
        /// The flow's id.
        id: u64,
        /// The uplink's name ("wifi", "cell").
        uplink: String,
    },
    /// Move all of an app's flows to an uplink and pin them there.
    App {
        /// The app's name, as `upmt apps` shows it.
        name: String,
        /// The uplink's name.
        uplink: String,
    },
}

/// Sends the move and prints what moved.
pub async fn run(
    client: &mut Client,
    what: Move,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (request, app) = match what {
        Move::Flow { id, uplink } => (Request::MoveFlow { flow: id, uplink }, None),
        Move::App { name, uplink } => (
            Request::MoveApp {
                app: name.clone(),
                uplink,
            },
            Some(name),
        ),
    };
    let Response::Moved(reply) = client.request(request).await? else {
        anyhow::bail!("unexpected answer from the daemon to move");
    };
    if json {
        super::print_json(out, &reply)
    } else {
        Ok(out.write_all(render(&reply, app.as_deref()).as_bytes())?)
    }
}

/// The human form of a move reply; `app` when an app was moved.
pub fn render(reply: &MoveReply, app: Option<&str>) -> String {
    let ids: Vec<String> = reply.flows.iter().map(u64::to_string).collect();
    match (app, reply.flows.as_slice()) {
        (None, [id]) => format!("moved flow {id} to {}\n", reply.uplink),
        (Some(app), []) => {
            format!("{app} has no flows now; nothing moved (its new flows follow its policy)\n")
        }
        (Some(app), _) => format!(
            "moved {} flow{} of {app} to {} ({})\n",
            ids.len(),
            if ids.len() == 1 { "" } else { "s" },
            reply.uplink,
            ids.join(", ")
        ),
        (None, _) => format!("moved flows {} to {}\n", ids.join(", "), reply.uplink),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_are_reported_in_one_line() {
        let one = MoveReply {
            uplink: "cell".into(),
            flows: vec![42],
        };
        assert_eq!(render(&one, None), "moved flow 42 to cell\n");
        let app = MoveReply {
            uplink: "wifi".into(),
            flows: vec![3, 5],
        };
        assert_eq!(
            render(&app, Some("curl")),
            "moved 2 flows of curl to wifi (3, 5)\n"
        );
        let none = MoveReply {
            uplink: "wifi".into(),
            flows: vec![],
        };
        assert!(render(&none, Some("curl")).starts_with("curl has no flows now"));
    }
}
