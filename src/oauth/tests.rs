use super::*;

#[test]
fn retry_after_seconds_or_date() {
    assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
    assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO),
        "a date in the past means now"
    );
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
    let d = parse_retry_after(&later).unwrap();
    assert!(
        d > Duration::from_secs(80) && d <= Duration::from_secs(90),
        "{d:?}"
    );
    assert_eq!(parse_retry_after("soon"), None);
}

#[test]
fn retry_after_of_any_size_or_date_is_at_most_an_hour() {
    let hour = Duration::from_secs(3600);
    assert_eq!(parse_retry_after("18446744073709551615"), Some(hour));
    assert_eq!(parse_retry_after(&"9".repeat(100)), Some(hour));
    assert_eq!(
        parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"),
        Some(hour)
    );
    assert_eq!(parse_retry_after("-1"), None);
    assert_eq!(parse_retry_after("+1"), None);
    assert_eq!(parse_retry_after(""), None);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

    /// Any header text parses to nothing or to a pause of at most an hour, never a panic.
    #[test]
    fn arbitrary_retry_after_never_panics_and_is_capped(value in "\\PC{0,64}") {
        if let Some(pause) = parse_retry_after(&value) {
            proptest::prop_assert!(pause <= Duration::from_secs(3600));
        }
    }

    /// Delay-seconds of any length are a pause, capped.
    #[test]
    fn digits_of_any_length_are_a_capped_pause(value in "[0-9]{1,80}") {
        let pause = parse_retry_after(&value).unwrap();
        proptest::prop_assert!(pause <= Duration::from_secs(3600));
    }

    /// HTTP dates of any year, valid or not, never panic.
    #[test]
    fn arbitrary_dates_never_panic(
        day in 0u32..40, month in 0usize..13, year in 0u32..100_000,
        hour in 0u32..30, minute in 0u32..70, second in 0u32..70,
    ) {
        const MONTHS: [&str; 13] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
            "Dec", "Foo",
        ];
        let date = format!(
            "Sun, {day:02} {} {year} {hour:02}:{minute:02}:{second:02} GMT",
            MONTHS[month]
        );
        if let Some(pause) = parse_retry_after(&date) {
            proptest::prop_assert!(pause <= Duration::from_secs(3600));
        }
    }
}

#[test]
fn endpoint_url_rules() {
    assert!(endpoint_url("https://idp.example.com/token", false).is_ok());
    assert!(endpoint_url("http://127.0.0.1:8080/token", false).is_ok());
    assert!(endpoint_url("http://127.4.5.6/token", false).is_ok());
    assert!(endpoint_url("http://[::1]:1/token", false).is_ok());
    assert!(endpoint_url("http://localhost/token", false).is_ok());
    let err = endpoint_url("http://idp.example.com/token", false).unwrap_err();
    assert!(err.to_string().contains("allow_http"), "{err}");
    assert!(endpoint_url("http://idp.example.com/token", true).is_ok());
    assert!(matches!(
        endpoint_url("ftp://idp/token", true),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        endpoint_url("not a url", true),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        endpoint_url("https://user:pw@idp/token", true),
        Err(Error::Config(_))
    ));
}
