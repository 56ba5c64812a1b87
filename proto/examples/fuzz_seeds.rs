//! Writes the seed corpora of the fuzz targets (`proto/fuzz/corpus/<target>/`) from real packets:
//! `cargo run -p upmt-proto --example fuzz_seeds [DIR]` (default `proto/fuzz/corpus`).
//!
//! The core targets read scripts (see `upmt_proto::fuzzing`); their seeds are small scripts that
//! drive real handshakes, data, control messages, replays and rebinding.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use upmt_proto::anchor::{Anchor, AnchorConfig, PeerConfig};
use upmt_proto::client::{Client, ClientConfig};
use upmt_proto::control::ControlMessage;
use upmt_proto::keys::StaticSecret;
use upmt_proto::time::Instant;
use upmt_proto::wire::INIT_LEN;
use upmt_proto::{HEADER_LEN, PathId, TAG_LEN};

fn udp4(len: usize, sport: u16, syn_mss: Option<u16>) -> Vec<u8> {
    let tcp = syn_mss.is_some();
    let l4 = if tcp { 24 } else { 8 };
    let total = 20 + l4 + len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = if tcp { 6 } else { 17 };
    p[12..16].copy_from_slice(&[10, 9, 0, 2]);
    p[16..20].copy_from_slice(&[93, 184, 216, 34]);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&443u16.to_be_bytes());
    if let Some(mss) = syn_mss {
        p[32] = 6 << 4; // data offset 24
        p[33] = 0x02; // SYN
        p[40..44].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
        let sum = checksum(&p);
        p[36..38].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

fn tcp6_syn(mss: u16) -> Vec<u8> {
    let mut p = vec![0u8; 40 + 24];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&24u16.to_be_bytes());
    p[6] = 6;
    p[7] = 64;
    p[8] = 0xfd;
    p[23] = 2;
    p[24] = 0x20;
    p[25] = 0x01;
    p[39] = 1;
    p[52] = 6 << 4;
    p[53] = 0x02;
    p[60..64].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
    let sum = checksum(&p);
    p[56..58].copy_from_slice(&sum.to_be_bytes());
    p
}

/// TCP checksum of an IPv4 or IPv6 packet whose checksum field is zero.
fn checksum(p: &[u8]) -> u16 {
    let (pseudo, seg): (Vec<u8>, &[u8]) = if p[0] >> 4 == 4 {
        let seg = &p[20..];
        let mut v = p[12..20].to_vec();
        v.extend_from_slice(&[0, 6]);
        v.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        (v, seg)
    } else {
        let seg = &p[40..];
        let mut v = p[8..40].to_vec();
        v.extend_from_slice(&(seg.len() as u32).to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 6]);
        (v, seg)
    };
    let mut acc = 0u32;
    for c in pseudo.chunks(2).chain(seg.chunks(2)) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn record(script: &mut Vec<u8>, op: u8, body: &[u8]) {
    script.push(op);
    script.push(body.len().min(255) as u8);
    script.extend_from_slice(&body[..body.len().min(255)]);
}

fn ctl(m: ControlMessage) -> Vec<u8> {
    let mut b = [0u8; 16];
    let n = m.emit(&mut b).expect("fits");
    b[..n].to_vec()
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), bytes)
}

