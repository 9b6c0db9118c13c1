//! `loupectl top`: a live terminal view of a running loupe. Every refresh asks the
//! daemon, over the control socket, for its counters, its live sessions and the tails of
//! the decryption log and of the EVE `http` events; [`model`] turns them into rates,
//! top lists and failures, [`view`] draws them.

mod model;
mod view;

use std::path::Path;
use std::time::{Duration, Instant};

use loupe_control::client::{ClientError, ControlClient};
use loupe_control::protocol::{Request, SessionFilter};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use model::{Dashboard, Sample};

/// Decryption-log records and HTTP events each refresh reads for the top lists: enough
/// for a few seconds of a busy appliance, little for the daemon to read from the end of
/// its files.
const RECENT_RECORDS: usize = 500;
/// Live sessions asked for (the daemon's list is newest first).
const LIVE_SESSIONS: usize = 1000;

/// The daemon's side of a refresh: one connection, made again when it breaks.
struct Source<'a> {
    socket: &'a Path,
    client: Option<ControlClient>,
}

impl Source<'_> {
    fn sample(&mut self) -> Result<Sample, ClientError> {
        let client = match &mut self.client {
            Some(client) => client,
            None => self.client.insert(ControlClient::connect(self.socket)?),
        };
        let result = sample_from(client);
        if result.is_err() {
            // A broken connection (the daemon restarted, or the idle timeout closed it
            // while a long interval passed) is made again on the next refresh.
            self.client = None;
        }
        result
    }
}

fn sample_from(client: &mut ControlClient) -> Result<Sample, ClientError> {
    let tail = |errors: bool, http: bool, lines: usize| Request::LogTail {
        follow: false,
        errors,
        sni: None,
        lines,
        http,
    };
    Ok(Sample {
        counters: client.call(Request::Counters)?,
        sessions: client.call(Request::Sessions {
            filter: SessionFilter {
                limit: Some(LIVE_SESSIONS),
                ..SessionFilter::default()
            },
        })?,
        records: client.call(tail(false, false, RECENT_RECORDS))?,
        failures: client.call(tail(true, false, model::FAILURES_KEPT))?,
        http: client.call(tail(false, true, RECENT_RECORDS))?,
    })
}

/// Runs the view until `q`, Esc or Ctrl-C. Errors are one line for loupectl to print;
/// when the daemon cannot be reached at all, the terminal is never touched.
pub fn run(socket: &Path, interval: Duration) -> Result<(), String> {
    let mut source = Source { socket, client: None };
    let mut dashboard = Dashboard::new(socket.display().to_string(), interval);
    // The first refresh happens before the terminal changes mode, so that "no daemon"
    // is a plain line on a terminal left as it was.
    let first = source.sample().map_err(|e| e.to_string())?;
    dashboard.update(&first, Duration::ZERO)?;

    // ratatui::try_init enters raw mode and the alternate screen and installs a panic
    // hook that restores the terminal before the panic message is printed.
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot set up the terminal: {e}"))?;
    let outcome = watch(&mut terminal, &mut source, &mut dashboard);
    ratatui::restore();
    outcome
}

fn watch(
    terminal: &mut ratatui::DefaultTerminal,
    source: &mut Source,
    dashboard: &mut Dashboard,
) -> Result<(), String> {
    let interval = dashboard.interval;
    // When the daemon was last asked, and when it last answered: rates are over the
    // time between two answers, however many refreshes failed in between.
    let mut asked_at = Instant::now();
    let mut answered_at = asked_at;
    loop {
        terminal
            .draw(|frame| view::draw(frame, dashboard))
            .map_err(|e| format!("drawing: {e}"))?;
        let wait = (asked_at + interval).saturating_duration_since(Instant::now());
        if event::poll(wait).map_err(|e| format!("reading the keyboard: {e}"))? {
            match event::read().map_err(|e| format!("reading the keyboard: {e}"))? {
                Event::Key(key) if key.kind != KeyEventKind::Release => match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    // Raw mode turns Ctrl-C into a key rather than SIGINT.
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                    KeyCode::Down | KeyCode::Char('j') => dashboard.select_older(),
                    KeyCode::Up | KeyCode::Char('k') => dashboard.select_newer(),
                    _ => {}
                },
                // A resize, a focus change: the next draw uses the new size.
                _ => {}
            }
            continue;
        }
        asked_at = Instant::now();
        let refreshed = source
            .sample()
            .map_err(|e| e.to_string())
            .and_then(|sample| dashboard.update(&sample, asked_at.duration_since(answered_at)));
        match refreshed {
            Ok(()) => answered_at = asked_at,
            Err(problem) => {
                // Keep the last figures on screen and say why they are not moving; the
                // next refresh tries again (a restarted daemon is picked up).
                dashboard.problem = Some(format!("{problem}; retrying every {:.1}s", interval.as_secs_f64()));
                dashboard.rates = None;
            }
        }
    }
}

/// The `--interval` value: seconds, 0.2 to 60.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.2..=60.0).contains(&seconds) {
        return Err(format!("{text} s is outside 0.2 to 60 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}
