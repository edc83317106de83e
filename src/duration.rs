//! The one parser for durations given on the command line (`--interval 30s`, `--tick 5s`).
//!
//! Durations are written as jiff reads them: `500ms`, `30s`, `1m`, `2h`, `1h30m`. Zero and
//! negative durations are refused: every flag that takes one is a period or a timeout, and
//! a zero period would make its loop spin.

use std::time::Duration;

/// Parses a positive duration (`500ms`, `30s`, `1m`); the error says what is valid.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("'{s}' is not a duration like 500ms, 30s or 1m: {e}"))?;
    if d.is_negative() || d.is_zero() {
        return Err(format!("'{s}': the duration must be positive"));
    }
    Duration::try_from(d).map_err(|e| format!("'{s}': {e}"))
}

/// [`parse_duration`] for flags that hold a [`jiff::SignedDuration`].
pub fn parse_signed_duration(s: &str) -> Result<jiff::SignedDuration, String> {
    let d = parse_duration(s)?;
    jiff::SignedDuration::try_from(d).map_err(|e| format!("'{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_durations_parse_and_zero_or_nonsense_is_refused() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration(" 1m ").unwrap(), Duration::from_secs(60));
        assert_eq!(
            parse_signed_duration("3h").unwrap(),
            jiff::SignedDuration::from_hours(3)
        );
        for bad in ["0s", "0ms", "-5s", "soon", ""] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("'{bad}'")), "{bad}: {e}");
        }
    }
}
