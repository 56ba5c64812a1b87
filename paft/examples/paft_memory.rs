//! Prints the heap memory the PAFT uses per flow at 1M flows, counted by a global allocator
//! that tracks live bytes. Run with `cargo run --release -p upmt-paft --example paft_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use upmt_paft::{AppId, Config, Dir, FlowKey, NewFlow, Paft, Timeouts, UplinkId, proto, tcp_flags};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    const N: u32 = 1_000_000;
    let app = AppId::from("com.example.app");
    let uplink = UplinkId::new(0).expect("uplink 0");
    let before = LIVE.load(Ordering::Relaxed);
    let mut t = Paft::new(Config {
        max_flows: N as usize,
        timeouts: Timeouts::default(),
    });
    let start = Instant::now();
    for i in 0..N {
        let [a, b, c, d] = i.to_be_bytes();
        let k = FlowKey {
            proto: proto::TCP,
            src: IpAddr::from([10, a, b, c]),
            dst: IpAddr::from([198, 51, d, c]),
            sport: 32_768 + (i % 28_000) as u16,
            dport: 443,
        };
        let flow = NewFlow {
            app: app.clone(),
            uid: Some(10_000),
            uplink,
            pinned: false,
        };
        if t.insert(k, flow, Duration::ZERO).is_err() {
            eprintln!("insert {i} refused");
            std::process::exit(1);
        }
        t.touch(&k, Dir::Orig, 60, tcp_flags::SYN, None, Duration::ZERO);
    }
    let took = start.elapsed();
    let used = LIVE.load(Ordering::Relaxed) - before;
    println!("flows:               {}", t.len());
    println!(
        "heap bytes:          {used} ({:.1} MiB)",
        used as f64 / (1024.0 * 1024.0)
    );
    println!("bytes per flow:      {:.1}", used as f64 / f64::from(N));
    println!(
        "size_of::<Entry>():  {}",
        std::mem::size_of::<upmt_paft::Entry>()
    );
    println!("size_of::<FlowKey>(): {}", std::mem::size_of::<FlowKey>());
    println!(
        "insert+touch:        {:.0} ns per flow",
        took.as_nanos() as f64 / f64::from(N)
    );
    let mut out = Vec::new();
    let start = Instant::now();
    t.expire(Duration::from_secs(3600), &mut out);
    println!(
        "expire of {} flows:  {:.0} ns per flow",
        out.len(),
        start.elapsed().as_nanos() as f64 / out.len().max(1) as f64
    );
}
