//! `upmt usage`: data usage kept across flows and restarts, per app per uplink, the totals, and
//! for each capped uplink how much of its cap is left and when it resets.

use std::io::Write;

use crate::control::client::Client;
use crate::control::proto::{Request, Response, UsageReply};

use super::table::{self, Align, Table};

/// Asks the daemon for its usage (one app, from a day on) and prints it.
pub async fn run(
    client: &mut Client,
    app: Option<String>,
    since: Option<String>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if let Some(day) = &since
        && upmt_mh_core::usage::Day::parse(day).is_none()
    {
        anyhow::bail!("invalid --since {day:?}: expected a date YYYY-MM-DD");
    }
    let Response::Usage(reply) = client.request(Request::Usage { app, since }).await? else {
        anyhow::bail!("unexpected answer from the daemon to usage");
    };
    if json {
        super::print_json(out, &reply)
    } else {
        Ok(out.write_all(render(&reply).as_bytes())?)
    }
}

/// The human form of a usage reply.
pub fn render(reply: &UsageReply) -> String {
    let mut s = format!("usage from {} through {}\n", reply.since, reply.until);
    if reply.apps.is_empty() {
        s.push_str("nothing counted\n");
    } else {
        let mut t = Table::new(&[
            ("APP", Align::Left),
            ("UPLINK", Align::Left),
            ("TX", Align::Right),
            ("RX", Align::Right),
        ]);
        for app in &reply.apps {
            for (i, u) in app.uplinks.iter().enumerate() {
                t.row(vec![
                    if i == 0 {
                        app.name.clone()
                    } else {
                        String::new()
                    },
                    u.uplink.clone(),
                    table::bytes(u.tx_bytes),
                    table::bytes(u.rx_bytes),
                ]);
            }
        }
        t.row(vec![
            "total".to_owned(),
            String::new(),
            table::bytes(reply.tx_bytes),
            table::bytes(reply.rx_bytes),
        ]);
        s.push_str(&t.render());
    }
    s.push('\n');
    let mut t = Table::new(&[
        ("UPLINK", Align::Left),
        ("TX", Align::Right),
        ("RX", Align::Right),
        ("CAP", Align::Left),
        ("USED", Align::Right),
        ("LEFT", Align::Right),
        ("RESETS", Align::Left),
    ]);
    for u in &reply.uplinks {
        let (cap, used, left, resets) = match &u.cap {
            None => (
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ),
            Some(c) => (
                format!(
                    "{} per {}{}",
                    table::bytes(c.cap_bytes),
                    c.period,
                    if c.reached { " (reached)" } else { "" }
                ),
                table::bytes(c.used_bytes),
                table::bytes(c.left_bytes),
                c.resets.clone(),
            ),
        };
        t.row(vec![
            u.uplink.clone(),
            table::bytes(u.tx_bytes),
            table::bytes(u.rx_bytes),
            cap,
            used,
            left,
            resets,
        ]);
    }
    s.push_str(&t.render());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{AppUsage, CapStatus, UplinkBytes, UplinkUsage};

    #[test]
    fn usage_renders_apps_per_uplink_totals_and_what_is_left_of_a_cap() {
        let reply = UsageReply {
            since: "2026-11-01".into(),
            until: "2026-12-01".into(),
            tx_bytes: 3 << 20,
            rx_bytes: 40 << 20,
            apps: vec![AppUsage {
                name: "com.example.video".into(),
                tx_bytes: 3 << 20,
                rx_bytes: 40 << 20,
                uplinks: vec![
                    UplinkBytes {
                        uplink: "wifi".into(),
                        tx_bytes: 2 << 20,
                        rx_bytes: 30 << 20,
                    },
                    UplinkBytes {
                        uplink: "cell".into(),
                        tx_bytes: 1 << 20,
                        rx_bytes: 10 << 20,
                    },
                ],
            }],
            uplinks: vec![
                UplinkUsage {
                    uplink: "wifi".into(),
                    tx_bytes: 2 << 20,
                    rx_bytes: 30 << 20,
                    cap: None,
                },
                UplinkUsage {
                    uplink: "cell".into(),
                    tx_bytes: 1 << 20,
                    rx_bytes: 10 << 20,
                    cap: Some(CapStatus {
                        cap_bytes: 2 << 30,
                        period: "month".into(),
                        period_start: "2026-11-15".into(),
                        used_bytes: 11 << 20,
                        left_bytes: (2 << 30) - (11 << 20),
                        resets: "2026-12-15".into(),
                        reached: false,
                    }),
                },
            ],
        };
        let expected = "\
usage from 2026-11-01 through 2026-12-01
APP                UPLINK       TX        RX
com.example.video  wifi    2.0 MiB  30.0 MiB
                   cell    1.0 MiB  10.0 MiB
total                      3.0 MiB  40.0 MiB

UPLINK       TX        RX  CAP                     USED      LEFT  RESETS
wifi    2.0 MiB  30.0 MiB  -                          -         -  -
cell    1.0 MiB  10.0 MiB  2.00 GiB per month  11.0 MiB  1.99 GiB  2026-12-15
";
        assert_eq!(render(&reply), expected);
    }
}
