//! Prometheus text from `/metrics` for tests and benchmarks: samples parsed,
//! summed by labels, histogram buckets and a quantile between two snapshots;
//! and the kernel's count of UDP datagrams dropped on full receive buffers.

/// `/metrics` samples: (name, labels, value).
pub type Samples = Vec<(String, Vec<(String, String)>, f64)>;

pub fn parse_metrics(text: &str) -> Samples {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest.trim_end_matches('}').split(',').filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                });
                (name, labels.collect())
            }
            None => (series, Vec::new()),
        };
        out.push((name.to_owned(), labels, value));
    }
    out
}

pub fn has(labels: &[(String, String)], want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

/// Sum of the samples named `name` carrying all of `labels`.
pub fn metric(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.iter().filter(|(n, l, _)| n == name && has(l, labels)).map(|(_, _, v)| v).sum()
}

/// Cumulative histogram buckets `(le, count)` sorted by `le`.
pub fn buckets(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut b: Vec<(f64, f64)> = s
        .iter()
        .filter(|(n, l, _)| *n == bucket && has(l, labels))
        .filter_map(|(_, l, v)| {
            let le = &l.iter().find(|(k, _)| k == "le")?.1;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, *v))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

/// Quantile `q` of the observations between two bucket snapshots, interpolated
/// within a bucket like Prometheus `histogram_quantile`; None without observations.
pub fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, cum) in delta {
        if cum >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (le - lower) * (rank - below) / (cum - below).max(f64::MIN_POSITIVE));
        }
        (lower, below) = (le, cum);
    }
    Some(lower)
}

/// `RcvbufErrors` of this namespace's UDP (`/proc/net/snmp`): datagrams the kernel dropped.
pub fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let [names, values] = udp[..] else { return 0 };
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors");
    i.and_then(|i| values.split_whitespace().nth(i)).and_then(|v| v.parse().ok()).unwrap_or(0)
}
