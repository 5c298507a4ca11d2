//! What a log line looks like. JSON lines are written by a formatter of our
//! own: the objects are those of tracing-subscriber's flattened JSON format
//! (`timestamp`, `level`, the event's fields in order, `target`), but every
//! value is written straight into the line instead of being formatted into a
//! `String` of its own first. The access log writes one line per request,
//! so this is on the request path: it takes the access log from ~23,600 to
//! ~8,400 instructions per request (`bench/callgrind.sh`, see the README).
//! Both formats take their timestamp from `Rfc3339Micros`.
//!
//! Spans are not written: the gateway opens none, and the libraries' spans
//! are below the `info` level.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// UTC in RFC 3339 with microseconds, `2026-12-02T06:31:51.123456Z`: the
/// form tracing-subscriber writes, without its formatting machinery.
pub struct Rfc3339Micros;

impl FormatTime for Rfc3339Micros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write_timestamp(w, SystemTime::now())
    }
}

/// Years past 9999 wrap; a clock before 1970 writes the epoch.
fn write_timestamp(out: &mut impl fmt::Write, time: SystemTime) -> fmt::Result {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    // The seconds of a u64 Duration / 86,400 fit an i64; the year is >= 1970.
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let second_of_day = secs % 86_400;
    let mut line = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut line[0..4], year.unsigned_abs());
    put_digits(&mut line[5..7], u64::from(month));
    put_digits(&mut line[8..10], u64::from(day));
    put_digits(&mut line[11..13], second_of_day / 3600);
    put_digits(&mut line[14..16], second_of_day / 60 % 60);
    put_digits(&mut line[17..19], second_of_day % 60);
    put_digits(&mut line[20..26], u64::from(since_epoch.subsec_micros()));
    out.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)
}

