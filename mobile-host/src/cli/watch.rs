//! `upmt watch`: prints the daemon's events as they happen (tunnel up/down, flow moved, app
//! blocked, policy reloaded) until interrupted; with `--json`, one JSON object per line.

use std::io::Write;
use std::time::Instant;

use crate::control::client::Client;
use crate::control::proto::{Event, MoveReason};

/// Follows the event stream until the daemon ends it (an error) or the process is interrupted.
pub async fn run(client: &mut Client, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    client.watch().await?;
    let start = Instant::now();
    while let Some(event) = client.next_event().await? {
        if json {
            serde_json::to_writer(&mut *out, &event)?;
            writeln!(out)?;
        } else {
            let secs = start.elapsed().as_secs_f64();
            writeln!(out, "{secs:>8.1} s  {}", render(&event))?;
        }
        // Line by line, also into a pipe.
        out.flush()?;
    }
    anyhow::bail!("the daemon ended the event stream (shutting down?)")
}

/// One event as one line, without a newline.
pub fn render(event: &Event) -> String {
    match event {
        Event::SessionUp => "session connected".to_owned(),
        Event::SessionDown => "session lost; handshaking again".to_owned(),
        Event::TunnelUp { uplink } => format!("tunnel {uplink} up"),
        Event::TunnelDown { uplink } => format!("tunnel {uplink} down"),
        Event::FlowMoved {
            flow,
            app,
            from,
            to,
            reason,
        } => format!(
            "flow {flow} ({app}) moved {} -> {to}: {}",
            from.as_deref().unwrap_or("-"),
            reason_text(*reason)
        ),
        Event::FlowUnpinned { flow, app, reason } => format!(
            "flow {flow} ({app}) unpinned, its policy decides again: {}",
            reason_text(*reason)
        ),
        Event::AppBlocked { app, flow, reason } => {
            format!("app {app} blocked (flow {flow}): {reason}")
        }
        Event::PolicyReloaded { path, rules } => {
            format!("policy {path} reloaded ({rules} rules)")
        }
        Event::CapReached {
            uplink,
            used_bytes,
            cap_bytes,
            resets,
        } => format!(
            "data cap of {uplink} reached ({} of {}): only essential apps use it until {resets}",
            super::table::bytes(*used_bytes),
            super::table::bytes(*cap_bytes)
        ),
        Event::CapRestored { uplink } => {
            format!("a new data cap period began: {uplink} is every app's again")
        }
        Event::Lagged { missed } => format!("(missed {missed} events: this watcher was too slow)"),
    }
}

fn reason_text(reason: MoveReason) -> &'static str {
    match reason {
        MoveReason::Manual => "moved by upmt move",
        MoveReason::Unpinned => "unpinned by upmt unpin",
        MoveReason::UplinkDown => "its uplink went down",
        MoveReason::Policy => "policy",
        MoveReason::Measured => "another uplink measured better",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_render_as_one_line_each() {
        assert_eq!(
            render(&Event::TunnelDown {
                uplink: "wifi".into()
            }),
            "tunnel wifi down"
        );
        assert_eq!(
            render(&Event::FlowMoved {
                flow: 4,
                app: "curl".into(),
                from: Some("wifi".into()),
                to: "cell".into(),
                reason: MoveReason::Manual
            }),
            "flow 4 (curl) moved wifi -> cell: moved by upmt move"
        );
        assert_eq!(
            render(&Event::FlowUnpinned {
                flow: 4,
                app: "curl".into(),
                reason: MoveReason::UplinkDown
            }),
            "flow 4 (curl) unpinned, its policy decides again: its uplink went down"
        );
        assert_eq!(
            render(&Event::AppBlocked {
                app: "os-update".into(),
                flow: 9,
                reason: "no allowed uplink is up (wants: wifi)".into()
            }),
            "app os-update blocked (flow 9): no allowed uplink is up (wants: wifi)"
        );
    }
}
