//! `upmt flows [--app NAME]`: each flow with its id, app, 5-tuple, uplink, whether it is pinned
//! (static, by `upmt move`) or placed by the policy (dynamic), bytes and age.

use std::io::Write;

use crate::control::client::Client;
use crate::control::proto::{FlowsReply, Request, Response};

use super::table::{self, Align, Table};

/// Asks the daemon for its flows (of one app, or all) and prints them.
pub async fn run(
    client: &mut Client,
    app: Option<String>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let Response::Flows(reply) = client.request(Request::Flows { app }).await? else {
        anyhow::bail!("unexpected answer from the daemon to flows");
    };
    if json {
        super::print_json(out, &reply)
    } else {
        Ok(out.write_all(render(&reply).as_bytes())?)
    }
}

/// The human form of a flows reply.
pub fn render(reply: &FlowsReply) -> String {
    if reply.flows.is_empty() {
        return "no flows\n".to_owned();
    }
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("APP", Align::Left),
        ("PROTO", Align::Left),
        ("SOURCE", Align::Left),
        ("DESTINATION", Align::Left),
        ("UPLINK", Align::Left),
        ("MODE", Align::Left),
        ("TX", Align::Right),
        ("RX", Align::Right),
        ("AGE", Align::Right),
    ]);
    for f in &reply.flows {
        t.row(vec![
            f.id.to_string(),
            f.app.clone(),
            f.protocol.clone(),
            table::endpoint(f.src, f.src_port),
            table::endpoint(f.dst, f.dst_port),
            f.uplink.clone().unwrap_or_else(|| "blocked".to_owned()),
            if f.pinned { "static" } else { "dynamic" }.to_owned(),
            table::bytes(f.tx_bytes),
            table::bytes(f.rx_bytes),
            table::age(f.age_ms),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::FlowStatus;

    #[test]
    fn flows_render_the_five_tuple_mode_bytes_and_age() {
        let reply = FlowsReply {
            flows: vec![
                FlowStatus {
                    id: 7,
                    app: "curl".into(),
                    protocol: "tcp".into(),
                    src: "10.77.0.2".parse().unwrap(),
                    src_port: 40312,
                    dst: "203.0.113.80".parse().unwrap(),
                    dst_port: 80,
                    uplink: Some("cell".into()),
                    pinned: true,
                    tx_bytes: 40_000,
                    rx_bytes: 7 * 1024 * 1024,
                    age_ms: 6_400,
                },
                FlowStatus {
                    id: 112,
                    app: "com.example.app".into(),
                    protocol: "udp".into(),
                    src: "fd77::2".parse().unwrap(),
                    src_port: 5353,
                    dst: "2001:db8::53".parse().unwrap(),
                    dst_port: 53,
                    uplink: None,
                    pinned: false,
                    tx_bytes: 80,
                    rx_bytes: 0,
                    age_ms: 120_000,
                },
            ],
        };
        let expected = concat!(
            " ID  APP              PROTO  SOURCE           DESTINATION        UPLINK   MODE           TX       RX    AGE\n",
            "  7  curl             tcp    10.77.0.2:40312  203.0.113.80:80    cell     static   39.1 KiB  7.0 MiB    6 s\n",
            "112  com.example.app  udp    [fd77::2]:5353   [2001:db8::53]:53  blocked  dynamic      80 B      0 B  120 s\n",
        );
        assert_eq!(render(&reply), expected);
    }
}
