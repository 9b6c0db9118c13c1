//! Draws a [`Dashboard`] with ratatui. Any size works: 80x24 shows every panel; narrower
//! drops columns and the hosts list; too small for anything says so.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::model::{Dashboard, Ranked};

/// Below this the panels cannot hold a line of text each.
const SMALLEST: (u16, u16) = (20, 8);
/// From this width the SNI and host lists stand side by side.
const SIDE_BY_SIDE: u16 = 60;
/// Workers shown before the rest are summed up in the title.
const WORKERS_SHOWN: usize = 4;
/// Rows of each top list.
const TOP_ROWS: usize = 5;
/// Failure headlines listed above the picked failure's diagnosis.
const FAILURE_LINES: usize = 3;

pub fn draw(frame: &mut Frame, dashboard: &Dashboard) {
    let area = frame.area();
    if area.width < SMALLEST.0 || area.height < SMALLEST.1 {
        let text = format!("loupectl top needs at least {}x{}; q quits", SMALLEST.0, SMALLEST.1);
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let workers_rows = dashboard
        .counters
        .as_ref()
        .map_or(1, |c| c.workers.len().clamp(1, WORKERS_SHOWN)) as u16;
    let [title, traffic, workers, tops, failures] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(4),
        Constraint::Length(workers_rows + 3),
        Constraint::Length(TOP_ROWS as u16 + 3),
        Constraint::Min(4),
    ])
    .areas(area);
    draw_title(frame, title, dashboard);
    draw_traffic(frame, traffic, dashboard);
    draw_workers(frame, workers, dashboard);
    if area.width >= SIDE_BY_SIDE {
        let [snis, hosts] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(tops);
        draw_top(frame, snis, "Top SNIs", "live", &dashboard.snis, dashboard.records_read);
        draw_top(
            frame,
            hosts,
            "Top HTTP hosts",
            "",
            &dashboard.hosts,
            dashboard.http_read,
        );
    } else {
        draw_top(frame, tops, "Top SNIs", "live", &dashboard.snis, dashboard.records_read);
    }
    draw_failures(frame, failures, dashboard);
}

