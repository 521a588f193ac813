//! The soak's output: one line a minute, then the drift from the warm-up minute to
//! the end (absolute, %, and RSS's least-squares slope), the cameras' record, the
//! viewers' record, warnings and errors in infercast's log, and the verdict.

use std::time::Duration;

use super::Args;
use super::cameras::Seen;
use super::probe::Sample;
use super::viewers::Stats;

pub const HEADER: &str =
    "  min   RSS MB   fds  tasks  thr  udp  viewers(cli/srv)  pkt/s  cpu %  cameras (S streaming, R reconnecting, ...)";

/// One minute's reading.
pub struct Row {
    pub minute: u64,
    pub sample: Sample,
    pub viewers: Stats,
    /// RTP packets per second received by all viewers over the minute.
    pub pkt_per_s: u64,
    pub cpu_pct: f64,
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn short(state: &str) -> String {
    state.chars().next().map_or("?".to_owned(), |c| c.to_ascii_uppercase().to_string())
}

impl Row {
    pub fn line(&self) -> String {
        let s = &self.sample;
        let cams: Vec<String> = s.cameras.iter().map(|(n, st)| format!("{n}={}", short(st))).collect();
        format!(
            "{:>5} {:>8.1} {:>5} {:>6} {:>4} {:>4} {:>9}/{:<7} {:>6} {:>6.1}  {}",
            self.minute,
            mb(s.rss_kb),
            s.fds,
            s.tasks.map_or("?".to_owned(), |t| t.to_string()),
            s.threads,
            s.udp_sockets,
            self.viewers.connected,
            s.server_viewers,
            self.pkt_per_s,
            self.cpu_pct,
            cams.join(" ")
        )
    }
}

/// Everything the verdict is made of.
pub struct Verdict<'a> {
    pub args: &'a Args,
    pub rows: &'a [Row],
    pub cams: &'a Seen,
    pub flaps: u64,
    /// Every camera streaming again within 30 s of the end.
    pub recovered: bool,
    pub idle_before: &'a Sample,
    pub idle_after: &'a Sample,
    pub pool: &'a Stats,
    pub log: &'a str,
    pub shutdown: Duration,
}

fn drift(name: &str, from: f64, to: f64, unit: &str) -> f64 {
    let pct = if from == 0.0 { 0.0 } else { (to - from) / from * 100.0 };
    println!("  {name:<12} {from:>10.1} → {to:>10.1} {unit:<3}  {:>+9.1} {unit:<3} {pct:>+7.2} %", to - from);
    pct
}

/// Least-squares slope of `ys` against minutes, per hour.
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx * 60.0 }
}

