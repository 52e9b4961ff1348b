//! Reading a file the user named (a scenario, a daemon config, recorded observations):
//! whole, but never more than a bound — `/dev/zero` named by mistake would otherwise be
//! read until memory runs out. A FIFO or `<(…)` is read like a file (and waits for its
//! writer, as `cat` does); a trace's reader is stricter (`workload::load_trace`).

use std::io::{self, Read};
use std::path::Path;

use aerostat_core::Bytes;

pub mod table;

/// The largest scenario or config file read: far above any real one (the largest shipped
/// scenario is a few KiB; 10,000 VMs of `[[vm]]` tables are about 2 MiB).
pub const MAX_TOML_BYTES: u64 = 64 << 20;

/// The largest observation file `aerostat decide` reads: hours of a daemon's debug log
/// for a few VMs, or one observation of 100,000 (about 30 MiB).
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// Reads `path` as UTF-8 text of at most `max` bytes; a longer file is an error
/// (`InvalidData`, saying the bound), not a partial read.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than {}, the most aerostat reads from one file",
                Bytes(max)
            ),
        ));
    }
    Ok(text)
}

/// A field as an error quotes it: whole up to 40 characters, else its start and its length
/// (a trace line of 250 million digits made a 250 MB error).
pub fn shorten(field: &str) -> String {
    match field.char_indices().nth(40) {
        Some((end, _)) => format!("{}… ({} characters)", &field[..end], field.chars().count()),
        None => field.to_string(),
    }
}

/// `text` whole up to `max` characters, else its start and its length in at most `max`
/// (so cutting twice changes nothing).
fn cut(text: &str, max: usize) -> String {
    if text.char_indices().nth(max).is_none() {
        return text.to_string();
    }
    let keep = text
        .char_indices()
        .nth(max - 30)
        .map_or(text.len(), |(i, _)| i);
    format!("{}… ({} characters)", &text[..keep], text.chars().count())
}

/// An error message with every quoted part (between backticks or double quotes) cut at 100
/// characters (a key path with a VM's name fits), each line at 300 and the message at 2,000:
/// parsers
/// quote the value they refuse, and a value of a million digits made a megabyte of error.
pub fn shorten_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4_096));
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = &rest[open..=open];
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        // A quote closes on its own line; one that does not is literal (an apostrophe-like
        // quote in the parser's snippet of the user's line). One scan to the first of the
        // two, so a long line with many quotes stays linear.
        let Some(close) = rest
            .find([quote.as_bytes()[0] as char, '\n'])
            .filter(|&at| rest[at..].starts_with(quote))
        else {
            continue;
        };
        out.push_str(&cut(&rest[..close], 100));
        out.push_str(quote);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    // A parser's snippet of the offending line is not quoted: each line is cut too.
    let lines: Vec<String> = out.split('\n').map(|line| cut(line, 300)).collect();
    cut(&lines.join("\n"), 2_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_parts_are_shortened() {
        let huge = "9".repeat(1_000_000);
        let message = format!("`{huge}GiB`: not a size; \"{huge}\" either, `kind`");
        let short = shorten_quoted(&message);
        assert_eq!(
            short,
            format!(
                "`{}… (1000003 characters)`: not a size; \"{}… (1000000 characters)\" either, `kind`",
                &huge[..70],
                &huge[..70]
            )
        );
        // An unclosed quote and a long unquoted message are cut too.
        let short = shorten_quoted(&format!("`{huge}"));
        assert!(
            short.len() < 2_100 && short.ends_with("(1000001 characters)"),
            "{short}"
        );
        assert_eq!(shorten_quoted("plain `a` \"b\""), "plain `a` \"b\"");
        // A quote without its pair on its line is literal: the next line's quotes pair up.
        let odd = format!(
            "line 3 | x = \"{}\n  |     ^\nexpected `{}`",
            "y".repeat(150),
            "z".repeat(150)
        );
        let short = shorten_quoted(&odd);
        assert!(short.contains("expected `zzz"), "{short}");
        assert!(short.contains("(150 characters)`"), "{short}");
        assert!(short.contains("  |     ^"), "{short}");
        // Shortening twice changes nothing (a scenario's error inside the CLI's).
        let once = shorten_quoted(&message);
        assert_eq!(shorten_quoted(&once), once);
        let once = shorten_quoted(&"x\n".repeat(5_000));
        assert_eq!(shorten_quoted(&once), once);
    }

    #[test]
    fn a_file_at_the_bound_is_read_and_one_past_it_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, "abcd").expect("write");
        assert_eq!(read_bounded(&path, 4).expect("at the bound"), "abcd");
        let err = read_bounded(&path, 3).expect_err("past the bound");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("larger than 3 B"), "{err}");
    }

    #[test]
    fn an_endless_device_is_refused_at_the_bound() {
        let err = read_bounded(Path::new("/dev/zero"), 1 << 10).expect_err("endless");
        assert!(err.to_string().contains("larger than 1 KiB"), "{err}");
    }
}
