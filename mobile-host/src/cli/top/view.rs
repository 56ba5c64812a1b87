//! How `upmt top` draws its [`Model`]: a header line, the uplinks (state, RTT, loss, rate and a
//! rate history), the apps by current rate with their uplink, and the latest events. A pure
//! function of the model and the frame's size, so snapshot tests render it on ratatui's
//! `TestBackend`. Plain colours only (the 8 ANSI ones), no mouse, nothing wider than the
//! terminal: on a small screen the events, then the history and interface columns, give way.

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table};

use super::model::{Model, UplinkView};
use crate::cli::table;
use crate::control::proto::TunnelState;

/// Below this width the interface and history columns are left out.
const WIDE: u16 = 64;
/// The eight levels of a sparkline cell.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, model: &Model) {
    let area = frame.area();
    let uplink_rows = model.uplinks.len() as u16 + 1;
    let rest = area.height.saturating_sub(1 + uplink_rows);
    // Events get up to a third of what is left once the apps have room for a few rows.
    let events = if rest >= 8 && !model.events.is_empty() {
        (model.events.len() as u16 + 1).min(rest / 3)
    } else {
        0
    };
    let [header, uplinks, apps, events_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(uplink_rows),
        Constraint::Min(0),
        Constraint::Length(events),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(model)), header);
    draw_uplinks(frame, model, uplinks);
    draw_apps(frame, model, apps);
    if events > 0 {
        draw_events(frame, model, events_area);
    }
}

fn header_line(model: &Model) -> Line<'static> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let mut spans = vec![Span::styled("upmt top", bold), Span::raw("  ")];
    match &model.error {
        Some(e) => spans.push(Span::styled(e.clone(), Style::new().fg(Color::Red))),
        None if model.anchor.is_empty() => spans.push(Span::raw("waiting for the daemon")),
        None if model.connected => spans.push(Span::raw(format!("connected to {}", model.anchor))),
        None => spans.push(Span::styled(
            format!("handshaking with {}", model.anchor),
            Style::new().fg(Color::Yellow),
        )),
    }
    spans.push(Span::raw("  (q quits)"));
    Line::from(spans)
}

fn state(s: TunnelState) -> Span<'static> {
    match s {
        TunnelState::Up => Span::styled("up", Style::new().fg(Color::Green)),
        TunnelState::Probing => Span::styled("probing", Style::new().fg(Color::Yellow)),
        TunnelState::Down => Span::styled("down", Style::new().fg(Color::Red)),
    }
}

/// A bytes-per-second figure.
pub fn rate(bytes_per_s: u64) -> String {
    format!("{}/s", table::bytes(bytes_per_s))
}

/// The last `width` samples as bars scaled to the largest of them; empty before any sample.
pub fn sparkline(samples: &[u64], width: usize) -> String {
    let skip = samples.len().saturating_sub(width);
    let shown = &samples[skip..];
    let max = shown.iter().copied().max().unwrap_or(0);
    shown
        .iter()
        .map(|&v| {
            if max == 0 {
                BARS[0]
            } else {
                let level = (v as f64 / max as f64 * (BARS.len() - 1) as f64).round() as usize;
                BARS[level.min(BARS.len() - 1)]
            }
        })
        .collect()
}

fn draw_uplinks(frame: &mut Frame, model: &Model, area: Rect) {
    let wide = area.width >= WIDE;
    // The fixed columns take 46 cells wide (39 narrow); the history fills the rest.
    let history = usize::from(area.width.saturating_sub(48)).min(super::model::HISTORY);
    let header = if wide {
        vec!["uplink", "iface", "state", "rtt", "loss", "rate", "history"]
    } else {
        vec!["uplink", "state", "rtt", "loss", "rate"]
    };
    let rows = model.uplinks.iter().map(|u: &UplinkView| {
        let rtt = table::rtt(u.rtt.map(|d| d.as_micros() as u64));
        let loss = match u.state {
            TunnelState::Down => "-".to_owned(),
            _ => table::loss(u.loss),
        };
        let mut cells = vec![Line::from(u.name.clone())];
        if wide {
            cells.push(Line::from(u.interface.clone()));
        }
        cells.extend([
            Line::from(state(u.state)),
            Line::from(rtt),
            Line::from(loss),
            Line::from(rate(u.rate)),
        ]);
        if wide {
            cells.push(Line::styled(
                sparkline(&u.history.last(history), history),
                Style::new().fg(Color::Cyan),
            ));
        }
        Row::new(cells)
    });
    let widths: Vec<Constraint> = if wide {
        vec![
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(4),
            Constraint::Length(11),
            Constraint::Fill(1),
        ]
    } else {
        vec![
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(4),
            Constraint::Fill(1),
        ]
    };
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .column_spacing(1);
    frame.render_widget(table, area);
}

