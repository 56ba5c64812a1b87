//! Heap use of the MH core's per-flow state with many flows, per component, measured with a
//! counting global allocator (no network, no daemon).
//!
//! `cargo run --release -p upmt-mh-core --example flow_memory [FLOWS...]` (default 10000 and
//! 100000). Each round opens FLOWS short TCP flows through [`Flows`] (SYN out, SYN-ACK back,
//! FIN both ways), harvests them into the usage [`Meter`] while they live, lets them expire,
//! and prints the live heap at the peak and after expiry, and what each component holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use upmt_mh_core::Owner;
use upmt_mh_core::flows::{Flows, TunAction};
use upmt_mh_core::owner::Source;
use upmt_mh_core::usage::Meter;
use upmt_paft::{Config, NewFlow, Paft, UplinkId, parse_packet};
use upmt_policy::{Policy, UplinkStatus};
use upmt_proto::time::Instant;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let now = if new_size >= layout.size() {
            LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size()
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed) - (layout.size() - new_size)
        };
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn mib(b: usize) -> String {
    format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0))
}

const POLICY: &str = "version = 1\n[default]\nuplinks = [\"wifi\"]\nwhen_none = \"any\"\n";
const UP: UplinkStatus = UplinkStatus {
    up: true,
    rtt: None,
    loss: None,
    metered: false,
    capped: false,
};

/// A 40-byte IPv4 TCP segment from 10.77.x.y:sport to 192.0.2.1:443 (or back when `reply`).
fn tcp(n: u32, flags: u8, reply: bool) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[9] = 6;
    let local = [10, 77, (n >> 16) as u8, (n >> 8) as u8];
    let sport = 1024 + (n & 0xff) as u16;
    let remote = [192, 0, 2, 1];
    let (src, dst, sp, dp) = if reply {
        (remote, local, 443, sport)
    } else {
        (local, remote, sport, 443)
    };
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&sp.to_be_bytes());
    p[22..24].copy_from_slice(&dp.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

/// One round of `n` short flows through `flows` and `meter`; prints what stays.
fn round(flows: &mut Flows, meter: &mut Meter, n: u32, t0: Duration) -> Duration {
    let wifi = UplinkId::new(0).expect("uplink 0");
    let owner = Owner {
        name: Some("curl".into()),
        uid: Some(1000),
        pid: Some(1),
        source: Source::Process,
    };
    let before = live();
    let mut now = t0;
    let mut out = Vec::new();
    // The MH holds at most 65,536 flows; open them in batches so each batch's flows are
    // harvested while alive and expire (10 s after their FINs) before the table fills.
    let batch = 20_000.min(n);
    let mut peak = 0;
    let mut opened = 0;
    while opened < n {
        let end = (opened + batch).min(n);
        for i in opened..end {
            now += Duration::from_micros(10);
            if let TunAction::Queued { key, new: true } =
                flows.on_tun_packet(&tcp(i, SYN, false), now)
            {
                flows.classified(key, &owner, &[UP, UP], now, &mut out);
                flows.recycle(&mut out);
            }
            flows.on_downlink(&tcp(i, SYN | ACK, true), wifi, now);
            let _ = flows.on_tun_packet(&tcp(i, ACK, false), now);
        }
        meter.harvest(flows.paft(), Instant::from_duration(now));
        peak = peak.max(live());
        for i in opened..end {
            let _ = flows.on_tun_packet(&tcp(i, FIN | ACK, false), now);
            flows.on_downlink(&tcp(i, FIN | ACK, true), wifi, now);
        }
        now += Duration::from_secs(11);
        flows.housekeeping(now);
        meter.harvest_removed(flows.expired(), Instant::from_duration(now));
        opened = end;
    }
    now += Duration::from_secs(11);
    flows.housekeeping(now);
    meter.harvest_removed(flows.expired(), Instant::from_duration(now));
    meter.harvest(flows.paft(), Instant::from_duration(now));
    println!(
        "  {n} flows: heap {} before, {} at the peak ({} flows live), {} after expiry ({} live)",
        mib(before),
        mib(peak),
        batch,
        mib(live()),
        flows.paft().len()
    );
    now
}

/// The heap of a bare PAFT holding `n` flows, and after they are removed.
fn paft_alone(n: u32) {
    let before = live();
    let mut paft = Paft::new(Config::default());
    let now = Duration::from_secs(1);
    let wifi = UplinkId::new(0).expect("uplink 0");
    for i in 0..n {
        let key = parse_packet(&tcp(i, SYN, false)).expect("valid packet").key;
        let _ = paft.insert(
            key,
            NewFlow {
                app: "curl".into(),
                uid: None,
                uplink: wifi,
                pinned: false,
            },
            now,
        );
    }
    let full = live() - before;
    let mut out = Vec::new();
    paft.expire(now + Duration::from_secs(3600), &mut out);
    let out_bytes = out.capacity() * std::mem::size_of::<(upmt_paft::FlowKey, upmt_paft::Entry)>();
    drop(out);
    println!(
        "  bare PAFT, {n} flows: {} ({} B/flow); Entry {} B; after expiry {} (+ the expired list's {})",
        mib(full),
        full / n.max(1) as usize,
        std::mem::size_of::<upmt_paft::Entry>(),
        mib(live() - before),
        mib(out_bytes),
    );
}

fn main() {
    let counts: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![10_000, 100_000]
    } else {
        counts
    };
    println!("components:");
    for &n in &counts {
        paft_alone(n.min(65_536));
    }
    for &n in &counts {
        let base = live();
        let policy = Policy::parse(POLICY, "policy.toml", &["wifi", "cell"]).expect("policy");
        let mut flows = Flows::new(policy);
        let mut meter = Meter::new(
            vec!["wifi".into(), "cell".into()],
            vec![None, None],
            Instant::ZERO,
        );
        meter.set_clock(1_800_000_000, 0, Instant::ZERO);
        println!("MH core (Flows + usage Meter), round 1 and 2:");
        let t = round(&mut flows, &mut meter, n, Duration::from_secs(1));
        round(&mut flows, &mut meter, n, t);
        let with_meter = live() - base;
        drop(meter);
        let flows_only = live() - base;
        drop(flows);
        println!(
            "  kept after the rounds: {} (Flows {}, usage Meter {})",
            mib(with_meter),
            mib(flows_only),
            mib(with_meter - flows_only)
        );
    }
    println!(
        "peak heap of the whole run: {}",
        mib(PEAK.load(Ordering::Relaxed))
    );
}
