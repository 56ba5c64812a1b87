//! Handshake inits: the flood defences in front of the DH, then the response.

use super::{Anchor, Queued};
use crate::cookie::Verdict;
use crate::crypto::{Keypair, random_index};
use crate::handshake::{Response, check_mac1};
use crate::time::Instant;
use crate::wire::{self, COOKIE_REPLY_LEN, HandshakeRespRepr, RESP_LEN};
use crate::{Cipher, DropReason, SessionIndex, SessionParams};
use std::net::SocketAddr;

impl Anchor {
    pub(super) fn handle_init(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        // Cheap checks first: length and mac1 (one BLAKE2s), then load and mac2, then per-IP.
        check_mac1(&self.mac1_key, datagram)?;
        let view = wire::HandshakeInit::new_checked(datagram)?;
        let (path, sender_index) = (view.path(), view.sender_index());
        if self.limiter.under_load(now) && !self.cookies.check_mac2(from.ip(), datagram, now) {
            self.queues.room_for_transmit()?;
            let mut bytes = [0u8; COOKIE_REPLY_LEN];
            self.cookies.write_reply(
                from.ip(),
                &view.mac1(),
                path,
                sender_index,
                &mut bytes,
                now,
            )?;
            self.queues.push_transmit(Queued::Cookie {
                bytes,
                path,
                dst: from,
            })?;
            self.stats.cookies_sent = self.stats.cookies_sent.saturating_add(1);
            return Err(DropReason::CookieRequired);
        }
        match self.limiter.check_ip(from.ip(), now) {
            Verdict::Allow => {}
            Verdict::RateLimited => return Err(DropReason::RateLimited),
            Verdict::TableFull => {
                self.stats.rate_limit_table_full =
                    self.stats.rate_limit_table_full.saturating_add(1);
                return Err(DropReason::RateLimited);
            }
        }
        // The response must fit in the queue: check before spending the DH.
        self.queues.room_for_transmit()?;
        self.stats.dh_operations = self.stats.dh_operations.saturating_add(1);
        let resp = Response::read_init(&self.config.static_secret, &self.mac1_key, datagram)?;
        let id = *self
            .by_key
            .get(&resp.initiator)
            .ok_or(DropReason::UnknownPeer)?;
        let peer = &self.peers[id.0 as usize];
        if peer.last_timestamp.is_some_and(|t| resp.timestamp <= t) {
            return Err(DropReason::StaleTimestamp);
        }
        let timestamp = resp.timestamp;
        let params = SessionParams {
            virtual_ipv4: peer.config.virtual_ipv4,
            prefix4: self.config.prefix4,
            virtual_ipv6: peer.config.virtual_ipv6,
            prefix6: self.config.prefix6,
            mtu: self.config.mtu,
            cipher: Cipher::negotiate(resp.offers_aes256gcm, self.config.fast_aes),
        };
        let mut bytes = [0u8; RESP_LEN];
        let (send, recv) = resp.write_resp(&params, &mut bytes)?;
        let mut local_index = random_index(timestamp);
        while local_index.0 == 0 || self.by_index.contains_key(&local_index.0) {
            local_index = SessionIndex(local_index.0.wrapping_add(0x9e37_79b9));
        }
        HandshakeRespRepr {
            path,
            sender_index: local_index,
            receiver_index: sender_index,
        }
        .emit(&mut wire::HandshakeResp::new_unchecked(&mut bytes[..]));
        let peer = &mut self.peers[id.0 as usize];
        peer.last_timestamp = Some(timestamp);
        if let Some(old) = peer.next.take() {
            self.by_index.remove(&old.local_index.0);
        }
        peer.next = Some(Box::new(Keypair::new(
            params.cipher,
            &send,
            &recv,
            local_index,
            sender_index,
            now,
        )));
        peer.origin = Some((local_index, path, from));
        self.by_index.insert(local_index.0, id);
        self.schedule_expiry(id);
        self.queues.push_transmit(Queued::Resp {
            bytes,
            path,
            dst: from,
        })
    }
}
