//! `loupectl top`: a live terminal view of a running loupe. Every refresh asks the
//! daemon, over the control socket, for its counters, its live sessions and the tails of
//! the decryption log and of the EVE `http` events; [`model`] turns them into rates,
//! top lists and failures, [`view`] draws them.

mod model;
mod view;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
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
struct Source {
    socket: PathBuf,
    client: Option<ControlClient>,
}

impl Source {
    fn sample(&mut self) -> Result<Sample, ClientError> {
        let client = match &mut self.client {
            Some(client) => client,
            None => self.client.insert(ControlClient::connect(&self.socket)?),
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

/// One refresh the sampler made: when it asked, and what came back.
struct Refresh {
    asked_at: Instant,
    outcome: Result<Sample, String>,
}

/// Asks the daemon every `interval` on a thread of its own, so that a daemon slow to
/// answer (hung, stopped, or busy up to the client's 60 s call timeout) never freezes the
/// view: keys still work, and the view says how long the daemon has been silent. The
/// thread ends at its next refresh after the receiver is dropped (or with the process).
/// Its first refresh is an interval after `last_asked_at`.
fn spawn_sampler(mut source: Source, interval: Duration, mut last_asked_at: Instant) -> mpsc::Receiver<Refresh> {
    let (sender, refreshes) = mpsc::channel();
    std::thread::spawn(move || loop {
        std::thread::sleep((last_asked_at + interval).saturating_duration_since(Instant::now()));
        let asked_at = Instant::now();
        let outcome = source.sample().map_err(|e| e.to_string());
        if sender.send(Refresh { asked_at, outcome }).is_err() {
            return;
        }
        last_asked_at = asked_at;
    });
    refreshes
}

/// How often the view wakes to read keys and refreshes, and to age the silence line.
const TICK: Duration = Duration::from_millis(200);

/// What the view says once the daemon has not answered for `silent`, an interval and a
/// second past the last answer; `None` before.
fn silence_problem(silent: Duration, interval: Duration) -> Option<String> {
    (silent > interval + Duration::from_secs(1)).then(|| {
        format!(
            "the daemon has not answered for {:.0} s (hung or stopped?); still asking",
            silent.as_secs_f64()
        )
    })
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
    let mut source = Source {
        socket: socket.to_path_buf(),
        client: None,
    };
    let mut dashboard = Dashboard::new(socket.display().to_string(), interval);
    // The first refresh happens before the terminal changes mode, so that "no daemon"
    // is a plain line on a terminal left as it was.
    let first_asked_at = Instant::now();
    let first = source.sample().map_err(|e| e.to_string())?;
    dashboard.update(&first, Duration::ZERO)?;
    let refreshes = spawn_sampler(source, interval, first_asked_at);

    // ratatui::try_init enters raw mode and the alternate screen and installs a panic
    // hook that restores the terminal before the panic message is printed.
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot set up the terminal: {e}"))?;
    let outcome = watch(&mut terminal, &refreshes, &mut dashboard, first_asked_at);
    ratatui::restore();
    outcome
}

fn watch(
    terminal: &mut ratatui::DefaultTerminal,
    refreshes: &mpsc::Receiver<Refresh>,
    dashboard: &mut Dashboard,
    first_asked_at: Instant,
) -> Result<(), String> {
    let interval = dashboard.interval;
    // When the daemon last answered a refresh (rates are over the time between two
    // answers, however many refreshes failed in between), and when any refresh last
    // came back at all.
    let mut answered_at = first_asked_at;
    let mut heard_at = Instant::now();
    loop {
        terminal
            .draw(|frame| view::draw(frame, dashboard))
            .map_err(|e| format!("drawing: {e}"))?;
        if event::poll(TICK).map_err(|e| format!("reading the keyboard: {e}"))? {
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
        }
        while let Ok(refresh) = refreshes.try_recv() {
            heard_at = Instant::now();
            let elapsed = refresh.asked_at.duration_since(answered_at);
            match refresh.outcome.and_then(|sample| dashboard.update(&sample, elapsed)) {
                Ok(()) => answered_at = refresh.asked_at,
                Err(problem) => {
                    // Keep the last figures on screen and say why they are not moving; the
                    // next refresh tries again (a restarted daemon is picked up).
                    dashboard.problem = Some(format!("{problem}; retrying every {:.1}s", interval.as_secs_f64()));
                    dashboard.rates = None;
                }
            }
        }
        if let Some(problem) = silence_problem(heard_at.elapsed(), interval) {
            dashboard.problem = Some(problem);
            dashboard.rates = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_reported_an_interval_and_a_second_after_the_last_answer() {
        let interval = Duration::from_secs(2);
        assert_eq!(silence_problem(Duration::from_millis(2900), interval), None);
        let line = silence_problem(Duration::from_secs(12), interval).expect("silent for 12 s");
        assert!(line.contains("not answered for 12 s"), "{line}");
    }
}
