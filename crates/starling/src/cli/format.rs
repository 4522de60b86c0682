//! How `starling sub` and `starling rr` print a message: the payload alone, `-v` (topic and
//! payload), or a `-F` format with mosquitto_sub's `%` fields (with `-`/`0` flags, width and
//! precision), `@` time fields, `\` escapes and the `%j`/`%J` JSON objects. Times are printed
//! in UTC (mosquitto prints local time; the two agree where the time zone is UTC, as in
//! containers).

use std::time::{SystemTime, UNIX_EPOCH};

use starling_proto::Publish;

use super::opts::UsageError;

/// One piece of a `-F` format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Field {
        spec: u8,
        left: bool,
        zero: bool,
        width: usize,
        precision: Option<usize>,
    },
    Time(u8),
}

/// A parsed `-F` format.
#[derive(Debug, Clone)]
pub struct Format {
    pieces: Vec<Piece>,
}

const FIELDS: &[u8] = b"%ACDEFIjJlmPpqRrStUxX";

impl Format {
    /// Parses and checks a format, with mosquitto's error messages.
    pub fn parse(s: &str) -> Result<Self, UsageError> {
        let b = s.as_bytes();
        let mut pieces = Vec::new();
        let mut lit = Vec::new();
        let mut i = 0;
        let incomplete = || UsageError("Error: Incomplete format specifier.".into());
        while let Some(&c) = b.get(i) {
            match c {
                b'%' => {
                    i += 1;
                    let (mut left, mut zero) = (false, false);
                    if b.get(i) == Some(&b'-') {
                        left = true;
                        i += 1;
                    }
                    if b.get(i) == Some(&b'0') {
                        zero = true;
                        i += 1;
                    }
                    let mut width = 0usize;
                    while let Some(d @ b'0'..=b'9') = b.get(i) {
                        width = width
                            .saturating_mul(10)
                            .saturating_add(usize::from(d - b'0'));
                        i += 1;
                    }
                    let mut precision = None;
                    if b.get(i) == Some(&b'.') {
                        i += 1;
                        let mut p = 0usize;
                        while let Some(d @ b'0'..=b'9') = b.get(i) {
                            p = p.saturating_mul(10).saturating_add(usize::from(d - b'0'));
                            i += 1;
                        }
                        precision = Some(p);
                    }
                    let spec = *b.get(i).ok_or_else(incomplete)?;
                    if !FIELDS.contains(&spec) {
                        return Err(UsageError(format!(
                            "Error: Invalid format specifier '{}'.",
                            char::from(spec)
                        )));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field {
                        spec,
                        left,
                        zero,
                        width,
                        precision,
                    });
                }
                b'@' => {
                    i += 1;
                    let spec = *b.get(i).ok_or_else(incomplete)?;
                    if spec == b'@' {
                        lit.push(b'@');
                    } else {
                        if !lit.is_empty() {
                            pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                        }
                        pieces.push(Piece::Time(spec));
                    }
                }
                b'\\' => {
                    i += 1;
                    let e = *b
                        .get(i)
                        .ok_or_else(|| UsageError("Error: Incomplete escape specifier.".into()))?;
                    lit.push(match e {
                        b'\\' => b'\\',
                        b'0' => 0,
                        b'a' => 7,
                        b'e' => 0x1b,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'v' => 0x0b,
                        _ => {
                            return Err(UsageError(format!(
                                "Error: Invalid escape specifier '{}'.",
                                char::from(e)
                            )));
                        }
                    });
                }
                _ => lit.push(c),
            }
            i += 1;
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit));
        }
        Ok(Self { pieces })
    }

    /// Renders `msg` received at `now`.
    pub fn render(&self, msg: &Publish, now: SystemTime, pretty: bool, out: &mut Vec<u8>) {
        let t = Clock::new(now);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.extend_from_slice(l),
                Piece::Time(spec) => t.strftime(*spec, out),
                Piece::Field {
                    spec,
                    left,
                    zero,
                    width,
                    precision,
                } => field(
                    msg, &t, pretty, *spec, *left, *zero, *width, *precision, out,
                ),
            }
        }
    }
}

fn pad(out: &mut Vec<u8>, c: u8, n: usize) {
    out.extend(std::iter::repeat_n(c, n));
}

