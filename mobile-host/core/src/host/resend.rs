//! Resending a down path's recent packets on the paths its flows moved to (see
//! [`upmt_proto::resend`]): after the flows are decided again, every packet the path carried
//! within the ring's bounds whose flow now lives on another usable uplink goes out there at
//! once, so TCP sees its data (or a duplicate the anchor drops) instead of waiting for its
//! retransmission timer.

use upmt_paft::parse_key_lenient;
use upmt_proto::PathId;
use upmt_proto::time::Instant;

use super::MobileHost;
use crate::uplinks::Uplinks;

impl MobileHost {
    /// Marks the recent packets of every path that went down since the last call for their
    /// flows' new paths; `poll_transmit` sends them.
    pub(super) fn resend_moved(&mut self, now: Instant) {
        let from = std::mem::take(&mut self.moved_off);
        for path in from {
            let (paft, links) = (self.flows.paft(), &self.links);
            let n = self.client.resend_moved(path, now, |packet| {
                let key = parse_key_lenient(packet).ok()?;
                let uplink = paft.lookup(&key)?.uplink();
                let link = links.get(Uplinks::index(uplink))?;
                (link.available && link.live).then(|| Uplinks::path(uplink))
            });
            if n > 0 {
                tracing::info!(%path, packets = n, "resending the moved flows' recent packets");
            }
        }
    }

    /// Bytes resent on `path` so far.
    pub(super) fn resent_bytes(&self, path: PathId) -> u64 {
        self.client.resent_bytes(path)
    }
}