impl Verdict<'_> {
    /// Prints the summary; true on PASS.
    pub fn print(&self) -> bool {
        let a = self.args;
        let Some(from) = self.rows.iter().find(|r| r.minute == a.warmup_minutes).or(self.rows.first()) else {
            println!("soak: FAIL (no minute measured)");
            return false;
        };
        let Some(to) = self.rows.last() else { return false };
        let (f, t) = (&from.sample, &to.sample);
        println!("\n## Drift from minute {} to minute {}", from.minute, to.minute);
        let rss = drift("RSS", mb(f.rss_kb), mb(t.rss_kb), "MB");
        let fds = drift("open fds", f.fds as f64, t.fds as f64, "");
        drift("tokio tasks", f.tasks.unwrap_or(0) as f64, t.tasks.unwrap_or(0) as f64, "");
        drift("threads", f.threads as f64, t.threads as f64, "");
        drift("UDP sockets", f.udp_sockets as f64, t.udp_sockets as f64, "");
        let tail: Vec<(f64, f64)> = self
            .rows
            .iter()
            .filter(|r| r.minute >= from.minute)
            .map(|r| (r.minute as f64, mb(r.sample.rss_kb)))
            .collect();
        let peak = self.rows.iter().map(|r| r.sample.rss_kb).max().unwrap_or(0);
        println!(
            "  RSS trend (least squares, minute {} on): {:+.1} MB/hour; peak {:.1} MB",
            from.minute,
            slope_per_hour(&tail),
            mb(peak)
        );
        let (b, e) = (self.idle_before, self.idle_after);
        println!("\n## Idle (no viewer), before and after (shut down in {:.2} s)", self.shutdown.as_secs_f64());
        println!(
            "  before: RSS {:.1} MB, fds {}, tasks {}, threads {}, UDP sockets {}",
            mb(b.rss_kb),
            b.fds,
            opt(b.tasks),
            b.threads,
            b.udp_sockets
        );
        println!(
            "  after:  RSS {:.1} MB, fds {}, tasks {}, threads {}, UDP sockets {}",
            mb(e.rss_kb),
            e.fds,
            opt(e.tasks),
            e.threads,
            e.udp_sockets
        );

        let lost = self.print_cameras();
        self.print_viewers();
        self.print_log();

        let ok_rss = rss.abs() <= a.max_drift_pct;
        let ok_fds = fds.abs() <= a.max_drift_pct;
        let pass = ok_rss && ok_fds && lost.is_empty();
        println!(
            "\nsoak: {} — RSS {rss:+.2} % ({}), fds {fds:+.2} % ({}), target ±{} %; {}",
            if pass { "PASS" } else { "FAIL" },
            if ok_rss { "ok" } else { "over" },
            if ok_fds { "ok" } else { "over" },
            a.max_drift_pct,
            if lost.is_empty() { "no camera lost".to_owned() } else { format!("lost: {}", lost.join("; ")) }
        );
        pass
    }

    /// Prints each camera's record; returns the lost ones, with why.
    fn print_cameras(&self) -> Vec<String> {
        let mut lost = Vec::new();
        println!(
            "\n## Cameras ({} polls, 1 s apart; `{}` flapped {} times)",
            self.cams.polls, self.cams.flapping, self.flaps
        );
        let end = self.rows.last().map(|r| &r.sample.cameras);
        for (name, log) in &self.cams.cameras {
            let flapping = *name == self.cams.flapping;
            let left: Vec<String> = log.left_streaming.iter().map(|(s, n)| format!("{s} {n} s")).collect();
            println!(
                "  {name:<6} {}: left streaming: {}; back to streaming {} times; first left at {}; unanswered polls {}",
                if flapping { "(flapping)" } else { "(steady)  " },
                if left.is_empty() { "never".to_owned() } else { left.join(", ") },
                log.recoveries,
                log.first_left_at_s.map_or("-".to_owned(), |s| format!("{s} s")),
                log.unanswered
            );
            // `degraded` still streams (decoding fell behind, e.g. a busy machine): reported, not lost.
            if !flapping && log.left_streaming.keys().any(|s| s != "degraded") {
                lost.push(format!("{name} left streaming ({})", left.join(", ")));
            }
            if flapping && self.flaps > 0 && log.recoveries == 0 {
                lost.push(format!("{name} never came back from a flap"));
            }
            let last = end.and_then(|c| c.iter().find(|(n, _)| n == name)).map_or("?", |c| c.1.as_str());
            if !matches!(last, "streaming" | "degraded") && !flapping {
                lost.push(format!("{name} {last} at the last minute"));
            }
        }
        if !self.recovered {
            lost.push("not every camera streaming 30 s after the end".to_owned());
        }
        lost
    }

    fn print_viewers(&self) {
        let p = self.pool;
        println!(
            "\n## Viewers: {} sessions begun, {} stayed their time, {} refused, {} never connected, {} panicked; \
             {} RTP packets received",
            p.started, p.completed, p.refused, p.not_connected, p.panicked, p.packets
        );
        if let Some(e) = &p.last_error {
            println!("  last failure: {e}");
        }
    }

    fn print_log(&self) {
        let bad: Vec<&str> = self.log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        let errors = bad.iter().filter(|l| l.contains(" ERROR ")).count();
        println!("\n## infercast log ({}): {} warnings, {errors} errors", self.args.log, bad.len() - errors);
        let mut kinds: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for l in &bad {
            *kinds.entry(message_kind(l)).or_default() += 1;
        }
        let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        for (k, n) in kinds.iter().take(15) {
            println!("  {n:>6} × {k}");
        }
    }
}

/// A log line without its timestamp, numbers as `N`, at most 100 characters: lines of one kind group together.
fn message_kind(line: &str) -> String {
    let msg = line.split_once(' ').map_or(line, |(_, rest)| rest).trim_start();
    let mut out = String::new();
    for c in msg.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('N') {
                out.push('N');
            }
        } else {
            out.push(c);
        }
        if out.len() >= 100 {
            break;
        }
    }
    out
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn opt(v: Option<u64>) -> String {
    v.map_or("?".to_owned(), |v| v.to_string())
}
