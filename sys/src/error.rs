//! An error and its causes on one line, for logs and for the daemons' last words.

/// `error: cause: cause` on one line (the same text as anyhow's `{:#}`).
pub fn display_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_is_one_line_outermost_first() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(display_chain(&e), "cannot load: disk on fire");
        assert_eq!(
            display_chain(&std::io::Error::other("alone")),
            "alone",
            "no cause, no colon"
        );
    }
}
