//! Text units found in AIO configs: Go / cert-manager durations ("240h",
//! "1h30m", "500ms") and Kubernetes resource quantities ("500M", "64Mi").
//! Pure parsing with typed errors; no value is ever rounded down silently
//! (quantities round fractions of a byte up, as Kubernetes does).

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (expected e.g. \"240h\", \"45m\", \"1h30m\", \"500ms\")")]
    Empty,
    #[error("negative durations are not allowed")]
    Negative,
    #[error("expected a number at \"{0}\" (e.g. \"240h\", \"1h30m\")")]
    MissingNumber(String),
    #[error("missing unit after \"{0}\" (use ns, us, ms, s, m or h)")]
    MissingUnit(String),
    #[error("unknown unit \"{0}\" (use ns, us, ms, s, m or h; a day is \"24h\")")]
    UnknownUnit(String),
    #[error("duration is too large (at most {} h)", u64::MAX / NANOS_PER_HOUR)]
    Overflow,
}

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity (expected e.g. \"500M\", \"1Gi\" or a number of bytes)")]
    Empty,
    #[error("negative quantities are not allowed")]
    Negative,
    #[error("expected a number at \"{0}\" (e.g. \"500M\", \"64Mi\")")]
    MissingNumber(String),
    #[error("\"m\" means milli in Kubernetes quantities; use \"M\" for megabytes or \"Mi\" for mebibytes")]
    Milli,
    #[error("unknown suffix \"{0}\" (use k, M, G, T, P, E or Ki, Mi, Gi, Ti, Pi, Ei)")]
    UnknownSuffix(String),
    #[error("quantity is too large (at most {} bytes)", u64::MAX)]
    Overflow,
}

const NANOS_PER_HOUR: u64 = 3_600_000_000_000;

/// Parses a Go `time.ParseDuration` style duration as cert-manager and AIO
/// use it: one or more `<number><unit>` pairs, units `ns`, `us` (`µs`), `ms`,
/// `s`, `m`, `h`; fractions allowed (`1.5h`); a lone `0` is zero. Negative
/// durations are rejected because nothing in the config can use them.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let rest = match text.as_bytes().first() {
        None => return Err(DurationError::Empty),
        Some(b'-') => return Err(DurationError::Negative),
        Some(b'+') => &text[1..],
        Some(_) => text,
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::MissingNumber(String::new()));
    }
    let mut nanos_total: u128 = 0;
    let mut rest = rest;
    while !rest.is_empty() {
        let (number, after_number) = split_decimal(rest);
        let Some(number) = number else {
            return Err(DurationError::MissingNumber(rest.to_owned()));
        };
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let unit = &after_number[..unit_len];
        let unit_nanos: u128 = match unit {
            "" => return Err(DurationError::MissingUnit(number.text.to_owned())),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => u128::from(NANOS_PER_HOUR),
            other => return Err(DurationError::UnknownUnit(other.to_owned())),
        };
        // Sub-nanosecond fractions are truncated, as Go does.
        let part = number
            .scaled(unit_nanos, false)
            .ok_or(DurationError::Overflow)?;
        nanos_total = nanos_total
            .checked_add(part)
            .ok_or(DurationError::Overflow)?;
        rest = &after_number[unit_len..];
    }
    let nanos_total = u64::try_from(nanos_total).map_err(|_| DurationError::Overflow)?;
    Ok(Duration::from_nanos(nanos_total))
}