fn int(out: &mut Vec<u8>, value: i64, left: bool, zero: bool, width: usize) {
    let s = value.to_string();
    let fill = width.saturating_sub(s.len());
    if left {
        out.extend_from_slice(s.as_bytes());
        pad(out, b' ', fill);
    } else if zero {
        let (sign, digits) = match s.strip_prefix('-') {
            Some(d) => ("-", d),
            None => ("", s.as_str()),
        };
        out.extend_from_slice(sign.as_bytes());
        pad(out, b'0', fill);
        out.extend_from_slice(digits.as_bytes());
    } else {
        pad(out, b' ', fill);
        out.extend_from_slice(s.as_bytes());
    }
}

fn string(out: &mut Vec<u8>, value: &[u8], left: bool, width: usize, precision: Option<usize>) {
    let value = match precision {
        Some(p) => value.get(..p).unwrap_or(value),
        None => value,
    };
    let fill = width.saturating_sub(value.len());
    if !left {
        pad(out, b' ', fill);
    }
    out.extend_from_slice(value);
    if left {
        pad(out, b' ', fill);
    }
}

/// The payload, raw or in hex, truncated to the width and padded as mosquitto does.
fn payload(out: &mut Vec<u8>, p: &[u8], hex: Option<bool>, left: bool, zero: bool, width: usize) {
    let mut len = p.len();
    let padlen = if width > 0 {
        len = len.min(width);
        if hex.is_some() {
            len /= 2;
            width.saturating_sub(len * 2)
        } else {
            width.saturating_sub(len)
        }
    } else {
        0
    };
    let fill = if zero { b'0' } else { b' ' };
    if !left {
        pad(out, fill, padlen);
    }
    let p = p.get(..len).unwrap_or(p);
    match hex {
        None => out.extend_from_slice(p),
        Some(upper) => {
            for b in p {
                let s = if upper {
                    format!("{b:02X}")
                } else {
                    format!("{b:02x}")
                };
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    if left {
        pad(out, b' ', padlen);
    }
}

#[allow(clippy::too_many_arguments)]
fn field(
    msg: &Publish,
    t: &Clock,
    pretty: bool,
    spec: u8,
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
    out: &mut Vec<u8>,
) {
    let props = &msg.properties;
    let blank = |out: &mut Vec<u8>| pad(out, if zero { b'0' } else { b' ' }, width);
    match spec {
        b'%' => out.push(b'%'),
        b'A' => match props.topic_alias {
            Some(a) => int(out, a.into(), left, zero, width),
            None => blank(out),
        },
        b'C' => match &props.content_type {
            Some(c) => string(out, c.as_bytes(), left, width, precision),
            None => pad(out, b' ', width),
        },
        b'D' => {
            if let Some(d) = &props.correlation_data {
                out.extend_from_slice(d);
            }
        }
        b'E' => match props.message_expiry_interval {
            Some(e) => int(out, e.into(), left, zero, width),
            None => blank(out),
        },
        b'F' => match props.payload_format_indicator {
            Some(f) => int(out, f.into(), left, zero, width),
            None => blank(out),
        },
        b'I' => string(out, t.iso8601().as_bytes(), left, width, precision),
        b'j' => json(msg, t, true, pretty, out),
        b'J' => json(msg, t, false, pretty, out),
        b'l' => int(out, msg.payload.len() as i64, left, zero, width),
        b'm' => int(out, msg.packet_id.into(), left, zero, width),
        b'P' => {
            for (i, (k, v)) in props.user_properties.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(k.as_bytes());
                out.push(b':');
                out.extend_from_slice(v.as_bytes());
            }
        }
        b'p' => payload(out, &msg.payload, None, left, zero, width),
        b'q' => out.push(b'0' + msg.qos as u8),
        b'R' => {
            if let Some(r) = &props.response_topic {
                string(out, r.as_bytes(), left, width, precision);
            }
        }
        b'r' => out.push(if msg.retain { b'1' } else { b'0' }),
        b'S' => match props.subscription_identifiers.first() {
            Some(s) => int(out, (*s).into(), left, zero, width),
            None => blank(out),
        },
        b't' => string(out, msg.topic.as_str().as_bytes(), left, width, precision),
        b'U' => out.extend_from_slice(format!("{}.{:09}", t.secs, t.nanos).as_bytes()),
        b'x' => payload(out, &msg.payload, Some(false), left, zero, width),
        b'X' => payload(out, &msg.payload, Some(true), left, zero, width),
        _ => {}
    }
}

/// Prints a message the way mosquitto_sub does without `-F`: the payload (`-v`: the topic,
/// a space and the payload, or "(null)" for an empty payload), then a newline unless `-N`.
/// An empty payload without `-v` prints nothing at all.
pub fn plain(msg: &Publish, verbose: bool, eol: bool, out: &mut Vec<u8>) {
    if verbose {
        out.extend_from_slice(msg.topic.as_str().as_bytes());
        if msg.payload.is_empty() {
            if eol {
                out.extend_from_slice(b" (null)\n");
            }
            return;
        }
        out.push(b' ');
    } else if msg.payload.is_empty() {
        return;
    }
    out.extend_from_slice(&msg.payload);
    if eol {
        out.push(b'\n');
    }
}

// --- JSON ------------------------------------------------------------------------------------

/// A JSON value built in order (cJSON, which mosquitto uses, keeps keys in insertion order).
enum Json {
    Num(i64),
    Str(Vec<u8>),
    Raw(serde_json::Value),
    Obj(Vec<(String, Json)>),
    Null,
}

fn json(msg: &Publish, t: &Clock, escaped: bool, pretty: bool, out: &mut Vec<u8>) {
    let mut root = vec![
        (
            "tst".to_string(),
            Json::Str(t.json_timestamp().into_bytes()),
        ),
        (
            "topic".to_string(),
            Json::Str(msg.topic.as_str().as_bytes().to_vec()),
        ),
        ("qos".to_string(), Json::Num(msg.qos as i64)),
        ("retain".to_string(), Json::Num(i64::from(msg.retain))),
        (
            "payloadlen".to_string(),
            Json::Num(msg.payload.len() as i64),
        ),
    ];
    if msg.qos as u8 > 0 {
        root.push(("mid".to_string(), Json::Num(msg.packet_id.into())));
    }
    let p = &msg.properties;
    if !p.is_empty() {
        let mut props = Vec::new();
        if let Some(v) = p.payload_format_indicator {
            props.push(("payload-format-indicator".into(), Json::Num(v.into())));
        }
        if let Some(v) = p.message_expiry_interval {
            props.push(("message-expiry-interval".into(), Json::Num(v.into())));
        }
        if let Some(v) = &p.content_type {
            props.push(("content-type".into(), Json::Str(v.as_bytes().to_vec())));
        }
        if let Some(v) = &p.response_topic {
            props.push(("response-topic".into(), Json::Str(v.as_bytes().to_vec())));
        }
        if let Some(v) = &p.correlation_data {
            props.push(("correlation-data".into(), Json::Str(v.to_vec())));
        }
        for v in &p.subscription_identifiers {
            props.push(("subscription-identifier".into(), Json::Num((*v).into())));
        }
        if let Some(v) = p.topic_alias {
            props.push(("topic-alias".into(), Json::Num(v.into())));
        }
        if !p.user_properties.is_empty() {
            let users = p
                .user_properties
                .iter()
                .map(|(k, v)| (k.clone(), Json::Str(v.as_bytes().to_vec())))
                .collect();
            props.push(("user-properties".into(), Json::Obj(users)));
        }
        root.push(("properties".to_string(), Json::Obj(props)));
    }
    let payload = if escaped {
        // cJSON takes the payload as a C string: it ends at the first NUL.
        let end = msg
            .payload
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(msg.payload.len());
        Json::Str(msg.payload.get(..end).unwrap_or_default().to_vec())
    } else if msg.payload.is_empty() {
        Json::Null
    } else {
        match serde_json::from_slice::<serde_json::Value>(&msg.payload) {
            Ok(v) => Json::Raw(v),
            Err(_) => {
                eprintln!(
                    "Error: Message payload is not valid JSON on topic {}.",
                    msg.topic.as_str()
                );
                return;
            }
        }
    };
    root.push(("payload".to_string(), payload));
    write_json(&Json::Obj(root), pretty, 0, out);
}

fn write_str(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &c in s {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            c => out.push(c),
        }
    }
    out.push(b'"');
}

fn indent(out: &mut Vec<u8>, depth: usize) {
    pad(out, b'\t', depth);
}

fn write_json(v: &Json, pretty: bool, depth: usize, out: &mut Vec<u8>) {
    match v {
        Json::Num(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Json::Str(s) => write_str(s, out),
        Json::Null => out.extend_from_slice(b"null"),
        Json::Raw(value) => write_value(value, pretty, depth, out),
        Json::Obj(entries) => {
            let items: Vec<(&str, &Json)> = entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
            write_object(&items, pretty, depth, out, |v, d, out| {
                write_json(v, pretty, d, out)
            });
        }
    }
}

fn write_object<T>(
    items: &[(&str, T)],
    pretty: bool,
    depth: usize,
    out: &mut Vec<u8>,
    mut each: impl FnMut(&T, usize, &mut Vec<u8>),
) {
    out.push(b'{');
    if pretty {
        out.push(b'\n');
    }
    for (i, (k, v)) in items.iter().enumerate() {
        if pretty {
            indent(out, depth + 1);
        }
        write_str(k.as_bytes(), out);
        out.push(b':');
        if pretty {
            out.push(b'\t');
        }
        each(v, depth + 1, out);
        if i + 1 < items.len() {
            out.push(b',');
        }
        if pretty {
            out.push(b'\n');
        }
    }
    if pretty {
        indent(out, depth);
    }
    out.push(b'}');
}

fn write_value(v: &serde_json::Value, pretty: bool, depth: usize, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_str(s.as_bytes(), out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                    if pretty {
                        out.push(b' ');
                    }
                }
                write_value(item, pretty, depth, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let items: Vec<(&str, &Value)> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
            write_object(&items, pretty, depth, out, |v, d, out| {
                write_value(v, pretty, d, out)
            });
        }
    }
}

// --- Time ------------------------------------------------------------------------------------

/// A moment split into UTC calendar fields.
#[derive(Debug, Clone, Copy)]
struct Clock {
    secs: i64,
    nanos: u32,
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
    /// 1-based.
    yday: u32,
}

const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

impl Clock {
    fn new(now: SystemTime) -> Self {
        let (secs, nanos) = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(_) => (0, 0),
        };
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        // Days to civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let before = CUM.get(month as usize - 1).copied().unwrap_or(0);
        let yday = before + day + u32::from(leap && month > 2);
        Self {
            secs,
            nanos,
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            weekday: (days + 4).rem_euclid(7) as u32,
            yday,
        }
    }

    fn iso8601(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+0000",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    fn json_timestamp(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z+0000",
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.nanos / 1000
        )
    }

    /// One strftime conversion (UTC), as mosquitto's `@` fields; `@N` is nanoseconds.
    fn strftime(&self, spec: u8, out: &mut Vec<u8>) {
        let day_name = DAYS.get(self.weekday as usize).copied().unwrap_or("");
        let month_name = MONTHS.get(self.month as usize - 1).copied().unwrap_or("");
        let h12 = match self.hour % 12 {
            0 => 12,
            h => h,
        };
        let s = match spec {
            b'N' => format!("{:09}", self.nanos),
            b'Y' => format!("{}", self.year),
            b'C' => format!("{:02}", self.year / 100),
            b'y' => format!("{:02}", self.year % 100),
            b'm' => format!("{:02}", self.month),
            b'd' => format!("{:02}", self.day),
            b'e' => format!("{:2}", self.day),
            b'H' => format!("{:02}", self.hour),
            b'I' => format!("{h12:02}"),
            b'M' => format!("{:02}", self.minute),
            b'S' => format!("{:02}", self.second),
            b'j' => format!("{:03}", self.yday),
            b'a' => day_name.get(..3).unwrap_or("").to_string(),
            b'A' => day_name.to_string(),
            b'b' | b'h' => month_name.get(..3).unwrap_or("").to_string(),
            b'B' => month_name.to_string(),
            b'p' => (if self.hour < 12 { "AM" } else { "PM" }).to_string(),
            b'u' => format!("{}", if self.weekday == 0 { 7 } else { self.weekday }),
            b'w' => format!("{}", self.weekday),
            b's' => format!("{}", self.secs),
            b'z' => "+0000".to_string(),
            b'Z' => "UTC".to_string(),
            b'F' => format!("{:04}-{:02}-{:02}", self.year, self.month, self.day),
            b'T' => format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second),
            b'R' => format!("{:02}:{:02}", self.hour, self.minute),
            b'D' => format!("{:02}/{:02}/{:02}", self.month, self.day, self.year % 100),
            b'n' => "\n".to_string(),
            b't' => "\t".to_string(),
            b'%' => "%".to_string(),
            _ => String::new(),
        };
        out.extend_from_slice(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use starling_proto::{QoS, TopicName};
    use std::time::Duration;

    fn msg(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Publish {
        Publish {
            dup: false,
            qos,
            retain,
            topic: TopicName::new(Bytes::from(topic.to_string()), 64).unwrap(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 3 },
            properties: Default::default(),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn render(f: &str, m: &Publish) -> String {
        let mut out = Vec::new();
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        Format::parse(f).unwrap().render(m, t, false, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_widths_and_escapes() {
        let m = msg("a/b", b"hello", QoS::AtLeastOnce, true);
        assert_eq!(render("%t %p %q %r %l %m", &m), "a/b hello 1 1 5 3");
        assert_eq!(
            render("[%5t][%-5t][%.1t][%05l]", &m),
            "[  a/b][a/b  ][a][00005]"
        );
        assert_eq!(
            render("%x %X", &msg("t", b"\x01\xab", QoS::AtMostOnce, false)),
            "01ab 01AB"
        );
        assert_eq!(render("\\t%%\\n@@", &m), "\t%\n@");
        assert_eq!(render("%U", &m), "1700000000.123456789");
        assert_eq!(
            render("%I @Y-@m-@d @H:@M:@S @N", &m),
            "2023-11-14T22:13:20+0000 2023-11-14 22:13:20 123456789"
        );
    }

    #[test]
    fn bad_formats_are_refused_with_mosquittos_words() {
        assert_eq!(
            Format::parse("%").unwrap_err().0,
            "Error: Incomplete format specifier."
        );
        assert_eq!(
            Format::parse("%c").unwrap_err().0,
            "Error: Invalid format specifier 'c'."
        );
        assert_eq!(
            Format::parse("\\").unwrap_err().0,
            "Error: Incomplete escape specifier."
        );
        assert_eq!(
            Format::parse("\\q").unwrap_err().0,
            "Error: Invalid escape specifier 'q'."
        );
    }

    #[test]
    fn json_objects() {
        let m = msg("a", b"{\"x\": [1, 2]}", QoS::AtMostOnce, false);
        assert_eq!(
            render("%j", &m),
            "{\"tst\":\"2023-11-14T22:13:20.123456Z+0000\",\"topic\":\"a\",\"qos\":0,\"retain\":0,\"payloadlen\":13,\"payload\":\"{\\\"x\\\": [1, 2]}\"}"
        );
        assert_eq!(
            render("%J", &m),
            "{\"tst\":\"2023-11-14T22:13:20.123456Z+0000\",\"topic\":\"a\",\"qos\":0,\"retain\":0,\"payloadlen\":13,\"payload\":{\"x\":[1,2]}}"
        );
    }

    #[test]
    fn plain_and_verbose() {
        let mut out = Vec::new();
        plain(&msg("t", b"", QoS::AtMostOnce, false), true, true, &mut out);
        plain(
            &msg("t", b"", QoS::AtMostOnce, false),
            false,
            true,
            &mut out,
        );
        plain(
            &msg("t", b"p", QoS::AtMostOnce, false),
            true,
            false,
            &mut out,
        );
        assert_eq!(out, b"t (null)\nt p");
    }

    #[test]
    fn calendar() {
        let c = Clock::new(UNIX_EPOCH + Duration::from_secs(951_782_400)); // 2000-02-29
        assert_eq!(
            (c.year, c.month, c.day, c.yday, c.weekday),
            (2000, 2, 29, 60, 2)
        );
    }
}
