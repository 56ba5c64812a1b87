//! Redundant flows: the flows whose rule says `redundant = true` get a second uplink, and every
//! packet of theirs goes over both (the anchor does the same for their downlink, once told; the
//! receivers drop the second copy, see `upmt_proto::dup`).
//!
//! This table only knows which flow has which second uplink, which of those changed since the
//! host last told the anchor, and how many bytes the copies cost per app. The per-packet cost
//! for a flow that is not redundant is one `is_empty` check while no flow is redundant, one map
//! lookup otherwise. The counts per app outlive the flows (a call's cost must not vanish when
//! the call ends).

use std::collections::{BTreeMap, HashMap};

use upmt_paft::{AppId, FlowId, UplinkId};

use crate::api::AppsReply;

/// One redundant flow.
#[derive(Clone, Debug)]
struct Second {
    uplink: UplinkId,
    app: AppId,
}

/// What the copies of one app's packets cost so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DuplicateCost {
    /// Second copies sent (uplink direction; the anchor counts its own).
    pub packets: u64,
    /// Their bytes, whole datagrams.
    pub bytes: u64,
}

/// Apps whose cost is kept; past this, the app with the least cost is forgotten first.
const MAX_APPS: usize = 1024;

/// The redundant flows and their cost.
#[derive(Default)]
pub struct Redundancy {
    second: HashMap<FlowId, Second>,
    /// Flows whose second uplink changed (or went away) since [`Redundancy::take_changed`].
    changed: Vec<FlowId>,
    cost: BTreeMap<AppId, DuplicateCost>,
}

impl Redundancy {
    /// No flow is redundant.
    pub fn is_empty(&self) -> bool {
        self.second.is_empty()
    }

    /// The second uplink of `flow`, if it is redundant.
    pub fn second(&self, flow: FlowId) -> Option<UplinkId> {
        self.second.get(&flow).map(|s| s.uplink)
    }

    /// Records `flow`'s second uplink (`None`: not redundant); remembers a change.
    pub fn set(&mut self, flow: FlowId, app: &AppId, second: Option<UplinkId>) {
        let before = self.second(flow);
        if before == second {
            return;
        }
        match second {
            Some(uplink) => {
                self.second.insert(
                    flow,
                    Second {
                        uplink,
                        app: app.clone(),
                    },
                );
            }
            None => {
                self.second.remove(&flow);
            }
        }
        self.changed.push(flow);
    }

    /// Forgets flows that `alive` says are gone (expired, blocked).
    pub fn retain(&mut self, mut alive: impl FnMut(FlowId) -> bool) {
        self.second.retain(|id, _| alive(*id));
    }

    /// The flows whose second uplink changed since the last call, to tell the anchor.
    pub fn take_changed(&mut self, out: &mut Vec<FlowId>) {
        out.append(&mut self.changed);
    }

    /// A second copy of `bytes` went out for `flow`.
    pub fn count_copy(&mut self, flow: FlowId, bytes: usize) {
        let Some(s) = self.second.get(&flow) else {
            return;
        };
        if !self.cost.contains_key(&s.app) && self.cost.len() >= MAX_APPS {
            let cheapest = self
                .cost
                .iter()
                .min_by_key(|(_, c)| c.bytes)
                .map(|(a, _)| a.clone());
            if let Some(a) = cheapest {
                self.cost.remove(&a);
            }
        }
        let c = self.cost.entry(s.app.clone()).or_default();
        c.packets = c.packets.saturating_add(1);
        c.bytes = c.bytes.saturating_add(bytes as u64);
    }

    /// What the copies of `app`'s packets cost so far.
    pub fn cost(&self, app: &AppId) -> DuplicateCost {
        self.cost.get(app).copied().unwrap_or_default()
    }

    /// Every app with a cost, by name.
    pub fn costs(&self) -> impl Iterator<Item = (&AppId, &DuplicateCost)> + '_ {
        self.cost.iter()
    }
}

/// Puts each app's cost in an apps reply.
pub fn fill_costs(r: &Redundancy, reply: &mut AppsReply) {
    for app in &mut reply.apps {
        app.duplicated_bytes = r.cost(&AppId::from(app.name.as_str())).bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(i: u8) -> UplinkId {
        UplinkId::new(i).unwrap()
    }

    #[test]
    fn changes_are_reported_once_and_only_when_the_second_uplink_changes() {
        let mut r = Redundancy::default();
        let app = AppId::from("call");
        r.set(FlowId(1), &app, Some(up(1)));
        r.set(FlowId(1), &app, Some(up(1)));
        r.set(FlowId(2), &app, None);
        let mut out = Vec::new();
        r.take_changed(&mut out);
        assert_eq!(out, [FlowId(1)]);
        r.set(FlowId(1), &app, None);
        out.clear();
        r.take_changed(&mut out);
        assert_eq!(out, [FlowId(1)]);
        assert!(r.is_empty());
    }

    #[test]
    fn the_cost_per_app_outlives_its_flows() {
        let mut r = Redundancy::default();
        let app = AppId::from("call");
        r.set(FlowId(7), &app, Some(up(0)));
        r.count_copy(FlowId(7), 100);
        r.count_copy(FlowId(7), 50);
        r.count_copy(FlowId(8), 1000);
        r.retain(|_| false);
        assert_eq!(r.second(FlowId(7)), None);
        assert_eq!(
            r.cost(&app),
            DuplicateCost {
                packets: 2,
                bytes: 150
            }
        );
    }
}
