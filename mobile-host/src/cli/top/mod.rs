//! `upmt top`: a live view of the mobile host, like `top` for its tunnels and apps. Once per
//! interval it asks the daemon for its status and apps (the same requests as `upmt status` and
//! `upmt apps`) and follows its event stream (`upmt watch`) on a second connection.
//!
//! The figures are a pure [`model::Model`] (rates from counter deltas, history, sorting), drawn
//! by [`view::draw`]; this module only does the IO: the terminal (ratatui over crossterm, raw
//! mode on the alternate screen, restored on every way out, panics included), the keys (`q`,
//! Esc or Ctrl-C quit), and the daemon. `--frames N` prints N frames as plain text instead,
//! for scripts and tests, without touching the terminal.

pub mod model;
pub mod view;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ratatui::Terminal;
use ratatui::backend::{CrosstermBackend, TestBackend};
use ratatui::crossterm::event::{self as term_event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};
use tokio::sync::mpsc;

use crate::control::client::Client;
use crate::control::proto::{Event, Request, Response};
use model::Model;

/// The size `--frames` renders at when standard output is not a terminal.
const PLAIN_SIZE: (u16, u16) = (100, 30);

/// Runs the live view until a quit key (or, with `frames`, prints that many frames).
pub async fn run(
    socket: &Path,
    client: &mut Client,
    interval: Duration,
    frames: Option<u32>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let events = follow_events(socket).await?;
    match frames {
        Some(n) => plain(socket, client, events, interval, n, out).await,
        None => live(socket, client, events, interval).await,
    }
}

/// Events from a second connection, read on their own task so a poll never cuts one in half.
async fn follow_events(socket: &Path) -> anyhow::Result<mpsc::Receiver<Event>> {
    let mut watcher = Client::connect(socket).await?;
    watcher.watch().await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok(Some(event)) = watcher.next_event().await {
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// One poll into the model; a failure is shown, not fatal: the daemon may be restarting, so
/// the next poll goes over a new connection when one can be had.
async fn poll(socket: &Path, client: &mut Client, model: &mut Model, at: Duration) {
    let status = client.request(Request::Status).await;
    let apps = client.request(Request::Apps).await;
    match (status, apps) {
        (Ok(Response::Status(s)), Ok(Response::Apps(a))) => model.update(&s, &a, at),
        (Err(e), _) | (_, Err(e)) => {
            model.failed(e.to_string());
            if let Ok(fresh) = Client::connect(socket).await {
                *client = fresh;
            }
        }
        _ => model.failed("unexpected answer from the daemon".to_owned()),
    }
}

/// Takes the events that arrived meanwhile.
fn take_events(events: &mut mpsc::Receiver<Event>, model: &mut Model, at: Duration) {
    while let Ok(e) = events.try_recv() {
        model.event(&e, at);
    }
}

async fn plain(
    socket: &Path,
    client: &mut Client,
    mut events: mpsc::Receiver<Event>,
    interval: Duration,
    frames: u32,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (width, height) = terminal::size().unwrap_or(PLAIN_SIZE);
    let mut terminal = Terminal::new(TestBackend::new(width, height))?;
    let mut model = Model::default();
    let start = Instant::now();
    for frame in 0..frames {
        if frame > 0 {
            tokio::time::sleep(interval).await;
        }
        poll(socket, client, &mut model, start.elapsed()).await;
        take_events(&mut events, &mut model, start.elapsed());
        terminal.draw(|f| view::draw(f, &model))?;
        for line in view::text(terminal.backend().buffer()) {
            writeln!(out, "{line}")?;
        }
        writeln!(out)?;
        out.flush()?;
    }
    Ok(())
}

/// The terminal in raw mode on the alternate screen; put back when dropped, whatever the way
/// out (an error, a quit key, or a panic, which also runs drops while unwinding).
struct Screen;

impl Screen {
    fn enter() -> anyhow::Result<Screen> {
        terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        // From here on the guard restores whatever the rest did.
        let screen = Screen;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )
        .context("cannot switch to the alternate screen")?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            terminal::LeaveAlternateScreen,
            cursor::Show
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// What the key thread reports.
enum Input {
    Quit,
    Redraw,
}

/// Reads keys on a thread (crossterm's reads block); it ends when the loop is gone.
fn keys() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || {
        while !tx.is_closed() {
            match term_event::poll(Duration::from_millis(200)) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => break,
            }
            let input = match term_event::read() {
                Ok(term_event::Event::Key(k)) if k.kind != KeyEventKind::Release => match k.code {
                    KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => Input::Quit,
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        Input::Quit
                    }
                    _ => continue,
                },
                Ok(term_event::Event::Resize(..)) => Input::Redraw,
                Ok(_) => continue,
                Err(_) => Input::Quit,
            };
            if tx.blocking_send(input).is_err() {
                break;
            }
        }
    });
    rx
}

async fn live(
    socket: &Path,
    client: &mut Client,
    mut events: mpsc::Receiver<Event>,
    interval: Duration,
) -> anyhow::Result<()> {
    let screen = Screen::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))
        .context("cannot draw on the terminal")?;
    let mut input = keys();
    let mut model = Model::default();
    let start = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events_open = true;
    loop {
        tokio::select! {
            _ = tick.tick() => poll(socket, client, &mut model, start.elapsed()).await,
            e = events.recv(), if events_open => match e {
                Some(e) => model.event(&e, start.elapsed()),
                None => {
                    events_open = false;
                    model.failed("the daemon ended the event stream".to_owned());
                }
            },
            i = input.recv() => match i {
                Some(Input::Redraw) => {}
                Some(Input::Quit) | None => break,
            },
        }
        terminal
            .draw(|f| view::draw(f, &model))
            .context("cannot draw on the terminal")?;
    }
    drop(terminal);
    drop(screen);
    Ok(())
}