/// Parses a Kubernetes resource quantity as a number of bytes: a plain
/// integer, or a number with a decimal SI suffix (`k`, `M`, `G`, `T`, `P`,
/// `E` = powers of 1000) or a binary one (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei` =
/// powers of 1024). Fractions (`1.5Gi`) round up to whole bytes like
/// Kubernetes; exponent forms (`1e9`) and `m` (milli) are rejected.
pub fn parse_quantity(text: &str) -> Result<u64, QuantityError> {
    let rest = match text.as_bytes().first() {
        None => return Err(QuantityError::Empty),
        Some(b'-') => return Err(QuantityError::Negative),
        Some(b'+') => &text[1..],
        Some(_) => text,
    };
    let (number, suffix) = split_decimal(rest);
    let Some(number) = number else {
        return Err(QuantityError::MissingNumber(rest.to_owned()));
    };
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "m" => return Err(QuantityError::Milli),
        other => return Err(QuantityError::UnknownSuffix(other.to_owned())),
    };
    let bytes = number
        .scaled(multiplier, true)
        .ok_or(QuantityError::Overflow)?;
    u64::try_from(bytes).map_err(|_| QuantityError::Overflow)
}

/// A non-negative decimal number as written: integer digits and fraction digits.
struct Decimal<'a> {
    text: &'a str,
    integer: &'a str,
    fraction: &'a str,
}

impl Decimal<'_> {
    /// `self * multiplier`, the fractional part truncated or rounded up.
    /// `None` on overflow.
    fn scaled(&self, multiplier: u128, round_up: bool) -> Option<u128> {
        let mut integer: u128 = 0;
        for digit in self.integer.bytes() {
            integer = integer
                .checked_mul(10)?
                .checked_add(u128::from(digit - b'0'))?;
        }
        let mut value = integer.checked_mul(multiplier)?;
        // Digits past the 19th cannot change the result by a whole unit of
        // any multiplier we use (all < 10^19), except for rounding up.
        let significant = &self.fraction[..self.fraction.len().min(19)];
        let mut numerator: u128 = 0;
        let mut denominator: u128 = 1;
        for digit in significant.bytes() {
            numerator = numerator * 10 + u128::from(digit - b'0');
            denominator *= 10;
        }
        let product = numerator.checked_mul(multiplier)?;
        let mut fraction = product / denominator;
        let inexact = product % denominator != 0
            || self.fraction[significant.len()..]
                .bytes()
                .any(|d| d != b'0');
        if round_up && inexact {
            fraction += 1;
        }
        value = value.checked_add(fraction)?;
        Some(value)
    }
}

