//! Where in a scenario file an error is: the line of a byte offset, and the dotted key
//! path there (`vm[0] (web).workload.peak`), for errors the TOML stage reports by span
//! and for the checks of the validation stage.

use aerostat_core::VmClass;

use super::{KsmControl, StatsMode, WorkloadKind};

/// Whether the line of `offset` is a list-of-tables header (`[[vm.workload]]`).
pub(super) fn at_list_header(text: &str, offset: usize) -> bool {
    text[line_start(text, offset)..]
        .trim_start()
        .starts_with("[[")
}

/// Where the line of byte `offset` (at most the end of `text`) begins.
fn line_start(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text[..offset].rfind('\n').map_or(0, |i| i + 1)
}

/// A key path as a TOML table header: `vm[0] (a).workload` → `vm.workload`.
pub(super) fn table_header(key: &str) -> String {
    key.split('.')
        .map(|part| part.split(['[', ' ']).next().unwrap_or(part))
        .collect::<Vec<_>>()
        .join(".")
}

/// The names a key of a named kind takes (`kind`, `class`, `stats`, `ksm_control`), as the
/// parser lists them for a name it does not know: `\`steady\`, \`diurnal\`, …`.
pub(super) fn names_for(key: &str) -> Option<String> {
    fn names<T: serde::de::DeserializeOwned>() -> Option<String> {
        let nothing = serde::de::value::StrDeserializer::<serde::de::value::Error>::new("");
        let e = T::deserialize(nothing).err()?.to_string();
        Some(e.split_once("expected ")?.1.to_string())
    }
    match key.rsplit('.').next()? {
        "kind" => names::<WorkloadKind>(),
        "class" => names::<VmClass>(),
        "stats" => names::<StatsMode>(),
        "ksm_control" => names::<KsmControl>(),
        _ => None,
    }
}

/// Where a key given twice is given the second time. The TOML stage reports a duplicate
/// key (`duplicate key `K``) at the start of the table that holds it — inside an inline
/// table, its first blank — where the key path named the table twice and not the key
/// (`vm[0] (a).workload.workload`). The second `K =` from there, before the next table
/// header (or the first, when the report points at the duplicate itself).
pub(super) fn duplicate_key_at(text: &str, from: usize, message: &str) -> Option<usize> {
    let key = message
        .strip_prefix("duplicate key `")?
        .split('`')
        .next()
        .filter(|k| !k.is_empty())?;
    let from = from.min(text.len());
    let rest = &text[from..];
    let end = rest
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| rest[i..].trim_start().starts_with('['))
        .unwrap_or(rest.len());
    let scope = &rest[..end];
    let mut found = scope.match_indices(key).filter(|&(i, _)| {
        let before = scope[..i].chars().next_back();
        let after = scope[i + key.len()..].trim_start();
        before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',') && after.starts_with('=')
    });
    let first = found.next()?.0;
    Some(from + found.next().map_or(first, |(i, _)| i))
}

/// `line` without a trailing `# comment` (a `#` inside a quoted string is kept).
fn without_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return &line[..i],
            None => {}
        }
    }
    line
}

