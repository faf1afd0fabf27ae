//! Quantities as people write them on a command line, and back.
//!
//! - CPU: `500m` is 500 millicores; a plain number counts CPUs, so `1.5` is
//!   1500 millicores and `2` is 2000.
//! - Bytes: a number with an optional binary suffix `K`, `M`, `G` or `T`
//!   (case-insensitive, powers of 1024, optionally followed by `i` and/or
//!   `B`: `256M`, `256MiB` and `256mb` are all 256 MiB); a plain number is
//!   bytes. A fraction is allowed when it comes to whole bytes (`1.5G`).
//! - Rates (I/O bandwidth): bytes as above, per second, with an optional
//!   `/s` (`10M` or `10M/s`).
//!
//! Parsing is exact (integer arithmetic, no floating point); a value that
//! does not fit is refused rather than rounded.

use std::fmt;

/// A quantity that could not be parsed: what was given and why it is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: {reason}")]
pub struct UnitError {
    /// The text as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl UnitError {
    fn new(value: &str, reason: impl Into<String>) -> Self {
        Self {
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Parses `digits[.digits]` times `scale`, exactly: an error if the text is
/// not such a number, the result overflows, or it is not a whole number.
fn scaled_decimal(text: &str, scale: u64) -> Result<u64, &'static str> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !all_digits(whole)
        || !all_digits(fraction)
        || (text.contains('.') && fraction.is_empty())
    {
        return Err("not a number");
    }
    if fraction.len() > 18 {
        return Err("too many decimal places");
    }
    let too_large = "too large";
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large)?
    };
    let mut value = whole.checked_mul(u128::from(scale)).ok_or(too_large)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().map_err(|_| too_large)?;
        let denominator = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| too_large)?);
        let numerator = digits.checked_mul(u128::from(scale)).ok_or(too_large)?;
        if numerator % denominator != 0 {
            return Err("the fraction does not come to a whole unit");
        }
        value = value
            .checked_add(numerator / denominator)
            .ok_or(too_large)?;
    }
    u64::try_from(value).map_err(|_| too_large)
}

/// Parses a CPU quantity into millicores: `500m` → 500, `1.5` → 1500.
pub fn parse_cpu(text: &str) -> Result<u32, UnitError> {
    let trimmed = text.trim();
    let millicores = match trimmed.strip_suffix('m') {
        Some(milli) if !milli.is_empty() && milli.bytes().all(|b| b.is_ascii_digit()) => {
            milli.parse::<u64>().map_err(|_| "too large")
        }
        Some(_) => Err("millicores are a whole number followed by m (e.g. 500m)"),
        None => scaled_decimal(trimmed, 1000),
    }
    .map_err(|reason| {
        UnitError::new(
            text,
            format!("{reason}: give millicores (500m) or CPUs (0.5, 1.5, 2)"),
        )
    })?;
    u32::try_from(millicores)
        .map_err(|_| UnitError::new(text, "too large: at most 4294967295 millicores"))
}

/// Parses a byte quantity: `256M` → 268435456, `4096` → 4096.
pub fn parse_bytes(text: &str) -> Result<u64, UnitError> {
    let lower = text.trim().to_ascii_lowercase();
    let mut body = lower.strip_suffix('b').unwrap_or(&lower);
    let binary_i = match body.strip_suffix('i') {
        Some(rest) => {
            body = rest;
            true
        }
        None => false,
    };
    let shift = match body.bytes().last() {
        Some(b'k') => 10,
        Some(b'm') => 20,
        Some(b'g') => 30,
        Some(b't') => 40,
        _ if binary_i => {
            return Err(UnitError::new(
                text,
                "a suffix is K, M, G or T (e.g. 256M or 256MiB)",
            ));
        }
        _ => 0,
    };
    if shift > 0 {
        body = &body[..body.len() - 1];
    }
    scaled_decimal(body, 1u64 << shift).map_err(|reason| {
        UnitError::new(
            text,
            format!("{reason}: give bytes, optionally with K, M, G or T (powers of 1024)"),
        )
    })
}

/// Parses a rate in bytes per second: `10M` or `10M/s`.
pub fn parse_rate(text: &str) -> Result<u64, UnitError> {
    let trimmed = text.trim();
    let body = trimmed
        .strip_suffix("/s")
        .or_else(|| trimmed.strip_suffix("/S"))
        .unwrap_or(trimmed);
    parse_bytes(body).map_err(|e| UnitError::new(text, e.reason))
}

/// A byte count for people: `512 B`, `256 MiB`, `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut scale = 1024u64;
    while unit + 1 < UNITS.len() && bytes / scale >= 1024 {
        unit += 1;
        scale *= 1024;
    }
    if bytes.is_multiple_of(scale) {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        // Display only: precision loss is fine here.
        #[allow(clippy::cast_precision_loss)]
        let value = bytes as f64 / scale as f64;
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A CPU quantity for people: `500m (0.5 CPU)`, `2000m (2 CPUs)`.
pub fn format_cpu(millicores: u32) -> String {
    Cpu(millicores).to_string()
}

struct Cpu(u32);

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 1000;
        let fraction = self.0 % 1000;
        let cpus = if fraction == 0 {
            whole.to_string()
        } else {
            let digits = format!("{fraction:03}");
            format!("{whole}.{}", digits.trim_end_matches('0'))
        };
        let noun = if self.0 <= 1000 { "CPU" } else { "CPUs" };
        write!(f, "{}m ({cpus} {noun})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        for (text, millicores) in [
            ("500m", 500),
            ("1.5", 1500),
            ("2", 2000),
            ("0.25", 250),
            (".5", 500),
            ("1000m", 1000),
            (" 10m ", 10),
            ("0.001", 1),
        ] {
            assert_eq!(parse_cpu(text), Ok(millicores), "{text}");
        }
        for bad in [
            "",
            "m",
            "1.5m",
            "abc",
            "1.",
            "0.0005",
            "-1",
            "1e3",
            "5000000000m",
            "4294968",
        ] {
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
        let err = parse_cpu("0.0005").unwrap_err().to_string();
        assert!(err.contains("0.0005") && err.contains("500m"), "{err}");
    }

    #[test]
    fn bytes() {
        for (text, bytes) in [
            ("256M", 256 << 20),
            ("256m", 256 << 20),
            ("256MiB", 256 << 20),
            ("256mb", 256 << 20),
            ("256Mi", 256 << 20),
            ("4096", 4096),
            ("4096b", 4096),
            ("10K", 10 << 10),
            ("1G", 1 << 30),
            ("2t", 2 << 40),
            ("1.5G", 3 << 29),
            ("0.5k", 512),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "M",
            "1.2.3",
            "12x",
            "1i",
            "0.1k",
            "99999999999T",
            "-5M",
            "1 M",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("10M/s"), Ok(10 << 20));
        assert_eq!(parse_rate("4096/s"), Ok(4096));
        parse_rate("/s").unwrap_err();
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(256 << 20), "256 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_cpu(500), "500m (0.5 CPU)");
        assert_eq!(format_cpu(1000), "1000m (1 CPU)");
        assert_eq!(format_cpu(1250), "1250m (1.25 CPUs)");
    }

    #[test]
    fn round_trips() {
        for bytes in [1u64 << 20, 10 << 20, 3 << 29, 1 << 40] {
            let shown = format_bytes(bytes).replace(' ', "");
            assert_eq!(parse_bytes(&shown), Ok(bytes), "{shown}");
        }
    }
}
