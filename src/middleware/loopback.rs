//! Whether a host is loopback, the one place plain `http` may carry a token without
//! [`allow_http`](crate::AuthLayerBuilder::allow_http): `localhost` or a loopback address
//! literal, told exactly as the standard library's parser tells it.

use std::net::IpAddr;

/// `localhost`, or an IP address literal that [`IpAddr::is_loopback`] says is loopback.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    match host.as_bytes().first() {
        // No IPv6 address whose text starts with a 1 is loopback (`::1` is the only one), so
        // a host starting with 1 is loopback if and only if it is an IPv4 address in
        // 127.0.0.0/8: read in one pass rather than with the standard parser, which a local
        // API's every request would pay.
        Some(b'1') => is_loopback_ipv4(host),
        _ => {
            host.eq_ignore_ascii_case("localhost")
                || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// Whether `authority` is `127.0.0.1:PORT` (a port of digits only), the authority of nearly
/// every local API: then its host is `127.0.0.1`, as nothing but digits follows the ':' (no
/// userinfo can hide there). `false` says nothing: the host is then found and checked in full.
/// Deciding from the authority alone saves finding the host on such a request.
#[inline]
pub(crate) fn is_loopback_ipv4_with_port(authority: &str) -> bool {
    authority
        .strip_prefix("127.0.0.1:")
        .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `host` is an IPv4 address as [`std::net::Ipv4Addr`]'s parser reads one (four
/// decimal octets of at most 255, no leading zeros) in 127.0.0.0/8.
fn is_loopback_ipv4(host: &str) -> bool {
    if host == "127.0.0.1" {
        return true;
    }
    let Some(rest) = host.strip_prefix("127.") else {
        return false;
    };
    let (mut dots, mut value, mut digits) = (0, 0u32, 0);
    for &byte in rest.as_bytes() {
        match byte {
            b'0'..=b'9' => {
                if digits == 1 && value == 0 {
                    return false;
                }
                value = value * 10 + u32::from(byte - b'0');
                digits += 1;
                if value > 255 {
                    return false;
                }
            }
            b'.' if digits > 0 => {
                (dots, value, digits) = (dots + 1, 0, 0);
            }
            _ => return false,
        }
    }
    dots == 2 && digits > 0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The standard parser's answer, which the one-pass reader must give.
    fn parsed_is_loopback(host: &str) -> bool {
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    #[test]
    fn loopback_hosts_are_told_as_the_standard_parser_tells_them() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "127.255.255.255",
            "127.0.0.0",
            "127.0.0.01",
            "127.0.0.256",
            "127.0.0",
            "127.0.0.1.",
            "127..0.1",
            "127.0.0.1a",
            "127.0.0.1.evil.test",
            "127.evil.test",
            "128.0.0.1",
            "1.2.3.4",
            "1::1",
            "10.0.0.1",
            "127.000.0.1",
            "127.0.0.1000",
            "127.00.0.1",
            "127.0.0.-1",
            "127.0.0.+1",
            "127",
            "127.",
            "1",
            "localhost",
            "LocalHost",
            "::1",
            "0:0:0:0:0:0:0:1",
            "::ffff:127.0.0.1",
            "",
        ] {
            assert_eq!(is_loopback_host(host), parsed_is_loopback(host), "{host:?}");
        }
    }

    /// What `http` reads as the host of `authority` (with a scheme in front), loopback or not.
    fn host_is_loopback(authority: &str) -> Option<bool> {
        let uri: http::Uri = format!("http://{authority}/").parse().ok()?;
        Some(uri.host().is_some_and(|host| {
            parsed_is_loopback(host.trim_start_matches('[').trim_end_matches(']'))
        }))
    }

    #[test]
    fn an_authority_of_127_0_0_1_and_a_port_is_loopback_and_nothing_else_is_taken_for_one() {
        for (authority, fast) in [
            ("127.0.0.1:8080", true),
            ("127.0.0.1:1", true),
            ("127.0.0.1:", false),
            ("127.0.0.1", false),
            ("127.0.0.1:80@evil.test", false),
            ("127.0.0.1:80@evil.test:80", false),
            ("127.0.0.1:8a", false),
            ("127.0.0.10:80", false),
            ("127.0.0.1.evil.test:80", false),
            ("user@127.0.0.1:80", false),
        ] {
            assert_eq!(is_loopback_ipv4_with_port(authority), fast, "{authority}");
            if fast {
                assert_eq!(host_is_loopback(authority), Some(true), "{authority}");
            }
        }
    }

    proptest! {
        /// The shortcut never calls loopback what `http` reads as another host.
        #[test]
        fn the_authority_shortcut_never_takes_another_host_for_loopback(
            authority in "(127\\.0\\.0\\.1)?[:@0-9a-z.]{0,12}",
        ) {
            if is_loopback_ipv4_with_port(&authority) {
                prop_assert_eq!(host_is_loopback(&authority), Some(true), "{:?}", authority);
            }
        }

        #[test]
        fn any_host_is_told_as_the_standard_parser_tells_it(
            host in "(127\\.|1)?[0-9.]{0,14}[a-z:]?",
        ) {
            prop_assert_eq!(is_loopback_host(&host), parsed_is_loopback(&host), "{:?}", host);
        }

        #[test]
        fn dotted_octets_are_told_as_the_standard_parser_tells_them(
            octets in proptest::collection::vec("0|1|01|00|9|10|99|127|199|255|256|300|999|0255|", 0..5),
        ) {
            let host = format!("127.{}", octets.join("."));
            prop_assert_eq!(is_loopback_host(&host), parsed_is_loopback(&host), "{:?}", host);
        }
    }
}