/// The line (from 1) of byte `offset`, at most the last line.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key path at byte `offset` (`vm[0] (web).workload.peak`, `host.memory`,
/// `vm[1] (runner).workload.phases[2].at`), from the table headers above it, the VM's name,
/// the array of inline tables it is in and the key before it on its line; for errors of the
/// TOML stage.
pub(super) fn key_path_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = line_start(text, offset);
    let line_no = line_of(text, offset);
    let mut table = String::new();
    let mut vms = 0usize;
    let mut vm_name: Option<String> = None;
    // An array opened on an earlier line and not closed yet: its key, its elements so far
    // and how deep its brackets are open.
    let mut array: Option<(String, usize, usize)> = None;
    // Elements seen so far of each array of tables (`[[vm.workload.phases]]`) in this VM.
    let mut tables_in_arrays: std::collections::BTreeMap<String, usize> = Default::default();
    // The offending line itself is a table header when a field of that table is missing:
    // then the table is the answer. (A line that opens with `[` inside an open array is an
    // element: `  ["1h", "2GiB"],`.)
    let opens_with_bracket = text[line_start..].trim_start().starts_with('[');
    let mut at_header = false;
    // Inside a multi-line string (`description = """…"""`) nothing is a header or a key.
    let mut in_multiline: Option<&str> = None;
    for (n, line) in text.lines().enumerate() {
        if n + 1 == line_no {
            at_header = opens_with_bracket && array.is_none() && in_multiline.is_none();
            if !at_header {
                break;
            }
        }
        if n + 1 > line_no {
            break;
        }
        if let Some(delim) = in_multiline {
            if line.matches(delim).count() % 2 == 1 {
                in_multiline = None;
            }
            continue;
        }
        if let Some(delim) = ["\"\"\"", "'''"]
            .into_iter()
            .find(|d| line.matches(d).count() % 2 == 1)
        {
            in_multiline = Some(delim);
        }
        let t = without_comment(line).trim();
        if t.is_empty() {
            continue;
        }
        if let Some((_, elements, depth)) = &mut array {
            if *depth == 1 && t.starts_with(['{', '[']) {
                *elements += 1;
            }
            *depth = (*depth + t.matches('[').count()).saturating_sub(t.matches(']').count());
            if *depth == 0 {
                array = None;
            }
            continue;
        }
        if t == "[[vm]]" {
            table = format!("vm[{vms}]");
            vms += 1;
            vm_name = None;
            tables_in_arrays.clear();
        } else if let Some(h) = t.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            // An array of tables inside the VM (`[[vm.workload.phases]]`): its element.
            let h = h.trim();
            let index = tables_in_arrays.entry(h.to_string()).or_insert(0);
            let path = match h.strip_prefix("vm.") {
                Some(rest) if vms > 0 => format!("vm[{}].{rest}", vms - 1),
                _ => h.to_string(),
            };
            table = format!("{path}[{index}]");
            *index += 1;
        } else if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let h = h.trim();
            table = match h.strip_prefix("vm.") {
                Some(rest) if vms > 0 => format!("vm[{}].{rest}", vms - 1),
                _ => h.to_string(),
            };
        } else if let Some((k, v)) = t.split_once('=') {
            let (k, v) = (k.trim(), v.trim());
            if k == "name" && table.starts_with("vm[") && !table.contains('.') {
                vm_name = Some(v.trim_matches('"').to_string());
            }
            let depth = v
                .matches('[')
                .count()
                .saturating_sub(v.matches(']').count());
            if v.starts_with('[') && depth > 0 {
                array = Some((k.to_string(), 0, depth));
            }
        }
    }
    if at_header {
        return vm_path(table, vm_name.as_deref());
    }
    // The key: the key the offset points at (an unknown field: `bogus = 1`), or the last
    // `key =` before the offending value on its line.
    let before = &text[line_start..offset];
    // The offset at an inline table itself (a field missing from `{ at = "2m" }`), or at an
    // array that is an element where a table belongs (`phases = [["2m"]]`, not `at = ["2m"]`):
    // the element is the answer, no key inside it.
    let at_inline_table = text[offset..].starts_with('{')
        || (text[offset..].starts_with('[')
            && matches!(
                before.trim_end().chars().next_back(),
                Some('[' | ',') | None
            ));
    let ident: &str = {
        let rest = &text[offset..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len());
        let (ident, after) = rest.split_at(end);
        if after.trim_start().starts_with('=') {
            ident
        } else {
            ""
        }
    };
    let key = match before.rsplit_once('=') {
        _ if at_inline_table => "",
        _ if !ident.is_empty() => ident,
        Some((k, _)) => k
            .trim_end()
            .rsplit(|c: char| c == '{' || c == ',' || c.is_whitespace())
            .next()
            .unwrap_or(""),
        None => text[offset..]
            .split(|c: char| c == '=' || c == '\n' || c.is_whitespace())
            .next()
            .unwrap_or(""),
    }
    .to_string();
    let mut path = vm_path(table, vm_name.as_deref());
    let mut push = |part: &str| {
        if !part.is_empty() {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
        }
    };
    let element = |array_key: &str, index: Option<usize>| match index {
        Some(i) => format!("{array_key}[{i}]"),
        None => array_key.to_string(),
    };
    if let Some((array_key, elements, _)) = &array {
        // An element on a line of its own.
        let line = text[line_start..].lines().next().unwrap_or("");
        let index = line
            .trim_start()
            .starts_with(['{', '['])
            .then_some(*elements);
        push(&element(array_key, index));
    } else if let Some(open) = before.find("= [").or_else(|| before.find("=[")) {
        // An array on the offending value's line: `phases = [{ … }, { … }]`.
        let array_key = before[..open].trim_end().rsplit(char::is_whitespace).next();
        // Elements opened before the offset, inside the array's own `[` (not brackets
        // within an element: `{ at = "1h", tags = ["a"] }` is one).
        let inside = before[open..].split_once('[').map_or("", |(_, rest)| rest);
        let (mut opened, mut depth) = (0usize, 0usize);
        for c in inside.chars() {
            match c {
                '{' | '[' => {
                    opened += usize::from(depth == 0);
                    depth += 1;
                }
                '}' | ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        let index = if at_inline_table {
            Some(opened)
        } else {
            opened.checked_sub(1)
        };
        push(&element(array_key.unwrap_or(""), index));
    } else if let Some(open) = before.find("= {").or_else(|| before.find("={")) {
        // A key of an inline table on the offending value's line: `virtio_mem = { bogus = 1 }`.
        push(
            before[..open]
                .trim_end()
                .rsplit(char::is_whitespace)
                .next()
                .unwrap_or(""),
        );
    } else if at_inline_table {
        // A field missing from an inline table: the table is the answer.
        let table_key = before.trim_end().trim_end_matches('=').trim_end();
        push(table_key.rsplit(char::is_whitespace).next().unwrap_or(""));
    }
    push(&key);
    path
}

/// `vm[0].workload` → `vm[0] (web).workload`, once the VM's name is known.
fn vm_path(table: String, vm_name: Option<&str>) -> String {
    match (vm_name, table.strip_prefix("vm[")) {
        (Some(name), Some(rest)) => {
            let (index, tail) = rest.split_once(']').unwrap_or((rest, ""));
            format!("vm[{index}] ({name}){tail}")
        }
        _ => table,
    }
}
