//! Human output shared by the subcommands: aligned tables (text left, numbers right, two spaces
//! between columns, no trailing blanks) and units (bytes in B/KiB/MiB/GiB, RTT in ms, age in s).
//! Pure functions of their input, so the commands' output is tested as text.

use std::fmt::Write as _;
use std::time::Duration;

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table built row by row, rendered with [`Table::render`].
#[derive(Clone, Debug)]
pub struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[(&'static str, Align)]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header line and every row, each ending in a newline.
    pub fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([self.headers[i].0.len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.0.to_owned()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (&(_, align), &w)) in self.headers.iter().zip(&widths).enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = w.saturating_sub(cell.chars().count());
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// Bytes in binary units: "512 B", "1.5 KiB", "3.0 MiB", "2.25 GiB" (one decimal, two at GiB).
pub fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let x = n as f64;
    if n < 1024 {
        format!("{n} B")
    } else if x < KIB * KIB {
        format!("{:.1} KiB", x / KIB)
    } else if x < KIB * KIB * KIB {
        format!("{:.1} MiB", x / (KIB * KIB))
    } else {
        format!("{:.2} GiB", x / (KIB * KIB * KIB))
    }
}

/// A round-trip time in milliseconds, or "-" when none was measured.
pub fn rtt(us: Option<u64>) -> String {
    match us {
        Some(us) => format!("{:.1} ms", us as f64 / 1000.0),
        None => "-".to_owned(),
    }
}

/// A loss fraction as a percentage.
pub fn loss(fraction: f32) -> String {
    format!("{:.0}%", (fraction.clamp(0.0, 1.0) * 100.0).round())
}

/// An age in whole seconds below an hour, then "1h02m".
pub fn age(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    let s = d.as_secs();
    if s < 3600 {
        format!("{s} s")
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// An optional value or "-".
pub fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `addr:port`, with brackets around IPv6 addresses.
pub fn endpoint(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units_with_one_decimal() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(bytes(9 * 1024 * 1024 * 1024 / 4), "2.25 GiB");
    }

    #[test]
    fn rtt_loss_and_age_carry_their_units() {
        assert_eq!(rtt(Some(12_345)), "12.3 ms");
        assert_eq!(rtt(None), "-");
        assert_eq!(loss(0.254), "25%");
        assert_eq!(loss(2.0), "100%");
        assert_eq!(age(999), "0 s");
        assert_eq!(age(61_500), "61 s");
        assert_eq!(age(3_725_000), "1h02m");
    }

    #[test]
    fn tables_align_text_left_and_numbers_right_without_trailing_blanks() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("BYTES", Align::Right),
            ("X", Align::Left),
        ]);
        t.row(vec!["wifi".into(), "1.0 KiB".into(), String::new()]);
        t.row(vec!["cellular".into(), "5 B".into(), "y".into()]);
        assert_eq!(
            t.render(),
            "NAME        BYTES  X\n\
             wifi      1.0 KiB\n\
             cellular      5 B  y\n"
        );
    }
}