/// The last `digits.len()` decimal digits of `n`, zero-padded.
fn put_digits(digits: &mut [u8], mut n: u64) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// (year, month, day) of a day counted from 1970-01-01 (negative before it),
/// in the proleptic Gregorian calendar: Howard Hinnant's `civil_from_days`.
/// `explain` dates a token's claims with it too.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Count from 0000-03-01, so that a leap day is the last day of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// One JSON object per event, on one line.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut out: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        out.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut out, SystemTime::now())?;
        out.write_str("\",\"level\":\"")?;
        out.write_str(meta.level().as_str())?;
        out.write_char('"')?;
        let mut fields = JsonFields {
            out: &mut out,
            result: Ok(()),
            log_target: None,
        };
        event.record(&mut fields);
        fields.result?;
        // A record of the `log` crate arrives as an event whose own target
        // is "log"; where it came from is its `log.target` field.
        let log_target = fields.log_target;
        out.write_str(",\"target\":")?;
        write_json_str(&mut out, log_target.as_deref().unwrap_or(meta.target()))?;
        out.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`; the first error stops the rest.
struct JsonFields<'a, W> {
    out: &'a mut W,
    result: fmt::Result,
    log_target: Option<String>,
}

impl<W: fmt::Write> JsonFields<'_, W> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_str(",\"")?;
                JsonEscaped(&mut *self.out).write_str(field.name())?;
                self.out.write_str("\":")?;
                value(self.out)
            })();
        }
    }
}

impl<W: fmt::Write> Visit for JsonFields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.log_target = Some(value.to_owned());
        }
        self.entry(field, |out| write_json_str(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| out.write_str(if value { "true" } else { "false" }));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's form ("1.0", not "1"); JSON has no NaN or infinity.
        self.entry(field, |out| match serde_json::Number::from_f64(value) {
            Some(n) => write!(out, "{n}"),
            None => out.write_str("null"),
        });
    }

    /// `%value` and `?value` fields, and `message`: formatted straight into
    /// the line through the escaper.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| {
            out.write_char('"')?;
            write!(JsonEscaped(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

fn write_json_str(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    JsonEscaped(&mut *out).write_str(s)?;
    out.write_char('"')
}

/// Escapes what JSON requires inside a string (quote, backslash, control
/// characters) as serde_json does; everything else is copied in runs.
struct JsonEscaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for JsonEscaped<'_, W> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        let needs_escape = |b: &u8| *b < 0x20 || *b == b'"' || *b == b'\\';
        while let Some(i) = s.as_bytes().iter().position(needs_escape) {
            // `i` is at an ASCII byte, so both slices end on a char boundary.
            self.0.write_str(&s[..i])?;
            match s.as_bytes()[i] {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                0x08 => self.0.write_str("\\b")?,
                0x0c => self.0.write_str("\\f")?,
                b => write!(self.0, "\\u{b:04x}")?,
            }
            s = &s[i + 1..];
        }
        self.0.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn timestamp(secs: u64, micros: u64) -> String {
        let mut s = String::new();
        let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
        write_timestamp(&mut s, t).unwrap();
        s
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(timestamp(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(timestamp(951_868_799, 999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(timestamp(1_709_251_199, 0), "2024-02-29T23:59:59.000000Z");
        assert_eq!(timestamp(1_764_657_111, 123_456), "2025-12-02T06:31:51.123456Z");
        assert_eq!(timestamp(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        assert_eq!(timestamp(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
    }

    #[test]
    fn every_day_follows_the_one_before() {
        // 1560 to 2400: the day after the last of a month is the first of the
        // next, and only February 29 of leap years exists.
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let mut previous = civil_from_days(-150_000);
        for days in -149_999..157_000 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = previous;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_len: [u32; 12] = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            if d == 1 {
                assert_eq!(pd, month_len[pm as usize - 1], "{previous:?} -> {y}-{m}-{d}");
                assert_eq!((y, m), if pm == 12 { (py + 1, 1) } else { (py, pm + 1) });
            } else {
                assert_eq!((y, m, d), (py, pm, pd + 1));
            }
            previous = (y, m, d);
        }
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The events the gateway writes, with values that need escaping.
    fn emit_events() {
        tracing::info!(
            target: "portcullis::access",
            request_id = "id-\"quoted\"\\\n\u{1}\u{1f}é",
            client = "[::1]:4431",
            method = http::Method::PATCH.as_str(),
            path = "/a b/\t/ü",
            route = "-",
            status = 499u16,
            upstream_status = Some(201u16),
            duration_ms = 1.0,
            subject = None::<&str>,
            auth = Some("monitor_denied"),
        );
        tracing::info!(duration_ms = 0.123, n = -5i64, big = u128::MAX, ok = true, "plain");
        let e = io::Error::other("disk \"full\"\r\n");
        let peer: std::net::SocketAddr = "127.0.0.1:80".parse().unwrap();
        tracing::warn!(error = %e, debug = ?("a\"", 1), %peer, "reload failed: {}", "x\ty\u{7f}");
        tracing::error!(nan = f64::NAN, "{}", "");
    }

    fn lines_of(install: impl FnOnce(Lines) -> tracing::Dispatch) -> Vec<serde_json::Value> {
        let lines = Lines::default();
        tracing::dispatcher::with_default(&install(lines.clone()), emit_events);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_are_tracing_subscribers_objects() {
        let ours = lines_of(|w| {
            tracing_subscriber::fmt()
                .with_writer(move || w.clone())
                .event_format(JsonLines)
                .finish()
                .into()
        });
        let theirs = lines_of(|w| {
            tracing_subscriber::fmt()
                .with_writer(move || w.clone())
                .json()
                .flatten_event(true)
                .finish()
                .into()
        });
        assert_eq!(ours.len(), 4);
        for (mut a, mut b) in ours.into_iter().zip(theirs) {
            let ta = a["timestamp"].take();
            let tb = b["timestamp"].take();
            assert_eq!(ta.as_str().unwrap().len(), tb.as_str().unwrap().len());
            assert_eq!(a, b);
        }
    }

    #[test]
    fn an_access_line_reads_in_the_order_it_was_written() {
        let lines = Lines::default();
        let w = lines.clone();
        let dispatch = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .event_format(JsonLines)
            .finish()
            .into();
        tracing::dispatcher::with_default(&dispatch, emit_events);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let first = text.lines().next().unwrap();
        let (timestamp, rest) = first.strip_prefix("{\"timestamp\":\"").unwrap().split_at(27);
        assert!(timestamp.ends_with('Z'), "{first}");
        assert_eq!(
            rest,
            r#"","level":"INFO","request_id":"id-\"quoted\"\\\n\u0001\u001fé","client":"[::1]:4431","method":"PATCH","path":"/a b/\t/ü","route":"-","status":499,"upstream_status":201,"duration_ms":1.0,"auth":"monitor_denied","target":"portcullis::access"}"#
        );
    }
}
