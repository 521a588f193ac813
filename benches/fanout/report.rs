//! The printed tables, per-level details and the summary against the targets.

use super::*;

pub fn ms(v: Option<f64>) -> String {
    v.map_or("—".to_owned(), |v| format!("{v:.2}"))
}

pub fn print_table(rows: &[&Row], baseline_pct: f64) {
    println!(
        "\n| viewers | server CPU % | CPU / viewer % | loss % | fps / viewer min / mean | send p50 / p95 / p99 ms \
         | packets/s sent | NACKs | PLIs | viewers' CPU % | softirq % | other processes % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let per_viewer = if r.viewers > 0 && r.label == "raw" {
            format!("{:.3}", (r.server_pct - baseline_pct) / r.viewers as f64)
        } else {
            "—".to_owned()
        };
        let failed = if r.failed > 0 { format!(" ({} failed)", r.failed) } else { String::new() };
        let name = if r.label == "raw" { r.viewers.to_string() } else { format!("{} ({})", r.viewers, r.label) };
        println!(
            "| {name}{failed} | {:.1} | {per_viewer} | {:.3} | {:.1} / {:.1} | {} / {} / {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} |",
            r.server_pct,
            r.loss_pct,
            if r.viewers > 0 { r.fps_min } else { 0.0 },
            r.fps_mean,
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms),
            r.packets_per_s,
            r.nacks,
            r.plis,
            r.client_pct,
            r.softirq_pct,
            r.other_pct(),
        );
    }
}

pub fn print_details(rows: &[&Row], baseline: &Row) {
    println!(
        "\nPer level: source fps, RTSP server CPU, machine softirq and steal time, CPU of other processes on the \
         machine, resent (duplicate) packets, kernel UDP receive-buffer drops, \
         server CPU in the kernel, server threads; for raw levels the fan-out cost (server CPU above the \
         baseline) per RTP packet sent and per viewer-frame, and the viewers' CPU per packet received:"
    );
    for r in rows {
        let threads: Vec<String> = r.threads.iter().take(6).map(|(n, p)| format!("{n} {p:.1}")).collect();
        let cost = if r.label == "raw" && r.packets_per_s > 0.0 {
            let us = |pct: f64, per_s: f64| pct / 100.0 * 1e6 / per_s;
            let fanout = r.server_pct - baseline.server_pct;
            format!(
                "; fan-out {:.1} µs/packet ({:.1} in the kernel), {:.0} µs per viewer-frame; viewers {:.1} µs/packet",
                us(fanout, r.packets_per_s),
                us(r.server_sys_pct - baseline.server_sys_pct, r.packets_per_s),
                us(fanout, r.viewers as f64 * r.source_fps),
                us(r.client_pct, r.packets_per_s),
            )
        } else {
            String::new()
        };
        println!(
            "- {} {}: source {:.1} fps, RTSP server {:.1} %, softirq {:.1} %, steal {:.1} %, other processes {:.0} %, \
             resent {}, UDP drops {}, server kernel {:.1} %; threads % of a core: {}{cost}",
            r.viewers,
            r.label,
            r.source_fps,
            r.camera_server_pct,
            r.softirq_pct,
            r.steal_pct,
            r.other_pct(),
            r.duplicates,
            r.udp_drops,
            r.server_sys_pct,
            threads.join(", ")
        );
    }
}

