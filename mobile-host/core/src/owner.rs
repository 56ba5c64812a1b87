//! Who owns a flow, as the app lookup found it: plain data the driver's lookup fills in and the
//! policy decides on.

use std::sync::Arc;

/// How the owner was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The socket's process (cmdline).
    Process,
    /// The socket's uid is one Android package's own (or its SDK sandbox's): named from
    /// packages.list without looking at any process.
    Package,
    /// Only the socket's uid (process not found), named by packages.list if at all.
    Uid,
    /// No socket matched (gone, ICMP, or lookup failed): the default rule applies.
    Unknown,
}

/// A flow's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// App name: Android package, Linux program name.
    pub name: Option<Arc<str>>,
    /// The socket's uid.
    pub uid: Option<u32>,
    /// The process that holds the socket.
    pub pid: Option<u32>,
    /// How it was found.
    pub source: Source,
}

impl Owner {
    /// The owner of a flow nothing is known about.
    pub fn unknown() -> Owner {
        Owner {
            name: None,
            uid: None,
            pid: None,
            source: Source::Unknown,
        }
    }
}
