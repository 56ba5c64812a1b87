//! `upmt apps`: each app seen, the policy rule it matched, the uplink(s) its flows use now, its
//! bytes per uplink, and what its redundant copies cost (DUP).

use std::io::Write;

use crate::control::client::Client;
use crate::control::proto::{AppsReply, Request, Response};

use super::table::{self, Align, Table};

/// Asks the daemon for its apps and prints them.
pub async fn run(client: &mut Client, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let Response::Apps(reply) = client.request(Request::Apps).await? else {
        anyhow::bail!("unexpected answer from the daemon to apps");
    };
    if json {
        super::print_json(out, &reply)
    } else {
        Ok(out.write_all(render(&reply).as_bytes())?)
    }
}

/// The human form of an apps reply.
pub fn render(reply: &AppsReply) -> String {
    if reply.apps.is_empty() {
        return "no apps seen yet\n".to_owned();
    }
    let mut t = Table::new(&[
        ("APP", Align::Left),
        ("RULE", Align::Left),
        ("UPLINK", Align::Left),
        ("FLOWS", Align::Right),
        ("BLOCKED", Align::Right),
        ("TX", Align::Right),
        ("RX", Align::Right),
        ("DUP", Align::Right),
        ("PER UPLINK (TX/RX)", Align::Left),
    ]);
    for app in &reply.apps {
        let tx: u64 = app.bytes.iter().map(|b| b.tx_bytes).sum();
        let rx: u64 = app.bytes.iter().map(|b| b.rx_bytes).sum();
        let per: Vec<String> = app
            .bytes
            .iter()
            .map(|b| {
                format!(
                    "{} {}/{}",
                    b.uplink,
                    table::bytes(b.tx_bytes),
                    table::bytes(b.rx_bytes)
                )
            })
            .collect();
        t.row(vec![
            app.name.clone(),
            app.rule.clone(),
            if app.uplinks.is_empty() {
                "-".to_owned()
            } else {
                app.uplinks.join(",")
            },
            app.flows.to_string(),
            app.blocked.to_string(),
            table::bytes(tx),
            table::bytes(rx),
            table::bytes(app.duplicated_bytes),
            per.join(", "),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{AppStatus, UplinkBytes};

    #[test]
    fn apps_render_rule_uplinks_and_bytes_per_uplink() {
        let reply = AppsReply {
            apps: vec![
                AppStatus {
                    name: "com.example.video".into(),
                    rule: "com.example.* -> wifi, cell".into(),
                    uplinks: vec!["wifi".into(), "cell".into()],
                    flows: 3,
                    blocked: 0,
                    duplicated_bytes: 0,
                    bytes: vec![
                        UplinkBytes {
                            uplink: "wifi".into(),
                            tx_bytes: 2048,
                            rx_bytes: 5 * 1024 * 1024,
                        },
                        UplinkBytes {
                            uplink: "cell".into(),
                            tx_bytes: 100,
                            rx_bytes: 1024,
                        },
                    ],
                    select: None,
                    move_existing: false,
                    avoid_metered: false,
                    spread: false,
                },
                AppStatus {
                    name: "os-update".into(),
                    rule: "os-update -> wifi, else block".into(),
                    uplinks: vec![],
                    flows: 1,
                    blocked: 1,
                    duplicated_bytes: 3 * 1024,
                    bytes: vec![],
                    select: None,
                    move_existing: false,
                    avoid_metered: false,
                    spread: false,
                },
            ],
        };
        let expected = "\
APP                RULE                           UPLINK     FLOWS  BLOCKED       TX       RX      DUP  PER UPLINK (TX/RX)
com.example.video  com.example.* -> wifi, cell    wifi,cell      3        0  2.1 KiB  5.0 MiB      0 B  wifi 2.0 KiB/5.0 MiB, cell 100 B/1.0 KiB
os-update          os-update -> wifi, else block  -              1        1      0 B      0 B  3.0 KiB
";
        assert_eq!(render(&reply), expected);
    }

    #[test]
    fn no_apps_is_a_sentence_not_an_empty_table() {
        assert_eq!(render(&AppsReply { apps: vec![] }), "no apps seen yet\n");
    }
}