/// Splits a leading `digits[.digits]` off `text`; `None` when there is no digit.
fn split_decimal(text: &str) -> (Option<Decimal<'_>>, &str) {
    let integer_len = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let integer = &text[..integer_len];
    let mut end = integer_len;
    let mut fraction = "";
    if text[integer_len..].starts_with('.') {
        let after_dot = &text[integer_len + 1..];
        let fraction_len = after_dot
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_dot.len());
        fraction = &after_dot[..fraction_len];
        end = integer_len + 1 + fraction_len;
    }
    if integer.is_empty() && fraction.is_empty() {
        return (None, text);
    }
    let number = Decimal {
        text: &text[..end],
        integer,
        fraction,
    };
    (Some(number), &text[end..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn composed_durations_sum_their_parts(h in 0u64..1_000_000, m in 0u64..100_000, s in 0u64..100_000, ms in 0u64..100_000) {
            let text = format!("{h}h{m}m{s}s{ms}ms");
            let expected = Duration::from_secs(h * 3600 + m * 60 + s) + Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&text), Ok(expected));
        }

        #[test]
        fn plain_integers_are_bytes(n in any::<u64>()) {
            prop_assert_eq!(parse_quantity(&n.to_string()), Ok(n));
        }

        #[test]
        fn suffixes_multiply_or_overflow(n in any::<u32>(), index in 0usize..12) {
            let suffixes = [
                ("k", 1_000u128), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000),
                ("P", 1_000_000_000_000_000), ("E", 1_000_000_000_000_000_000),
                ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("Pi", 1 << 50), ("Ei", 1 << 60),
            ];
            let (suffix, multiplier) = suffixes[index];
            let expected = u64::try_from(u128::from(n) * multiplier).map_err(|_| QuantityError::Overflow);
            prop_assert_eq!(parse_quantity(&format!("{n}{suffix}")), expected);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,12}") {
            let _ = parse_duration(&text);
            let _ = parse_quantity(&text);
        }
    }

    fn d(text: &str) -> Result<Duration, DurationError> {
        parse_duration(text)
    }

    #[test]
    fn durations_in_go_syntax_parse() {
        assert_eq!(d("240h"), Ok(Duration::from_secs(240 * 3600)));
        assert_eq!(d("45m"), Ok(Duration::from_secs(45 * 60)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(d(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(d("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(d("2µs"), Ok(Duration::from_micros(2)));
        assert_eq!(d("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(d("1h0m0s"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("+10s"), Ok(Duration::from_secs(10)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert_eq!(d("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn malformed_durations_are_typed_errors() {
        assert_eq!(d(""), Err(DurationError::Empty));
        assert_eq!(d("-1h"), Err(DurationError::Negative));
        assert_eq!(d("10"), Err(DurationError::MissingUnit("10".into())));
        assert_eq!(d("1h30"), Err(DurationError::MissingUnit("30".into())));
        assert_eq!(d("3d"), Err(DurationError::UnknownUnit("d".into())));
        assert_eq!(d("1H"), Err(DurationError::UnknownUnit("H".into())));
        assert_eq!(d("h"), Err(DurationError::MissingNumber("h".into())));
        assert_eq!(d("1h m"), Err(DurationError::UnknownUnit("h m".into())));
        assert_eq!(d("+"), Err(DurationError::MissingNumber(String::new())));
        assert_eq!(d("."), Err(DurationError::MissingNumber(".".into())));
    }

    #[test]
    fn huge_durations_overflow_instead_of_wrapping() {
        assert_eq!(d("99999999999999999999h"), Err(DurationError::Overflow));
        assert_eq!(d("5124096h"), Err(DurationError::Overflow));
        assert!(d("5124095h").is_ok());
        assert_eq!(
            d("999999999999999999999999999999999999999999h"),
            Err(DurationError::Overflow)
        );
    }

    #[test]
    fn quantities_use_decimal_and_binary_suffixes() {
        assert_eq!(parse_quantity("500M"), Ok(500_000_000));
        assert_eq!(parse_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("64Mi"), Ok(64 << 20));
        assert_eq!(parse_quantity("1k"), Ok(1000));
        assert_eq!(parse_quantity("1Ki"), Ok(1024));
        assert_eq!(parse_quantity("2Ti"), Ok(2 << 40));
        assert_eq!(parse_quantity("12345"), Ok(12345));
        assert_eq!(parse_quantity("0"), Ok(0));
        assert_eq!(parse_quantity("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_quantity("1.5"), Ok(2), "fractions of a byte round up");
        assert_eq!(parse_quantity("0.0001k"), Ok(1));
        assert_eq!(parse_quantity("15Ei"), Ok(15 << 60));
    }

    #[test]
    fn malformed_quantities_are_typed_errors() {
        assert_eq!(parse_quantity(""), Err(QuantityError::Empty));
        assert_eq!(parse_quantity("-1G"), Err(QuantityError::Negative));
        assert_eq!(parse_quantity("500m"), Err(QuantityError::Milli));
        assert_eq!(
            parse_quantity("1K"),
            Err(QuantityError::UnknownSuffix("K".into()))
        );
        assert_eq!(
            parse_quantity("1GB"),
            Err(QuantityError::UnknownSuffix("GB".into()))
        );
        assert_eq!(
            parse_quantity("1e9"),
            Err(QuantityError::UnknownSuffix("e9".into()))
        );
        assert_eq!(
            parse_quantity("1 G"),
            Err(QuantityError::UnknownSuffix(" G".into()))
        );
        assert_eq!(
            parse_quantity("Gi"),
            Err(QuantityError::MissingNumber("Gi".into()))
        );
        assert_eq!(parse_quantity("16Ei"), Err(QuantityError::Overflow));
        assert_eq!(
            parse_quantity("18446744073709551616"),
            Err(QuantityError::Overflow)
        );
        assert_eq!(parse_quantity("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_quantity("99999999999999999999999999999999999999999E"),
            Err(QuantityError::Overflow)
        );
    }
}