fn draw_apps(frame: &mut Frame, model: &Model, area: Rect) {
    let wide = area.width >= WIDE;
    let mut header = vec!["app", "uplink", "flows", "rate"];
    if wide {
        header.push("bytes");
    }
    let rows = model.apps.iter().map(|a| {
        let uplink = if a.uplinks.is_empty() {
            "-".to_owned()
        } else {
            a.uplinks.join(",")
        };
        let mut cells = vec![a.name.clone(), uplink, a.flows.to_string(), rate(a.rate)];
        if wide {
            cells.push(table::bytes(a.bytes));
        }
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Fill(1),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(11),
    ];
    if wide {
        widths.push(Constraint::Length(10));
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .column_spacing(1);
    frame.render_widget(table, area);
}

fn draw_events(frame: &mut Frame, model: &Model, area: Rect) {
    let shown = usize::from(area.height.saturating_sub(1));
    let skip = model.events.len().saturating_sub(shown);
    let mut lines = vec![Line::styled(
        "events",
        Style::new().add_modifier(Modifier::BOLD),
    )];
    lines.extend(
        model
            .events
            .iter()
            .skip(skip)
            .map(|(at, text)| Line::from(format!("{at:>7.1} s  {text}"))),
    );
    frame.render_widget(Paragraph::new(lines), area);
}

/// A rendered buffer as plain text lines (trailing spaces cut), for `--frames` and tests.
pub fn text(buffer: &Buffer) -> Vec<String> {
    let area = buffer.area;
    (0..area.height)
        .map(|y| {
            let mut line = String::new();
            for x in 0..area.width {
                line.push_str(buffer[(area.x + x, area.y + y)].symbol());
            }
            line.trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::cli::top::model::tests::{app, status, tunnel};
    use crate::control::proto::{AppsReply, Event, MoveReason};

    const S: Duration = Duration::from_secs(1);

    /// Wifi up and busy, cell down; three apps; one handover.
    fn model() -> Model {
        let mut m = Model::default();
        let mut bytes = 0;
        for i in 1..=5u32 {
            bytes += u64::from(i) * 100_000;
            let st = status(vec![
                tunnel("wifi", TunnelState::Up, bytes),
                tunnel("cell", TunnelState::Down, 0),
            ]);
            let apps = AppsReply {
                apps: vec![
                    app("curl", "wifi", u64::from(i) * 40_000),
                    app("com.example.video", "wifi", u64::from(i) * 300_000),
                    app("ntpd", "wifi", 76),
                ],
            };
            m.update(&st, &apps, S * i);
        }
        m.event(
            &Event::TunnelDown {
                uplink: "cell".into(),
            },
            Duration::from_millis(2500),
        );
        m.event(
            &Event::FlowMoved {
                flow: 7,
                app: "curl".into(),
                from: Some("cell".into()),
                to: "wifi".into(),
                reason: MoveReason::UplinkDown,
            },
            Duration::from_millis(2600),
        );
        m
    }

    fn render(m: &Model, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        terminal.draw(|f| draw(f, m)).expect("draw");
        text(terminal.backend().buffer())
    }

    #[test]
    fn a_wide_screen_shows_uplinks_with_history_apps_by_rate_and_events() {
        let lines = render(&model(), 80, 14);
        let expected = [
            "upmt top  connected to 203.0.113.2:51900  (q quits)",
            "uplink   iface    state   rtt      loss rate        history",
            "wifi     wifi0    up      12.3 ms  2%   488.3 KiB/s ▄▅▇█",
            "cell     cell0    down    -        -    0 B/s       ▁▁▁▁",
            "app                                      uplink     flows rate        bytes",
            "com.example.video                        wifi       1     293.0 KiB/s 1.4 MiB",
            "curl                                     wifi       1     39.1 KiB/s  195.3 KiB",
            "ntpd                                     wifi       1     0 B/s       76 B",
            "",
            "",
            "",
            "events",
            "    2.5 s  tunnel cell down",
            "    2.6 s  flow 7 (curl) moved cell -> wifi: its uplink went down",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
    }

    #[test]
    fn a_small_screen_drops_the_events_and_the_wide_columns_and_cuts_the_apps() {
        let lines = render(&model(), 40, 6);
        let expected = [
            "upmt top  connected to 203.0.113.2:51900",
            "uplink   state   rtt      loss rate",
            "wifi     up      12.3 ms  2%   488.3 KiB",
            "cell     down    -        -    0 B/s",
            "app         uplink     flows rate",
            "com.example wifi       1     293.0 KiB/s",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
    }

    #[test]
    fn before_the_first_poll_the_screen_says_it_waits_and_errors_show_in_the_header() {
        let lines = render(&Model::default(), 60, 4);
        assert_eq!(lines[0], "upmt top  waiting for the daemon  (q quits)");
        let mut m = model();
        m.failed("daemon not running (no socket at /run/upmt/mh.sock)".into());
        let lines = render(&m, 100, 10);
        assert!(
            lines[0].starts_with("upmt top  daemon not running (no socket at /run/upmt/mh.sock)"),
            "{lines:?}"
        );
        // The last good figures stay.
        assert!(lines[2].starts_with("wifi"), "{lines:?}");
    }

    #[test]
    fn a_tiny_screen_still_draws_what_fits_without_panicking() {
        for (w, h) in [(1, 1), (12, 2), (20, 3), (200, 1)] {
            let lines = render(&model(), w, h);
            assert_eq!(lines.len(), usize::from(h));
            assert!(
                lines[0].starts_with(&"upmt top"[..usize::from(w).min(8)]),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn sparklines_scale_to_their_largest_sample_and_keep_the_newest() {
        assert_eq!(sparkline(&[0, 1, 2, 4, 8], 5), "▁▂▃▅█");
        assert_eq!(sparkline(&[8, 0, 0, 0, 0], 5), "█▁▁▁▁");
        assert_eq!(sparkline(&[9, 1, 2], 2), "▅█");
        assert_eq!(sparkline(&[0, 0], 4), "▁▁");
        assert_eq!(sparkline(&[], 4), "");
    }
}
