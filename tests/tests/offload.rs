//! End to end: the TUN offloads. With them (the default) the anchor's TUN hands over TCP
//! super-packets that the daemon splits, so it reads fewer times than it forwards packets; with
//! `offload = false` on both daemons every packet is its own read and write, and the tunnel
//! carries the same bytes. Needs root; each test builds its own lab.

use upmt_tests::deploy::metric_sum;
use upmt_tests::{DeployOptions, Deployment, Lab};

fn lab(name: &str) -> Lab {
    Lab::new(name).unwrap_or_else(|e| panic!("building the lab for {name}: {e}"))
}

/// The anchor's TUN reads and the packets they gave, from one scrape (two scrapes could see a
/// packet arrive between them).
fn anchor_tun_reads(upmt: &Deployment<'_>) -> (u64, u64) {
    let text = upmt
        .an_metrics()
        .unwrap_or_else(|e| panic!("anchor metrics: {e}\n{}", upmt.logs()));
    (
        metric_sum(&text, "upmt_tun_read_calls"),
        metric_sum(&text, "upmt_tun_rx_packets"),
    )
}

#[test]
fn with_offload_the_anchor_splits_super_packets_and_the_download_arrives_whole() {
    let lab = lab("offload_on");
    let upmt = Deployment::start(&lab, &DeployOptions::default())
        .unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    upmt.download_whole("mid.bin");
    assert!(
        upmt.an.log().contains("TUN ready") && !upmt.an.log().contains("offload unavailable"),
        "{}",
        upmt.logs()
    );
    let (reads, packets) = anchor_tun_reads(&upmt);
    // The CH's segments cross the lab's veths whole and reach the TUN as 64 KiB packets.
    assert!(
        reads * 2 < packets,
        "{reads} TUN reads for {packets} packets: no super-packets\n{}",
        upmt.logs()
    );
}

#[test]
fn with_offload_off_every_packet_is_its_own_read_and_the_download_arrives_whole() {
    let lab = lab("offload_off");
    let upmt = Deployment::start(
        &lab,
        &DeployOptions {
            mh_extra: "offload = false\n".to_owned(),
            an_extra: "offload = false\n".to_owned(),
            ..DeployOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("deploying upmt: {e}"));
    upmt.download_whole("mid.bin");
    let (reads, packets) = anchor_tun_reads(&upmt);
    assert!(packets > 100, "{packets} packets\n{}", upmt.logs());
    assert_eq!(reads, packets, "{}", upmt.logs());
    for log in [upmt.an.log(), upmt.mh.log()] {
        let line = log
            .lines()
            .find(|l| l.contains("TUN ready") || l.contains("TUN up"))
            .unwrap_or_else(|| panic!("no TUN line\n{}", upmt.logs()));
        // Field names may carry colour codes; the value is the quoted word.
        assert!(
            line.contains("offload") && line.contains("\"off\""),
            "{line}"
        );
    }
}
