//! Rewrites of the SDP answer's `a=candidate` lines (RFC 8839): drop the ones
//! no viewer can use, and add the public address of each host candidate when
//! infercast sits behind 1:1 NAT.

use std::net::IpAddr;

/// Server-reflexive type preference 100, local preference 65535, component 1
/// (RFC 8445 §5.1.2.1).
const SRFLX_PRIORITY: u32 = (100 << 24) | (65535 << 8) | 255;
/// The same for an ICE-TCP candidate: below its UDP twin, as the host ones
/// are (local preference 40959, rtc's for TCP).
const SRFLX_TCP_PRIORITY: u32 = (100 << 24) | (40959 << 8) | 255;

/// `sdp` without unusable candidates (an unspecified address, left when a
/// wildcard bind had no interface to expand to), and with, for every
/// non-loopback host candidate of component 1, one `typ srflx` candidate per
/// public IP on the same port (what a 1:1 NAT maps to that socket).
pub fn rewrite_candidates(sdp: &str, public_ips: &[IpAddr]) -> String {
    let mut out = String::with_capacity(sdp.len() + 128 * public_ips.len());
    let mut added = 0;
    for line in sdp.split_inclusive('\n') {
        let Some(candidate) = line.strip_prefix("a=candidate:") else {
            out.push_str(line);
            continue;
        };
        let fields: Vec<&str> = candidate.split_whitespace().collect();
        // foundation component transport priority address port "typ" type ...
        let address = fields.get(4).and_then(|a| a.parse::<IpAddr>().ok());
        if address.is_some_and(|a| a.is_unspecified()) {
            continue;
        }
        out.push_str(line);
        let (Some(address), Some(port)) = (address, fields.get(5)) else { continue };
        if fields.get(1) != Some(&"1") || fields.get(7) != Some(&"host") || address.is_loopback() {
            continue;
        }
        let eol = if line.ends_with("\r\n") { "\r\n" } else { "\n" };
        let transport = fields.get(2).copied().unwrap_or("udp");
        // An ICE-TCP candidate's twin keeps its role (`tcptype passive`).
        let tcp_type = fields.iter().position(|f| *f == "tcptype").and_then(|i| fields.get(i + 1));
        let (priority, tail) = match tcp_type {
            Some(t) if transport.eq_ignore_ascii_case("tcp") => (SRFLX_TCP_PRIORITY, format!(" tcptype {t}")),
            _ => (SRFLX_PRIORITY, String::new()),
        };
        for public in public_ips.iter().filter(|p| p.is_ipv4() == address.is_ipv4()) {
            added += 1;
            out.push_str(&format!(
                "a=candidate:nat{added} 1 {transport} {priority} {public} {port} typ srflx raddr {address} rport {port}{tail}{eol}"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_candidates_are_dropped() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 0.0.0.0 5000 typ host\r\n\
                   a=candidate:2 1 udp 2130706431 127.0.0.1 5001 typ host\r\n";
        assert_eq!(rewrite_candidates(sdp, &[]), "v=0\r\na=candidate:2 1 udp 2130706431 127.0.0.1 5001 typ host\r\n");
    }

    #[test]
    fn public_ips_mirror_non_loopback_host_candidates() {
        let sdp = "a=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host\r\n\
                   a=candidate:1 2 udp 2130706430 10.0.0.5 50000 typ host\r\n\
                   a=candidate:2 1 udp 2130706431 127.0.0.1 50000 typ host\r\n\
                   a=end-of-candidates\r\n";
        let public: IpAddr = "203.0.113.7".parse().expect("valid");
        let v6: IpAddr = "2001:db8::1".parse().expect("valid");
        let out = rewrite_candidates(sdp, &[public, v6]);
        let added: Vec<&str> = out.lines().filter(|l| l.contains("srflx")).collect();
        assert_eq!(
            added,
            ["a=candidate:nat1 1 udp 1694498815 203.0.113.7 50000 typ srflx raddr 10.0.0.5 rport 50000"],
            "{out}"
        );
        assert!(out.ends_with("a=end-of-candidates\r\n"));
    }

    #[test]
    fn an_ice_tcp_candidate_gets_a_passive_public_twin_below_the_udp_one() {
        let sdp = "a=candidate:1 1 udp 2130706431 10.0.0.5 8189 typ host\r\n\
                   a=candidate:2 1 tcp 2124414975 10.0.0.5 8189 typ host tcptype passive\r\n";
        let out = rewrite_candidates(sdp, &["203.0.113.7".parse().unwrap()]);
        let added: Vec<&str> = out.lines().filter(|l| l.contains("nat")).collect();
        assert_eq!(
            added,
            [
                "a=candidate:nat1 1 udp 1694498815 203.0.113.7 8189 typ srflx raddr 10.0.0.5 rport 8189",
                "a=candidate:nat2 1 tcp 1688207359 203.0.113.7 8189 typ srflx raddr 10.0.0.5 rport 8189 tcptype passive",
            ],
            "{out}"
        );
    }
}