fn draw_title(frame: &mut Frame, area: Rect, dashboard: &Dashboard) {
    let mut spans = vec![Span::styled("loupe top", Style::new().add_modifier(Modifier::BOLD))];
    if let Some(version) = dashboard.config_version {
        spans.push(Span::raw(format!("  config v{version}")));
    }
    spans.push(Span::raw(format!(
        "  every {:.1}s  {}  q quits, ↑↓ failures",
        dashboard.interval.as_secs_f64(),
        dashboard.socket
    )));
    let line = match &dashboard.problem {
        Some(problem) => Line::from(Span::styled(problem.clone(), Style::new().fg(Color::Red))),
        None => Line::from(spans),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn section(title: &str) -> Block<'_> {
    Block::new().borders(Borders::ALL).title(title)
}

/// `1.5 MB/s`: decimal units, as network rates are quoted.
pub fn bytes_per_second(rate: f64) -> String {
    const UNITS: [&str; 5] = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"];
    let mut value = rate;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A rate, or `-` before there are two snapshots to compare.
fn per_second(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_string(), |r| format!("{r:.1}"))
}

fn draw_traffic(frame: &mut Frame, area: Rect, dashboard: &Dashboard) {
    let rates = dashboard.rates.as_ref();
    let active = dashboard.counters.as_ref().map_or(0, |c| c.flows_active);
    let label = Style::new().add_modifier(Modifier::BOLD);
    let sessions = Line::from(vec![
        Span::styled("sessions/s ", label),
        Span::raw(per_second(rates.map(|r| r.sessions))),
        Span::raw(format!(
            "  (decrypted {} spliced {} blocked {} aborted {})",
            per_second(rates.map(|r| r.decrypted)),
            per_second(rates.map(|r| r.spliced)),
            per_second(rates.map(|r| r.blocked)),
            per_second(rates.map(|r| r.aborted)),
        )),
    ]);
    let flows = Line::from(vec![
        Span::styled("new flows/s ", label),
        Span::raw(per_second(rates.map(|r| r.new_flows))),
        Span::raw(format!("  active {active}  ")),
        Span::styled("client→server ", label),
        Span::raw(rates.map_or("-".into(), |r| bytes_per_second(r.bytes_client_to_server))),
        Span::styled("  server→client ", label),
        Span::raw(rates.map_or("-".into(), |r| bytes_per_second(r.bytes_server_to_client))),
    ]);
    frame.render_widget(Paragraph::new(vec![sessions, flows]).block(section("Traffic")), area);
}

fn draw_workers(frame: &mut Frame, area: Rect, dashboard: &Dashboard) {
    let rates = dashboard.rates.as_ref();
    let workers = dashboard
        .counters
        .as_ref()
        .map(|c| c.workers.as_slice())
        .unwrap_or_default();
    let title = if workers.len() > WORKERS_SHOWN {
        format!("Workers ({} of {})", WORKERS_SHOWN, workers.len())
    } else {
        "Workers".to_string()
    };
    // Narrow terminals keep the columns that say most about load.
    let wide = area.width >= 64;
    let mut header = vec!["queue", "load", "flows", "new flows/s"];
    if wide {
        header.extend(["rx frames/s", "tx frames/s"]);
    }
    let rows = workers.iter().take(WORKERS_SHOWN).map(|w| {
        let rate = rates.and_then(|r| r.workers.iter().find(|x| x.queue == w.queue));
        let mut cells = vec![
            Cell::from(w.queue.to_string()),
            Cell::from(format!("{:.0}%", w.load * 100.0)),
            Cell::from(w.flows_active.to_string()),
            Cell::from(per_second(rate.map(|r| r.new_flows))),
        ];
        if wide {
            cells.push(Cell::from(per_second(rate.map(|r| r.rx_frames))));
            cells.push(Cell::from(per_second(rate.map(|r| r.tx_frames))));
        }
        Row::new(cells)
    });
    let widths = vec![Constraint::Length(12); header.len()];
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(section(&title));
    frame.render_widget(table, area);
}

fn draw_top(frame: &mut Frame, area: Rect, title: &str, live_column: &str, ranked: &[Ranked], read: usize) {
    let title = format!("{title} (last {read} logged)");
    let mut header = vec!["name"];
    if !live_column.is_empty() {
        header.push(live_column);
    }
    header.push("logged");
    let rows = ranked.iter().take(TOP_ROWS).map(|r| {
        let mut cells = vec![Cell::from(r.name.clone())];
        if !live_column.is_empty() {
            cells.push(Cell::from(r.live.to_string()));
        }
        cells.push(Cell::from(r.recent.to_string()));
        Row::new(cells)
    });
    let mut widths = vec![Constraint::Fill(1)];
    widths.extend(std::iter::repeat_n(Constraint::Length(6), header.len() - 1));
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(section(&title));
    frame.render_widget(table, area);
}

fn draw_failures(frame: &mut Frame, area: Rect, dashboard: &Dashboard) {
    let block = section("Latest failures (decryption log: blocked, aborted, errors)");
    if dashboard.failures.is_empty() {
        frame.render_widget(Paragraph::new("none").block(block), area);
        return;
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let listed = dashboard
        .failures
        .len()
        .min(FAILURE_LINES)
        .min(usize::from(inner.height / 2));
    // The list scrolls so that the picked failure is always in it.
    let first = dashboard.selected.saturating_sub(listed.saturating_sub(1));
    let list: Vec<Line> = dashboard
        .failures
        .iter()
        .enumerate()
        .skip(first)
        .take(listed)
        .map(|(index, failure)| {
            let style = if index == dashboard.selected {
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::new().fg(Color::Red)
            };
            Line::styled(failure.headline(), style)
        })
        .collect();
    let [list_area, detail_area] =
        Layout::vertical([Constraint::Length(listed as u16), Constraint::Min(0)]).areas(inner);
    frame.render_widget(Paragraph::new(list), list_area);
    let Some(picked) = dashboard.failures.get(dashboard.selected) else {
        return;
    };
    let label = Style::new().add_modifier(Modifier::BOLD);
    let detail = vec![
        Line::from(vec![
            Span::styled("diagnosis: ", label),
            Span::raw(picked.diagnosis.clone()),
        ]),
        Line::from(vec![Span::styled("remedy: ", label), Span::raw(picked.remedy.clone())]),
    ];
    frame.render_widget(Paragraph::new(detail).wrap(Wrap { trim: true }), detail_area);
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::super::model::tests::dashboard_with_traffic;
    use super::*;

    fn screen(width: u16, height: u16, dashboard: &Dashboard) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        terminal.draw(|f| draw(f, dashboard)).expect("draw");
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_panel_fits_80_by_24() {
        let shown = screen(80, 24, &dashboard_with_traffic());
        for expected in [
            "sessions/s 2.0",
            "client→server 1.5 kB/s",
            "Workers",
            "server.lab",
            "shop.lab",
            "Top HTTP hosts",
            "unknown_ca (48)",
            "diagnosis: The client refused",
        ] {
            assert!(shown.contains(expected), "{expected:?} missing from:\n{shown}");
        }
    }

    #[test]
    fn narrow_terminals_drop_the_hosts_and_tiny_ones_say_so() {
        let shown = screen(50, 24, &dashboard_with_traffic());
        assert!(shown.contains("server.lab"), "{shown}");
        assert!(!shown.contains("Top HTTP hosts"), "{shown}");
        assert!(!shown.contains("rx frames/s"), "{shown}");
        let tiny = screen(12, 5, &dashboard_with_traffic());
        assert!(tiny.contains("needs"), "{tiny}");
    }

    #[test]
    fn rates_are_dashes_before_the_second_refresh() {
        let mut dashboard = dashboard_with_traffic();
        dashboard.rates = None;
        let shown = screen(80, 24, &dashboard);
        assert!(shown.contains("sessions/s -"), "{shown}");
    }

    #[test]
    fn byte_rates_use_decimal_units() {
        assert_eq!(bytes_per_second(0.0), "0 B/s");
        assert_eq!(bytes_per_second(999.0), "999 B/s");
        assert_eq!(bytes_per_second(1500.0), "1.5 kB/s");
        assert_eq!(bytes_per_second(45_100_000.0), "45.1 MB/s");
    }
}