/// Real datagrams of every kind from a handshake between a client and an anchor.
fn real_datagrams() -> Vec<(String, Vec<u8>)> {
    let mh = StaticSecret::from_bytes([0x42; 32]);
    let an = StaticSecret::from_bytes([0x24; 32]);
    let now = Instant::ZERO;
    let mut client = Client::new(ClientConfig::new(mh.clone(), an.public_key()), now, 1);
    let mut anchor = Anchor::new(
        AnchorConfig::new(
            an.clone(),
            vec![PeerConfig {
                name: "mh".into(),
                public: mh.public_key(),
                virtual_ipv4: "10.9.0.2".parse().expect("literal"),
                virtual_ipv6: None,
            }],
        ),
        now,
    );
    let from: SocketAddr = "198.51.100.1:40000".parse().expect("literal");
    let mut out = Vec::new();
    let mut buf = [0u8; 1600];
    client.handle_path_up(PathId(0), now);
    let t = client.poll_transmit(now, &mut buf).expect("init");
    out.push(("init".to_string(), buf[..t.len].to_vec()));
    let mut d = buf[..t.len].to_vec();
    anchor
        .handle_datagram(from, &mut d, now)
        .expect("init accepted");
    let t = anchor.poll_transmit(now, &mut buf).expect("resp");
    out.push(("resp".to_string(), buf[..t.len].to_vec()));
    let mut d = buf[..t.len].to_vec();
    client
        .handle_datagram(PathId(0), &mut d, now)
        .expect("resp accepted");
    let t = client.poll_transmit(now, &mut buf).expect("probe");
    out.push(("control_probe".to_string(), buf[..t.len].to_vec()));
    let inner = udp4(12, 5000, None);
    let mut b = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
    b[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(&inner);
    let n = client
        .encapsulate(PathId(0), &mut b, inner.len(), now)
        .expect("data");
    out.push(("data".to_string(), b[..n].to_vec()));
    // Load the anchor with valid-mac1 junk until it answers with a cookie.
    for i in 0..200u32 {
        let mut init = vec![0u8; INIT_LEN];
        init[0] = 0x11;
        init[4..8].copy_from_slice(&i.to_be_bytes());
        upmt_proto::fuzzing::seal_mac1(&an.public_key(), &mut init);
        let src: SocketAddr = format!("203.0.113.{}:9", i % 250).parse().expect("literal");
        let _ = anchor.handle_datagram(src, &mut init, now);
    }
    while let Some(t) = anchor.poll_transmit(now, &mut buf) {
        if buf[0] == 0x15 {
            out.push(("cookie_reply".to_string(), buf[..t.len].to_vec()));
            break;
        }
    }
    out
}

fn main() -> std::io::Result<()> {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("proto/fuzz/corpus"));
    let real = real_datagrams();
    for (name, bytes) in &real {
        write(&dir, "wire_decode", name, bytes)?;
        let mut truncated = bytes.clone();
        truncated.truncate(bytes.len() / 2);
        write(
            &dir,
            "wire_decode",
            &format!("{name}_truncated"),
            &truncated,
        )?;
    }
    let ctls = [
        ("probe", ctl(ControlMessage::Probe { seq: 7, sent_us: 1 })),
        (
            "probe_ack",
            ctl(ControlMessage::ProbeAck {
                seq: 7,
                echo_us: 1,
                observed: None,
            }),
        ),
        (
            "challenge",
            ctl(ControlMessage::PathChallenge { data: [9; 8] }),
        ),
        (
            "response",
            ctl(ControlMessage::PathResponse { data: [9; 8] }),
        ),
    ];
    for (name, b) in &ctls {
        write(&dir, "wire_decode", &format!("ctl_{name}"), b)?;
    }
    let ips = [
        ("udp4", udp4(12, 5000, None)),
        ("tcp4_syn", udp4(0, 5001, Some(1460))),
        ("tcp6_syn", tcp6_syn(1440)),
    ];
    for (name, p) in &ips {
        write(&dir, "wire_decode", &format!("ip_{name}"), p)?;
        for mss in [536u16, 1380, 1500] {
            let mut b = mss.to_be_bytes().to_vec();
            b.extend_from_slice(p);
            write(&dir, "ip_clamp_mss", &format!("{name}_{mss}"), &b)?;
        }
    }
    let data = udp4(8, 5000, None);
    let syn = udp4(0, 5002, Some(1460));
    let scripts: Vec<(&str, Vec<u8>)> = vec![
        ("fresh_raw_real", {
            let mut s = vec![0];
            for (_, b) in &real {
                record(&mut s, 0, b);
            }
            s
        }),
        ("connected_data_both_paths", {
            let mut s = vec![1];
            record(&mut s, 2, &data);
            record(&mut s, 0x12, &syn);
            record(&mut s, 6, &[17, 1, 2, 3]);
            s
        }),
        ("connected_controls", {
            let mut s = vec![1];
            for (_, b) in &ctls {
                record(&mut s, 3, b);
                record(&mut s, 0x83, b);
            }
            s
        }),
        ("replay_and_rebind", {
            let mut s = vec![1];
            record(&mut s, 2, &data);
            record(&mut s, 4, &[]);
            record(&mut s, 0x83, &ctls[0].1);
            record(&mut s, 5, &[30]);
            record(&mut s, 6, &[6, 0, 0]);
            s
        }),
        ("flood_inits", {
            let mut s = vec![1];
            for i in 0..60u8 {
                record(&mut s, 7 | (i << 4), &[0, 0, 0, i]);
            }
            s
        }),
        ("timeouts", {
            let mut s = vec![1];
            for _ in 0..30 {
                record(&mut s, 5, &[250]);
            }
            record(&mut s, 6, &[17]);
            s
        }),
        ("raw_garbage", {
            let mut s = vec![1];
            for k in 0..8u8 {
                record(&mut s, 1, &[0x10 | k, 0, 0, 0, 1, 2, 3, 4, 5]);
            }
            s
        }),
    ];
    for (name, s) in &scripts {
        write(&dir, "anchor_datagram", name, s)?;
    }
    let client_scripts: Vec<(&str, Vec<u8>)> = vec![
        ("fresh_raw_real", {
            let mut s = vec![0];
            for (_, b) in &real {
                record(&mut s, 0, b);
                record(&mut s, 5, b);
            }
            s
        }),
        ("connected_downlink", {
            let mut s = vec![1];
            record(&mut s, 1, &[17, 0, 1, 2]);
            record(&mut s, 3, &[]);
            record(&mut s, 0x11, &[6; 40]);
            s
        }),
        ("connected_controls_alone", {
            let mut s = vec![3];
            for (_, b) in &ctls {
                record(&mut s, 2, b);
                record(&mut s, 0x12, b);
            }
            s
        }),
        ("silence_and_rehandshake", {
            let mut s = vec![1];
            for _ in 0..10 {
                record(&mut s, 4, &[100]);
            }
            record(&mut s, 5, &real[4.min(real.len() - 1)].1);
            s
        }),
    ];
    for (name, s) in &client_scripts {
        write(&dir, "client_datagram", name, s)?;
    }
    Ok(())
}