pub fn print_summary(rows: &[Row], baseline_pct: f64, annotated: Option<&Row>) {
    let [(n1, t1), (n2, t2)] = TARGET_SEND_P95_MS;
    println!(
        "\nTargets: >= {TARGET_VIEWERS_PER_CORE} viewers per core (raw, full frame rate, loss < {MAX_LOSS_PCT} %); send latency p95 <= {t1} ms up to {n1} viewers, <= {t2} ms at {n2} (raw); annotated capture->encoded p95 <= {TARGET_ENCODED_P95_MS} ms."
    );
    for r in rows.iter().filter(|r| r.label == "raw" && r.viewers > 0) {
        if let Some(&(_, target)) = TARGET_SEND_P95_MS.iter().find(|(n, _)| r.viewers <= *n) {
            let p95 = r.p95_ms.unwrap_or(f64::NAN);
            let verdict = if p95 <= target { "met" } else { "NOT met" };
            println!("Send latency p95 at {} viewers: {p95:.2} ms (target <= {target} ms: {verdict})", r.viewers);
        }
    }
    let best = rows.iter().filter(|r| r.label == "raw" && r.viewers > 0 && r.full_rate()).max_by_key(|r| r.viewers);
    match best {
        Some(r) => {
            let cores = (r.server_pct - baseline_pct) / 100.0;
            let per_core = if cores > 0.0 { r.viewers as f64 / cores } else { f64::INFINITY };
            let verdict = if per_core >= TARGET_VIEWERS_PER_CORE { "met" } else { "NOT met" };
            println!(
                "Viewers per core: {per_core:.0} ({} viewers kept full rate, fan-out used {:.1} % of a core above the {baseline_pct:.1} % baseline) — target {verdict}",
                r.viewers,
                cores * 100.0
            );
            println!(
                "Send latency p50 / p95 / p99 at the largest full-rate level ({} viewers): {} / {} / {} ms",
                r.viewers,
                ms(r.p50_ms),
                ms(r.p95_ms),
                ms(r.p99_ms)
            );
        }
        None => println!("Viewers per core: no level kept full rate with < {MAX_LOSS_PCT} % loss"),
    }
    if let (_, Some(v)) = per_core(rows) {
        let n = rows.iter().filter(|r| r.label == "raw" && r.full_rate()).count();
        println!(
            "Marginal cost (least-squares slope over the {n} full-rate levels): {:.3} % of a core per viewer = {v:.0} viewers per core",
            100.0 / v
        );
    }
    if let Some(r) = rows.iter().find(|r| r.label == "raw" && !r.full_rate()) {
        println!(
            "First level short of full rate: {} viewers (loss {:.3} %, min fps {:.1}, {} failed to connect)",
            r.viewers, r.loss_pct, r.fps_min, r.failed
        );
    }
    if let Some(a) = annotated {
        let p95 = a.encoded_p95_ms.unwrap_or(f64::NAN);
        let verdict = if p95 <= TARGET_ENCODED_P95_MS { "met" } else { "NOT met" };
        println!(
            "Annotated, 1 viewer: capture->encoded p50 / p95 {} / {} ms — target {verdict}; send p50 / p95 {} / {} ms; {:.1} fps; server CPU {:.1} % (baseline {baseline_pct:.1} %)",
            ms(a.encoded_p50_ms),
            ms(a.encoded_p95_ms),
            ms(a.p50_ms),
            ms(a.p95_ms),
            a.fps_mean,
            a.server_pct
        );
    }
    println!(
        "Note: the viewers run in this process on the same {} cores as the server (viewers' CPU % above); \
         softirq % is the machine's interrupt/softirq time (loopback delivery); other processes % is the rest \
         of the machine's busy time (other users: a level is measured again while it exceeds {BUSY_OTHER_PCT} %). \
         All CPU figures are % of one core.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

/// Viewers per core at the largest full-rate level, and from the slope.
fn per_core(rows: &[Row]) -> (Option<(usize, f64)>, Option<f64>) {
    let baseline = rows.first().map_or(0.0, |r| r.server_pct);
    let best = rows.iter().filter(|r| r.label == "raw" && r.viewers > 0 && r.full_rate()).max_by_key(|r| r.viewers);
    let at_best = best.map(|r| (r.viewers, r.viewers as f64 / ((r.server_pct - baseline) / 100.0).max(1e-9)));
    let fit: Vec<(f64, f64)> =
        rows.iter().filter(|r| r.label == "raw" && r.full_rate()).map(|r| (r.viewers as f64, r.server_pct)).collect();
    let slope = (fit.len() >= 3).then(|| {
        let n = fit.len() as f64;
        let (mx, my) = (fit.iter().map(|p| p.0).sum::<f64>() / n, fit.iter().map(|p| p.1).sum::<f64>() / n);
        let sxy: f64 = fit.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = fit.iter().map(|(x, _)| (x - mx).powi(2)).sum();
        100.0 / (sxy / sxx)
    });
    (at_best, slope)
}

/// The SFUs side by side: per level, then viewers per core and TTFF.
pub fn print_comparison(runs: &[Run]) {
    println!("\n## Side by side (raw track; server CPU % of one core, send latency ms)");
    let mut head = "| viewers |".to_owned();
    let mut rule = "|---|".to_owned();
    for r in runs {
        head += &format!(" {:?} server % | {:?} loss % | {:?} p50 / p95 / p99 |", r.sfu, r.sfu, r.sfu);
        rule += "---|---|---|";
    }
    println!("{head}\n{rule}");
    let mut levels: Vec<usize> = runs.iter().flat_map(|r| r.rows.iter().map(|x| x.viewers)).collect();
    levels.sort_unstable();
    levels.dedup();
    for n in levels {
        let mut line = format!("| {n} |");
        for r in runs {
            match r.rows.iter().find(|x| x.viewers == n && x.label == "raw") {
                Some(x) => {
                    line += &format!(
                        " {:.1} | {:.3} | {} / {} / {} |",
                        x.server_pct,
                        x.loss_pct,
                        ms(x.p50_ms),
                        ms(x.p95_ms),
                        ms(x.p99_ms)
                    )
                }
                None => line += " — | — | — |",
            }
        }
        println!("{line}");
    }
    println!("\n| SFU | viewers per core (largest full-rate level) | viewers per core (slope) | TTFF p50 / p95 ms |");
    println!("|---|---|---|---|");
    for r in runs {
        let (best, slope) = per_core(&r.rows);
        println!(
            "| {} | {} | {} | {} / {} |",
            r.sfu.name(),
            best.map_or("—".to_owned(), |(n, v)| format!("{v:.0} ({n} viewers)")),
            slope.map_or("—".to_owned(), |v| format!("{v:.0}")),
            ms(r.ttff_ms.0),
            ms(r.ttff_ms.1)
        );
    }
}
