//! The uplinks, named once: one registry maps an uplink's config name to the id every layer
//! uses for it.
//!
//! An uplink's number is its position in the config. It is the PAFT's [`UplinkId`], the
//! protocol's [`PathId`] and the policy's uplink index all at once, so the conversions live here
//! and nowhere else. The data path supports [`MAX_UPLINKS`] (the PAFT's per-flow counters are a
//! fixed array); a registry with more is refused.

use upmt_paft::UplinkId;
use upmt_proto::PathId;

/// The most uplinks the data path carries.
pub const MAX_UPLINKS: usize = upmt_paft::MAX_UPLINKS;

/// A registry with more uplinks than [`MAX_UPLINKS`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{count} uplinks configured; at most {MAX_UPLINKS} are supported")]
pub struct TooManyUplinks {
    /// How many were given.
    pub count: usize,
}

/// Every uplink's name, in config order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplinks {
    names: Vec<String>,
}

impl Uplinks {
    /// The registry for `names`, in config order.
    pub fn new(names: Vec<String>) -> Result<Uplinks, TooManyUplinks> {
        if names.len() > MAX_UPLINKS {
            return Err(TooManyUplinks { count: names.len() });
        }
        Ok(Uplinks { names })
    }

    /// How many uplinks there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every name, in id order (the policy and the control replies index by it).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Every uplink's id, in order.
    pub fn ids(&self) -> impl Iterator<Item = UplinkId> + '_ {
        (0..self.names.len()).filter_map(Self::id_at)
    }

    /// The uplink called `name`.
    pub fn by_name(&self, name: &str) -> Option<UplinkId> {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(Self::id_at)
    }

    /// The name of `uplink`, if it is one of ours.
    pub fn name(&self, uplink: UplinkId) -> Option<&str> {
        self.names.get(Self::index(uplink)).map(String::as_str)
    }

    /// The uplink at `index` (the policy's uplink index), if it exists.
    pub fn at(&self, index: usize) -> Option<UplinkId> {
        (index < self.names.len())
            .then(|| Self::id_at(index))
            .flatten()
    }

    /// The uplink that protocol path `path` runs on, if it is one of ours.
    pub fn by_path(&self, path: PathId) -> Option<UplinkId> {
        self.at(usize::from(path.0))
    }

    /// The protocol path of `uplink`.
    pub fn path(uplink: UplinkId) -> PathId {
        PathId(uplink.get())
    }

    /// The position of `uplink` in the config (the policy's uplink index).
    pub fn index(uplink: UplinkId) -> usize {
        usize::from(uplink.get())
    }

    /// The id numbered `index`, whether or not such an uplink is configured (the policy only
    /// names configured ones).
    pub fn id_for_index(index: usize) -> Option<UplinkId> {
        Self::id_at(index)
    }

    fn id_at(index: usize) -> Option<UplinkId> {
        u8::try_from(index).ok().and_then(UplinkId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Uplinks {
        Uplinks::new(vec!["wifi".into(), "cell".into()]).expect("two fit")
    }

    #[test]
    fn names_ids_paths_and_policy_indexes_agree() {
        let u = two();
        let cell = u.by_name("cell").expect("cell");
        assert_eq!(u.name(cell), Some("cell"));
        assert_eq!(Uplinks::path(cell), PathId(1));
        assert_eq!(u.by_path(PathId(1)), Some(cell));
        assert_eq!(u.at(Uplinks::index(cell)), Some(cell));
        assert_eq!(u.ids().count(), 2);
    }

    #[test]
    fn unknown_names_paths_and_indexes_are_none() {
        let u = two();
        assert_eq!(u.by_name("lte"), None);
        assert_eq!(u.by_path(PathId(2)), None);
        assert_eq!(u.at(7), None);
    }

    #[test]
    fn more_uplinks_than_the_data_path_carries_are_refused() {
        let names: Vec<String> = (0..=MAX_UPLINKS).map(|i| format!("u{i}")).collect();
        assert_eq!(
            Uplinks::new(names),
            Err(TooManyUplinks {
                count: MAX_UPLINKS + 1
            })
        );
        let names: Vec<String> = (0..MAX_UPLINKS).map(|i| format!("u{i}")).collect();
        assert!(Uplinks::new(names).is_ok());
    }
}
